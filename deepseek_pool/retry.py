"""The retry policy: urllib3's ``Retry``, taught what DeepSeek needs.

urllib3 does the retrying (it is mounted on the client's ``HTTPAdapter``); this
subclass changes only the policy:

* POST is retried (urllib3 leaves it out by default);
* the first retry already waits (urllib3 retries at once, which hammers a 429);
* ``Retry-After`` may be fractional seconds, ``retry-after-ms``, or an HTTP date,
  and is capped;
* timeouts after the request was sent can be excluded (a retried POST may be billed twice);
* each retry is logged and reported to the calling thread's listener, which may veto
  it (a spent retry budget) and which the pool uses to cool everyone down after a 429;
* a per-call deadline stops retrying when the next attempt could not finish in time.

Listeners and deadlines are per call, so they travel in a thread-local set by the
client around each request: urllib3 calls the policy in the requesting thread.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
import time
from concurrent.futures import CancelledError
from typing import Any, Callable, NamedTuple, Optional

from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, ReadTimeoutError, ResponseError
from urllib3.util.retry import Retry

from . import config
from .errors import APIConnectionError, RetryBudgetExceeded

__all__ = ["DeepSeekRetry", "RetryCancelled", "RetryEvent", "RetryListener", "call_context", "wait_for_retry"]

log = logging.getLogger(__name__)

_SECONDS = re.compile(r"^\s*[0-9]+(?:\.[0-9]*)?\s*$")


class RetryCancelled(APIConnectionError):
    """A retry was abandoned because the pool running the call is shutting down."""


class RetryEvent(NamedTuple):
    """What a listener learns before a retry: attempt ``attempt`` failed, next one in ``delay`` s."""

    attempt: int
    status: Optional[int]
    error: Optional[BaseException]
    delay: float
    kind: str  # "status", "connect", "read" or "timeout"


RetryListener = Callable[[RetryEvent], None]


class _CallContext(threading.local):
    """Per-thread, per-call state the policy reads (set and cleared by the client)."""

    listener: Optional[RetryListener] = None
    deadline: Optional[float] = None
    #: why the last retry was refused, so the client can say it in the final error
    stopped: Optional[str] = None
    #: set by a pool that is shutting down: backoff sleeps end at once and the call fails
    cancelled: Optional[threading.Event] = None
    #: the call's abort handle (see ``client.CallHandle``), told which connection it uses
    handle: Any = None
    #: replaces the plain sleep before a retry (a pool waits out its cool-down there)
    retry_gate: Optional[Callable[[float], None]] = None
    #: told the status of every response the call receives (a pool ends a cool-down on a 2xx)
    on_status: Optional[Callable[[int], None]] = None
    #: attempts the call made in earlier sends, so urllib3's retries stay within the call's total
    prior_attempts = 0


call_context = _CallContext()


def _kind_of(error: Optional[BaseException], status: Optional[int]) -> str:
    if error is None:
        return "status"
    if isinstance(error, ReadTimeoutError):
        return "timeout"
    return "connect" if isinstance(error, ConnectTimeoutError) else "read"


def wait_for_retry(delay: float) -> None:
    """Sleep ``delay`` seconds before a retry, or stop at once if the caller's pool is closing."""
    context = call_context
    cancelled = context.cancelled
    gate = context.retry_gate
    if gate is not None:
        try:
            gate(delay)
        except CancelledError:
            raise RetryCancelled("not retried: the pool is shutting down") from None
    elif cancelled is None:
        if delay > 0:
            time.sleep(delay)
    elif cancelled.wait(delay) or cancelled.is_set():
        raise RetryCancelled("not retried: the pool is shutting down")


