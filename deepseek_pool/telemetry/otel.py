"""The OpenTelemetry side: a :class:`Recorder` (tracer and instruments, made once) and a call's :class:`Trace`.

Imported only once telemetry is on (see :mod:`deepseek_pool.telemetry.switch`). A call's
span is started in the thread that runs the call -- a pool's worker runs it in a copy of
the context it was submitted from, so the caller's span is its parent -- and it is never
made current: nothing this library does happens under it, and ending it needs no
context, so a stream's span can end in any thread (the reader's, the garbage collector's).
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from opentelemetry import metrics, trace
from opentelemetry.metrics import Observation
from opentelemetry.metrics import _internal as _metrics_api
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..models import estimate_cost
from .attributes import (
    PROVIDER,
    capture_content_from_env,
    input_content,
    latest_from_env,
    output_content,
    request_attributes,
    response_attributes,
    server_of,
)

__all__ = ["Recorder", "Trace", "configured"]

_SCOPE = "deepseek_pool"
_VERSION = "0.1.0"
#: The conventions' advised buckets for durations (s) and token counts.
_DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
_TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
_API_MODULES = ("opentelemetry.trace", "opentelemetry.metrics")
_UNKNOWN = object()


def _is_configured(provider: Any) -> bool:
    """A provider from elsewhere than the API's own no-op and proxy classes."""
    return not type(provider).__module__.startswith(_API_MODULES)


def configured() -> bool:
    """Whether the application set a global tracer or meter provider (an SDK's, a vendor's).

    Asked before every call until it is true, so it reads the API's globals (None until
    ``set_tracer_provider`` / ``set_meter_provider``) before calling anything; where an API
    release keeps them elsewhere, its public getters answer instead.
    """
    tracer_provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    meter_provider = getattr(_metrics_api, "_METER_PROVIDER", _UNKNOWN)
    if tracer_provider is None and meter_provider is None:
        return False
    return _is_configured(trace.get_tracer_provider()) or _is_configured(metrics.get_meter_provider())


