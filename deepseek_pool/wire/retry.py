"""The retry policy: urllib3's ``Retry`` as a value, with DeepSeek's defaults.

The client's own loop owns every attempt and asks this value what to do (``is_retry``,
``increment``, ``delay_after``); urllib3 makes no retries of its own. The value keeps
urllib3's ``Retry`` contract, so it also works mounted on a plain urllib3 pool or requests
adapter. Where it differs from urllib3, and why:

* POST is retried too (DeepSeek's API is POST; urllib3 retries only idempotent methods);
* the first retry already waits ``backoff_factor`` (urllib3 retries at once, which hammers
  a 429), and the jitter is added after the ``backoff_max`` cap, so threads that all reached
  the cap still do not retry in step (urllib3 caps after adding it, which erases it there);
* ``Retry-After`` may be fractional seconds or come as ``retry-after-ms`` (as
  openai-python honours); it is capped at ``retry_after_max``, 60 s by default (urllib3: 6 h);
* a ``Retry-After`` alone makes 429 and 503 retryable, not 413 (waiting cannot shrink a request);
* ``retry_timeouts=False`` re-raises a read timeout instead of counting it: the request was
  sent, and a retried POST may be billed twice;
* the final error response is returned, not raised (``raise_on_status=False``), so the
  caller can raise it typed, with its body; redirects are not followed (``redirect=0``).
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from itertools import takewhile
from typing import Any, ClassVar, Collection, Optional, Tuple, Union

from urllib3.exceptions import InvalidHeader, ReadTimeoutError
from urllib3.util.retry import RequestHistory, Retry

from .. import config
from .calls import RetryCancelled, RetryEvent, RetryListener  # where they lived before; kept importable

__all__ = ["DeepSeekRetry", "RetryCancelled", "RetryEvent", "RetryListener"]

#: A header value in seconds (or milliseconds): digits, optionally a decimal fraction. No sign,
#: exponent, NaN or infinity, and only ASCII digits (``float`` would also take "²" or "1e9").
_NUMBER = re.compile(r"^\s*[0-9]+(?:\.[0-9]+)?\s*$")


def _seconds_until(http_date: str) -> Optional[float]:
    """Seconds from now until an HTTP date (negative if past); None if it is not one."""
    try:
        parsed = email.utils.parsedate_tz(http_date)
        return None if parsed is None else email.utils.mktime_tz(parsed) - time.time()
    except (TypeError, ValueError, OverflowError, IndexError):  # parsedate_tz raises on some garbage
        return None


class DeepSeekRetry(Retry):
    """``urllib3.util.Retry`` with DeepSeek's defaults, used as a policy value (see the module docstring).

    Arguments are urllib3's, in urllib3's order; only the defaults differ. Two more, keyword-only:

    :param retry_timeouts: count a read timeout as retryable (False: re-raise it, since the
        request was sent and a retried POST may be billed twice).
    :param max_retry_after: older name of ``retry_after_max``, the cap in seconds on a
        server-directed wait (None: :attr:`DEFAULT_RETRY_AFTER_MAX`).
    """

    #: urllib3's idempotent methods, plus POST: DeepSeek's API is POST, and a failed call is
    #: worth repeating (``retry_timeouts=False`` avoids the one case that may bill twice).
    DEFAULT_ALLOWED_METHODS = Retry.DEFAULT_ALLOWED_METHODS | {"POST"}
    #: Statuses whose Retry-After alone makes a response retryable (urllib3 adds 413).
    RETRY_AFTER_STATUS_CODES = config.RETRY_AFTER_STATUSES
    #: Default cap, in seconds, on the computed backoff (before jitter).
    DEFAULT_BACKOFF_MAX = config.DEFAULT_BACKOFF_MAX  # type: ignore[assignment]  # urllib3 infers int; float is meant
    #: Default cap, in seconds, on a server-directed wait (urllib3: 6 hours).
    DEFAULT_RETRY_AFTER_MAX = config.DEFAULT_MAX_RETRY_AFTER  # type: ignore[misc, assignment]  # Final there

    DEFAULT: ClassVar[DeepSeekRetry]

    retry_after_max: float  # type: ignore[assignment]

    def __init__(
        self,
        total: Union[bool, int, None] = config.DEFAULT_MAX_RETRIES,
        connect: Optional[int] = None,
        read: Optional[int] = None,
        redirect: Union[bool, int, None] = 0,
        status: Optional[int] = None,
        other: Optional[int] = None,
        allowed_methods: Optional[Collection[str]] = DEFAULT_ALLOWED_METHODS,
        status_forcelist: Optional[Collection[int]] = config.RETRY_STATUSES,
        backoff_factor: float = config.DEFAULT_BACKOFF_FACTOR,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        raise_on_redirect: bool = False,
        raise_on_status: bool = False,
        history: Optional[Tuple[RequestHistory, ...]] = None,
        respect_retry_after_header: bool = True,
        remove_headers_on_redirect: Collection[str] = Retry.DEFAULT_REMOVE_HEADERS_ON_REDIRECT,
        backoff_jitter: float = config.DEFAULT_BACKOFF_JITTER,
        retry_after_max: Optional[float] = None,
        *,
        retry_timeouts: bool = True,
        max_retry_after: Optional[float] = None,
    ) -> None:
        # retry_after_max is not passed on: urllib3 before 2.6 has no such argument.
        super().__init__(
            total,
            connect,
            read,
            redirect,
            status,
            other,
            allowed_methods,
            status_forcelist,
            backoff_factor,
            backoff_max,
            raise_on_redirect,
            raise_on_status,
            history,
            respect_retry_after_header,
            remove_headers_on_redirect,
            backoff_jitter,
        )
        if retry_after_max is not None and max_retry_after is not None and retry_after_max != max_retry_after:
            raise TypeError(
                f"retry_after_max={retry_after_max!r} and max_retry_after={max_retry_after!r} "
                "name the same cap: give one of them"
            )
        cap = retry_after_max if retry_after_max is not None else max_retry_after
        self.retry_after_max = self.DEFAULT_RETRY_AFTER_MAX if cap is None else cap
        self.retry_timeouts = retry_timeouts

    @property
    def max_retry_after(self) -> float:
        """The older name of :attr:`retry_after_max`."""
        return self.retry_after_max

    def new(self, **kw: Any) -> DeepSeekRetry:
        """A copy with ``kw`` changed; keeps every DeepSeek field (urllib3's copies only its own)."""
        if "max_retry_after" in kw:  # the alias replaces the current cap instead of conflicting with it
            kw.setdefault("retry_after_max", kw["max_retry_after"])
        else:
            kw.setdefault("retry_after_max", self.retry_after_max)
        kw.setdefault("retry_timeouts", self.retry_timeouts)
        return super().new(**kw)

    def increment(
        self,
        method: Optional[str] = None,
        url: Optional[str] = None,
        response: Any = None,
        error: Optional[Exception] = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> DeepSeekRetry:
        """urllib3's ``increment``, except that a read timeout is re-raised with ``retry_timeouts=False``."""
        if isinstance(error, ReadTimeoutError) and not self.retry_timeouts:
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def get_backoff_time(self) -> float:
        """Backoff before the next attempt: ``backoff_for`` the errors since the last redirect."""
        errors = sum(1 for _ in takewhile(lambda entry: entry.redirect_location is None, reversed(self.history)))
        return self.backoff_for(errors)

    def backoff_for(self, n: int) -> float:
        """Seconds before retry ``n`` (1-based): ``backoff_factor * 2 ** (n - 1)``, capped, plus jitter; 0 if n <= 0."""
        if n <= 0:
            return 0.0
        doublings = min(n - 1, 1000)  # 2.0 ** 1024 overflows; any cap is reached long before
        value = min(self.backoff_max, self.backoff_factor * 2.0**doublings)
        if self.backoff_jitter:
            value += random.random() * self.backoff_jitter  # after the cap, so it survives there
        return float(max(0.0, value))

    def parse_retry_after(self, retry_after: str) -> float:
        """Seconds in a Retry-After value (whole, fractional, or an HTTP date), capped at ``retry_after_max``.

        :raises InvalidHeader: for anything else (negative, NaN, empty, garbage), as urllib3 does;
            :meth:`get_retry_after` treats such a header as absent.
        """
        seconds = float(retry_after) if _NUMBER.match(retry_after) else _seconds_until(retry_after)
        if seconds is None:
            raise InvalidHeader(f"Invalid Retry-After header: {retry_after}")
        return min(max(seconds, 0.0), self.retry_after_max)

    def get_retry_after(self, response: Any) -> Optional[float]:
        """Seconds the server asked for (``retry-after-ms`` first, then Retry-After); None if absent or unusable."""
        headers = response.headers
        millis = headers.get("retry-after-ms")
        if isinstance(millis, str) and _NUMBER.match(millis):
            return min(float(millis) / 1000.0, self.retry_after_max)
        value = headers.get("Retry-After")
        if not isinstance(value, str):
            return None
        try:
            return self.parse_retry_after(value)
        except InvalidHeader:
            return None

    def delay_after(self, response: Any = None) -> float:
        """Seconds to wait before the next attempt: exactly what :meth:`sleep` would sleep.

        A positive Retry-After of ``response`` when it is respected, else the backoff. A zero
        Retry-After (or a date already past) falls back to the backoff, as in urllib3.
        """
        # ``is not None``: a requests.Response with an error status is falsy.
        if response is not None and self.respect_retry_after_header:
            retry_after = self.get_retry_after(response)
            if retry_after:
                return retry_after
        return self.get_backoff_time()

    def sleep(self, response: Any = None) -> None:
        """Block for :meth:`delay_after`, as urllib3's ``sleep`` does when this policy is mounted on it."""
        delay = self.delay_after(response)
        if delay > 0:
            time.sleep(delay)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(total={self.total}, connect={self.connect}, read={self.read}, "
            f"redirect={self.redirect}, status={self.status}, retry_after_max={self.retry_after_max}, "
            f"retry_timeouts={self.retry_timeouts})"
        )


DeepSeekRetry.DEFAULT = DeepSeekRetry()
