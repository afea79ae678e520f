"""How telemetry is switched on: :class:`Telemetry`, and the tiny interface the wire calls.

A client holds a :class:`Telemetry` (or None when switched off). For each call the
attempt loop asks it to :meth:`Telemetry.start` a trace: None means "nothing to record",
and the call runs exactly as it would without telemetry. Nothing here imports
OpenTelemetry: :mod:`deepseek_pool.telemetry.otel` is imported the first time a
trace could be recorded, and only then.

The automatic mode (the client's default) records once the application has configured
OpenTelemetry -- a tracer or meter provider of an SDK (or a vendor's) set as the global
one -- as OpenTelemetry's own instrumentations do. Until then each call costs a lookup
in ``sys.modules`` (OpenTelemetry not imported at all) or a look at the global providers.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Protocol, Union

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .otel import Recorder

#: Imported by OpenTelemetry's trace and metrics APIs alike: absent, nothing can be configured.
_OTEL_CONTEXT = "opentelemetry.context"

__all__ = ["AUTO", "CallTrace", "Telemetry", "TelemetryLike", "resolve_telemetry"]


class CallTrace(Protocol):
    """One call's record (a span and its metrics), as the wire layer sees it."""

    def first_chunk_hook(self, inner: Optional[Callable[[float], None]]) -> Callable[[float], None]:
        """A ``first_token`` callback that notes the time to first chunk, then calls ``inner``."""

    def retry(
        self, attempt: int, status: Optional[int], error: Optional[BaseException], delay: float, kind: str
    ) -> None:
        """Attempt ``attempt`` failed and is retried after ``delay`` seconds."""

    def done(self, result: Any) -> None:
        """The call returned ``result``: end now, or when the stream it is ends."""

    def fail(self, error: BaseException) -> None:
        """The call raised ``error`` (its secrets already removed)."""

    def stream_closed(self, error: Optional[BaseException], complete: bool) -> None:
        """The stream :meth:`done` was given ended: read whole (``complete``), broken (``error``) or closed."""

    def stream_abandoned(self) -> None:
        """The stream :meth:`done` was given was garbage collected unclosed."""


class Telemetry:
    """Where a client's spans and metrics go: OpenTelemetry providers, and what to record.

    Give one to ``DeepSeekClient(telemetry=...)`` to choose the providers (OpenTelemetry
    instrumentations take ``tracer_provider=`` and ``meter_provider=`` the same way); by
    default a client records to OpenTelemetry's global providers once they are configured.

    :param tracer_provider: where spans go (None: the global one, ``opentelemetry.trace``).
    :param meter_provider: where metrics go (None: the global one, ``opentelemetry.metrics``).
    :param capture_content: record prompts and answers on spans (None: as
        ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` says, off unless it is
        ``SPAN_ONLY`` or ``SPAN_AND_EVENT``).
    :param latest_names: use the GenAI conventions' 2026 metric names (None: as
        ``OTEL_SEMCONV_STABILITY_OPT_IN`` says: with ``gen_ai_latest_experimental``).
    :raises ConfigurationError: ``opentelemetry-api`` is not installed (``pip install deepseek-pool[otel]``).
    """

    def __init__(
        self,
        *,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        capture_content: Optional[bool] = None,
        latest_names: Optional[bool] = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.capture_content = capture_content
        self.latest_names = latest_names
        self._lock = threading.Lock()
        self._configured: Optional[Callable[[], bool]] = None  # otel.configured, once imported
        self._recorder: Optional[Recorder] = None if self.automatic else self._make_recorder()

    #: Whether this one waits for OpenTelemetry's global providers to be configured (:data:`AUTO`).
    automatic = False

    def __repr__(self) -> str:
        if self.automatic:
            state = "recording" if self._recorder is not None else "waiting for a configured provider"
            return f"Telemetry(automatic, {state})"
        return f"Telemetry(tracer_provider={self.tracer_provider!r}, meter_provider={self.meter_provider!r})"

    def _make_recorder(self) -> Recorder:
        try:
            from .otel import Recorder
        except ImportError as err:
            raise ConfigurationError("telemetry needs OpenTelemetry's API: pip install 'deepseek-pool[otel]'") from err
        return Recorder(self.tracer_provider, self.meter_provider, self.capture_content, self.latest_names)

    def _automatic_recorder(self) -> Optional[Recorder]:
        """The recorder once OpenTelemetry is configured globally (kept: providers are set once)."""
        if _OTEL_CONTEXT not in sys.modules:
            return None  # nobody imported OpenTelemetry, so nobody configured it
        if self._configured is None:
            from . import otel

            self._configured = otel.configured
        if not self._configured():
            return None
        with self._lock:
            if self._recorder is None:
                self._recorder = self._make_recorder()
        return self._recorder

    @property
    def recording(self) -> bool:
        """Whether calls are recorded now (an automatic one: once OpenTelemetry is configured)."""
        return self._recorder is not None or (self.automatic and self._automatic_recorder() is not None)

    def start(
        self, url: str, payload: Mapping[str, Any], stream: bool, started: Optional[float]
    ) -> Optional[CallTrace]:
        """Begin one call's trace in the calling thread's context; None when nothing is recorded.

        :param started: ``time.monotonic()`` when the call began, if before now (a pool's
            call waits at its limiter first); the span and the duration count from then.
        """
        recorder = self._recorder
        if recorder is None:
            if _OTEL_CONTEXT not in sys.modules or not self.automatic:
                return None  # the common case when off: one dict lookup
            recorder = self._automatic_recorder()
            if recorder is None:
                return None
        return recorder.start(url, payload, stream, started)

    def watch_limiter(self, limiter: Any) -> None:
        """Report ``limiter``'s budget (in flight, cap, waiting, cool-downs) as gauges, while it lives."""
        recorder = self._recorder
        if recorder is not None:
            recorder.watch_limiter(limiter)


class _Automatic(Telemetry):
    """The default: records to the global providers once the application has configured one."""

    automatic = True


#: The default of every client: record once OpenTelemetry is configured globally.
AUTO: Telemetry = _Automatic()

TelemetryLike = Union[None, bool, Telemetry]


def resolve_telemetry(telemetry: TelemetryLike) -> Optional[Telemetry]:
    """A client's ``telemetry=``: None -> :data:`AUTO`, False -> None (off), True -> global providers."""
    if telemetry is None:
        return AUTO
    if telemetry is False:
        return None
    if telemetry is True:
        return Telemetry()
    if isinstance(telemetry, Telemetry):
        return telemetry
    raise ConfigurationError(f"telemetry must be None, a bool or a deepseek_pool.Telemetry, got {telemetry!r}")