class _Instruments:
    """Every instrument, created once per recorder; names as the conventions of the chosen age say."""

    def __init__(self, meter: metrics.Meter, latest: bool, recorder: Recorder) -> None:
        self.latest = latest
        prefix = "gen_ai.client.inference" if latest else "gen_ai.client.operation"
        self.duration = meter.create_histogram(
            f"{prefix}.duration" if latest else "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.first_chunk = meter.create_histogram(
            f"{prefix}.time_to_first_chunk",
            unit="s",
            description="Time to the first chunk of a streamed answer",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        if latest:
            self.usage = {
                kind: meter.create_counter(f"gen_ai.client.inference.usage.{kind}", unit="{token}")
                for kind in ("input_tokens", "output_tokens", "cache_read.input_tokens", "reasoning.output_tokens")
            }
            self.operation_tokens = {
                kind: meter.create_histogram(
                    f"gen_ai.client.inference.operation.{kind}",
                    unit="{token}",
                    explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
                )
                for kind in ("input_tokens", "output_tokens")
            }
        else:
            self.token_usage = meter.create_histogram(
                "gen_ai.client.token.usage",
                unit="{token}",
                description="Number of input and output tokens used",
                explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
            )
        self.retries = meter.create_counter(
            "deepseek_pool.retries", unit="{retry}", description="Retries made, by what failed"
        )
        self.rate_limited = meter.create_counter(
            "deepseek_pool.rate_limited", unit="{response}", description="429 answers received"
        )
        self.spend = meter.create_counter(
            "deepseek_pool.spend", unit="USD", description="What answers cost at DeepSeek's listed prices"
        )
        watch = recorder.limiter_observations
        meter.create_observable_up_down_counter(
            "deepseek_pool.limiter.in_flight",
            callbacks=[lambda options: watch("in_flight")],
            unit="{call}",
            description="Calls holding a slot of the limiter's budget",
        )
        meter.create_observable_gauge(
            "deepseek_pool.limiter.cap",
            callbacks=[lambda options: watch("cap")],
            unit="{call}",
            description="The adaptive in-flight cap (lowered by 429s)",
        )
        meter.create_observable_up_down_counter(
            "deepseek_pool.limiter.waiting",
            callbacks=[lambda options: watch("waiting")],
            unit="{call}",
            description="Calls queued for a slot",
        )
        meter.create_observable_counter(
            "deepseek_pool.limiter.cool_downs",
            callbacks=[lambda options: watch("cool_downs")],
            unit="{cool_down}",
            description="Cool-downs the budget went through (429s that held every call)",
        )
        meter.create_observable_gauge(
            "deepseek_pool.limiter.cooling",
            callbacks=[lambda options: watch("cooling_for")],
            unit="s",
            description="Seconds left in the current cool-down",
        )


class Recorder:
    """One telemetry destination: its tracer, its instruments, the limiters it reports."""

    def __init__(
        self,
        tracer_provider: Any,
        meter_provider: Any,
        capture_content: Optional[bool],
        latest_names: Optional[bool],
    ) -> None:
        self.latest = latest_from_env() if latest_names is None else bool(latest_names)
        self.capture_content = capture_content
        tracers = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        meters = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        self.tracer = tracers.get_tracer(_SCOPE, _VERSION)
        self._limiters: Dict[str, Any] = {}
        self._lock = threading.Lock()
        self.instruments = _Instruments(meters.get_meter(_SCOPE, _VERSION), self.latest, self)

    def start(self, url: str, payload: Mapping[str, Any], stream: bool, started: Optional[float]) -> Trace:
        return Trace(self, url, payload, stream, started)

    def capture(self) -> bool:
        return capture_content_from_env() if self.capture_content is None else self.capture_content

    def watch_limiter(self, limiter: Any) -> None:
        name = getattr(limiter, "name", "default")
        known = self._limiters.get(name)
        if known is None or known() is not limiter:
            with self._lock:
                self._limiters[name] = weakref.ref(limiter)

    def limiter_observations(self, field: str) -> Iterable[Observation]:
        """One observation of ``field`` of each live limiter's stats, by budget name."""
        with self._lock:
            limiters = [(name, ref()) for name, ref in self._limiters.items()]
        for name, limiter in limiters:
            if limiter is None:
                continue
            try:
                value = getattr(limiter.stats, field)
            except Exception:  # a shared storage out of reach: no figure this time, the call paths go on
                continue
            if value is not None:
                yield Observation(value, {"deepseek_pool.limiter.name": name})


class Trace:
    """One logical call: its CLIENT span (retries and waits included) and its metrics, ended once."""

    __slots__ = (
        "_ended",
        "_lock",
        "_recorder",
        "_started",
        "capture",
        "first_chunk",
        "metric_attributes",
        "model",
        "retries",
        "span",
        "stream_began",
        "stream_builder",
        "stream_error",
    )

    def __init__(
        self, recorder: Recorder, url: str, payload: Mapping[str, Any], stream: bool, started: Optional[float]
    ) -> None:
        now = time.monotonic()
        self._recorder = recorder
        self._started = now if started is None else started
        self._ended = False
        self._lock = threading.Lock()
        self.first_chunk: Optional[float] = None
        self.retries = 0
        self.stream_builder: Any = None
        self.stream_error: Optional[BaseException] = None
        self.stream_began = False  # an attempt's answer began to stream (a ChatStream was made)
        operation = "chat" if "messages" in payload else "text_completion"
        self.model = str(payload.get("model") or "")
        address, port = server_of(url)
        self.metric_attributes: Dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": self.model,
            "server.address": address,
            "server.port": port,
        }
        attributes = dict(self.metric_attributes)
        if not recorder.latest:
            attributes["gen_ai.system"] = PROVIDER  # the name older backends and dashboards read
        attributes.update(request_attributes(payload, stream))
        self.capture = recorder.capture()
        if self.capture:
            attributes.update(input_content(payload))
        start_time = None if started is None else time.time_ns() - int((now - started) * 1e9)
        self.span = recorder.tracer.start_span(
            f"{operation} {self.model}", kind=SpanKind.CLIENT, attributes=attributes, start_time=start_time
        )

    # -- during the call ---------------------------------------------------------------

    def first_chunk_hook(self, inner: Optional[Callable[[float], None]]) -> Callable[[float], None]:
        self.stream_began = True

        def first_token(at: float) -> None:
            if self.first_chunk is None:
                self.first_chunk = at - self._started  # the first attempt's, if a stream restarts
            if inner is not None:
                inner(at)

        return first_token

    def retry(
        self, attempt: int, status: Optional[int], error: Optional[BaseException], delay: float, kind: str
    ) -> None:
        self.retries += 1
        attributes: Dict[str, Any] = {"deepseek_pool.attempt": attempt, "deepseek_pool.retry.delay": delay}
        attributes["deepseek_pool.retry.kind"] = kind
        if status is not None:
            attributes["http.response.status_code"] = status
        if error is not None:
            attributes["error.type"] = type(error).__name__
        self.span.add_event("deepseek_pool.retry", attributes)
        instruments = self._recorder.instruments
        instruments.retries.add(1, {"deepseek_pool.retry.kind": kind, "gen_ai.request.model": self.model})
        if status == 429:
            instruments.rate_limited.add(1, {"gen_ai.request.model": self.model})

    # -- the end -----------------------------------------------------------------------

    def done(self, result: Any) -> None:
        traced = getattr(result, "traced", None)
        if traced is not None:
            self.stream_builder = getattr(result, "_builder", None)
            traced(self)  # a stream handed to the caller: it ends the span when it ends
        else:
            self._end(result, None)

    def fail(self, error: BaseException) -> None:
        self._end(None, error)

    def stream_closed(self, error: Optional[BaseException], complete: bool) -> None:
        """The caller's stream ended: read to its end, broken (``error``), or closed early."""
        self.stream_error = error
        self._end_stream("complete" if complete else "broken" if error is not None else "closed")

    def stream_abandoned(self) -> None:
        """The caller's stream was garbage collected without being closed."""
        self._end_stream("abandoned")

    def _end_stream(self, how: str) -> None:
        builder = self.stream_builder
        answer = builder.build() if builder is not None else None
        if how != "complete":
            self.span.set_attribute("deepseek_pool.stream.ended", how)
        self._end(answer, self.stream_error)

    def _end(self, answer: Any, error: Optional[BaseException]) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        span, instruments = self.span, self._recorder.instruments
        elapsed = time.monotonic() - self._started
        metric_attributes = self.metric_attributes
        if answer is not None:
            attributes = response_attributes(answer)
            if self.stream_builder is not None and (error is not None or answer.finish_reason is None):
                attributes["gen_ai.response.finish_reasons"] = ["error"]  # the stream ended before its final event
            if self.capture:
                attributes["gen_ai.output.messages"] = output_content(answer)
            model = attributes.get("gen_ai.response.model")
            if model:
                metric_attributes = {**metric_attributes, "gen_ai.response.model": model}
        else:
            # A stream that broke before its final event: "error"; a call refused before any stream: none.
            attributes = {"gen_ai.response.finish_reasons": ["error"]} if self.stream_began and error else {}
        if self.first_chunk is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = self.first_chunk
            instruments.first_chunk.record(self.first_chunk, metric_attributes)
        if self.retries:
            attributes["deepseek_pool.retries"] = self.retries
        if error is not None:
            error_type = type(error).__name__
            attributes["error.type"] = error_type
            status_code = getattr(error, "status_code", None)
            if isinstance(status_code, int):
                attributes["http.response.status_code"] = status_code
                if status_code == 429:
                    instruments.rate_limited.add(1, {"gen_ai.request.model": self.model})
            span.set_status(Status(StatusCode.ERROR, f"{error_type}: {error}"[:500]))
        span.set_attributes(attributes)
        duration_attributes = metric_attributes if error is None else {**metric_attributes, "error.type": error_type}
        instruments.duration.record(elapsed, duration_attributes)
        usage = getattr(answer, "usage", None)
        self._record_usage(usage, metric_attributes, attributes.get("gen_ai.response.model") or self.model)
        span.end()

    def _record_usage(self, usage: Any, attributes: Dict[str, Any], model: str) -> None:
        instruments = self._recorder.instruments
        if instruments.latest:
            modality = "text" if usage is not None else "unknown"
            counted = {**attributes, "gen_ai.token.modality": modality}
            values: List[int] = (
                [usage.prompt_tokens, usage.completion_tokens, usage.prompt_cache_hit_tokens, usage.reasoning_tokens]
                if usage is not None
                else [0, 0, 0, 0]
            )
            for counter, value in zip(instruments.usage.values(), values):
                counter.add(value, counted)
            if usage is not None:
                instruments.operation_tokens["input_tokens"].record(usage.prompt_tokens, attributes)
                instruments.operation_tokens["output_tokens"].record(usage.completion_tokens, attributes)
        elif usage is not None:
            instruments.token_usage.record(usage.prompt_tokens, {**attributes, "gen_ai.token.type": "input"})
            instruments.token_usage.record(usage.completion_tokens, {**attributes, "gen_ai.token.type": "output"})
        if usage is not None:
            cost = estimate_cost(
                model,
                prompt_cache_hit_tokens=usage.prompt_cache_hit_tokens,
                prompt_cache_miss_tokens=usage.prompt_cache_miss_tokens,
                completion_tokens=usage.completion_tokens,
            )
            if cost is not None:
                instruments.spend.add(cost, {"gen_ai.request.model": self.model})