class DeepSeekRetry(Retry):
    """``urllib3.util.Retry`` with DeepSeek's policy (see the module docstring).

    :param max_retry_after: cap, in seconds, on a server-directed wait.
    :param retry_timeouts: retry read timeouts after the request was sent (may bill twice).
    """

    DEFAULT_ALLOWED_METHODS = frozenset({"GET", "POST"})
    #: Statuses whose Retry-After makes a response retryable (urllib3 adds 413; DeepSeek
    #: sends no such 413, and a too-large request will not shrink by waiting).
    RETRY_AFTER_STATUS_CODES = frozenset({429, 503})

    def __init__(
        self,
        total: Any = config.DEFAULT_MAX_RETRIES,
        *,
        max_retry_after: float = config.DEFAULT_MAX_RETRY_AFTER,
        retry_timeouts: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("allowed_methods", self.DEFAULT_ALLOWED_METHODS)
        kwargs.setdefault("status_forcelist", config.RETRY_STATUSES)
        kwargs.setdefault("backoff_factor", config.DEFAULT_BACKOFF_FACTOR)
        kwargs.setdefault("backoff_max", config.DEFAULT_BACKOFF_MAX)
        kwargs.setdefault("backoff_jitter", config.DEFAULT_BACKOFF_JITTER)
        # The final error response is returned, so the caller raises it typed, with its body.
        kwargs.setdefault("raise_on_status", False)
        kwargs.setdefault("raise_on_redirect", False)
        kwargs.setdefault("redirect", 0)
        super().__init__(total, **kwargs)
        self.max_retry_after = max_retry_after
        self.retry_timeouts = retry_timeouts
        self._planned_delay: Optional[float] = None

    def new(self, **kw: Any) -> DeepSeekRetry:
        kw.setdefault("max_retry_after", self.max_retry_after)
        kw.setdefault("retry_timeouts", self.retry_timeouts)
        return super().new(**kw)

    def get_backoff_time(self) -> float:
        """``backoff_factor * 2 ** (n - 1)`` before retry n, capped, plus jitter (from the first retry)."""
        return self.backoff_for(len(self.history))

    def backoff_for(self, n: int) -> float:
        """Seconds to wait before retry ``n`` (1-based); 0 before the first attempt."""
        if n <= 0:
            return 0.0
        value = min(self.backoff_max, self.backoff_factor * (2 ** (n - 1)))
        if self.backoff_jitter:
            value += random.random() * self.backoff_jitter
        return float(max(0.0, value))

    def delay_after(self, response: Any = None) -> float:
        """Seconds to wait before the next attempt: the response's Retry-After, else the backoff."""
        if response is not None and self.respect_retry_after_header:
            delay = self.get_retry_after(response)
            if delay is not None:
                return delay
        return self.get_backoff_time()

    def parse_retry_after(self, retry_after: str) -> float:
        """Seconds (fractional too, which urllib3 rejects) or an HTTP date; capped."""
        if _SECONDS.match(retry_after):
            seconds = float(retry_after)
        else:
            parsed = email.utils.parsedate_tz(retry_after)
            if parsed is None:
                return -1.0  # unusable header: fall back to backoff
            seconds = email.utils.mktime_tz(parsed) - time.time()
        return min(max(seconds, 0.0), self.max_retry_after)

    def get_retry_after(self, response: Any) -> Optional[float]:
        headers = response.headers
        value = headers.get("retry-after-ms")
        if value is not None:
            try:
                return min(max(float(value) / 1000.0, 0.0), self.max_retry_after)
            except ValueError:
                pass
        value = headers.get("Retry-After")
        if value is None:
            return None
        seconds = self.parse_retry_after(value)
        return None if seconds < 0 else seconds

    def increment(
        self,
        method: Optional[str] = None,
        url: Optional[str] = None,
        response: Any = None,
        error: Optional[Exception] = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> DeepSeekRetry:
        if error is not None and isinstance(error, ReadTimeoutError) and not self.retry_timeouts:
            raise error
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        status = response.status if response is not None else None
        delay = None
        if response is not None and self.respect_retry_after_header:
            delay = new.get_retry_after(response)
        if delay is None:
            delay = new.get_backoff_time()
        new._planned_delay = delay
        context = call_context
        reason: Optional[BaseException] = error
        prior = context.prior_attempts
        if prior and isinstance(self.total, int) and prior + len(new.history) > self.total:
            # Earlier sends of this call already used the retries: stop, as urllib3 would.
            raise MaxRetryError(_pool, url or "", error or ResponseError(f"too many {status} error responses"))
        if context.cancelled is not None and context.cancelled.is_set():
            context.stopped = "the pool is shutting down"
        elif context.deadline is not None and time.monotonic() + delay >= context.deadline:
            context.stopped = "the call's deadline would pass before the next attempt"
        elif context.listener is not None:
            event = RetryEvent(len(new.history), status, error, delay, _kind_of(error, status))
            try:
                context.listener(event)
            except RetryBudgetExceeded as exc:
                context.stopped = str(exc)
                reason = exc
        if context.stopped is not None:
            level = (
                logging.DEBUG
                if reason is error and context.cancelled is not None and context.cancelled.is_set()
                else logging.WARNING
            )
            log.log(level, "not retrying %s %s: %s", method, url, context.stopped)
            raise MaxRetryError(_pool, url or "", reason)  # type: ignore[arg-type]
        return new

    def sleep(self, response: Any = None) -> None:
        delay = self._planned_delay
        if delay is None:
            super().sleep(response)
            return
        last = self.history[-1] if self.history else None
        log.info(
            "retry %d of %s after %s in %.2fs",
            len(self.history),
            self.total if self.total is None else len(self.history) + self.total,
            (last.status or type(last.error).__name__) if last else "?",
            delay,
        )
        wait_for_retry(delay)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(total={self.total}, backoff_factor={self.backoff_factor}, "
            f"backoff_max={self.backoff_max}, max_retry_after={self.max_retry_after}, "
            f"retry_timeouts={self.retry_timeouts}, history={len(self.history)})"
        )
