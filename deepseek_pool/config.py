"""Every default deepseek_pool uses, named in one place, and the :class:`Timeout` value."""

from __future__ import annotations

import math
from typing import Optional, Union

__all__ = ["Timeout", "TimeoutLike"]

#: Where requests go when neither the argument nor ``DEEPSEEK_BASE_URL`` says otherwise.
DEFAULT_BASE_URL = "https://api.deepseek.com"
ENV_API_KEY = "DEEPSEEK_API_KEY"
ENV_BASE_URL = "DEEPSEEK_BASE_URL"
ENV_MODEL = "DEEPSEEK_MODEL"

#: Seconds to open a TCP (and TLS) connection.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds a single socket read may wait. DeepSeek keeps slow requests alive with
#: blank lines, each of which resets this clock, hence the total deadline below.
DEFAULT_READ_TIMEOUT = 300.0
#: Seconds one attempt may take from start to last byte, keep-alive trickle included.
#: Long reasoning answers take minutes; this bounds a request the server never starts.
DEFAULT_TOTAL_TIMEOUT = 900.0

#: Retries after the first attempt (0 disables retrying).
DEFAULT_MAX_RETRIES = 2
#: Backoff before retry n (1-based) is ``BACKOFF_FACTOR * 2 ** (n - 1)`` seconds, capped,
#: plus up to ``BACKOFF_JITTER`` seconds of random jitter so threads do not retry in step.
DEFAULT_BACKOFF_FACTOR = 0.25
DEFAULT_BACKOFF_MAX = 8.0
DEFAULT_BACKOFF_JITTER = 0.1
#: A server-directed wait (Retry-After) longer than this is cut to it.
DEFAULT_MAX_RETRY_AFTER = 60.0
#: Statuses worth retrying: rate limit and transient server failures.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Statuses whose Retry-After alone makes a response retryable (urllib3 adds 413, which
#: waiting cannot fix: a too-large request stays too large).
RETRY_AFTER_STATUSES = frozenset({429, 503})

#: Connections kept per host when the caller does not size the pool; covers the
#: threads of a typical web server. DeepSeekPool sizes it to its own workers.
DEFAULT_POOL_MAXSIZE = 64


class Timeout:
    """How long a request may take, as an immutable value.

    :param connect: seconds to open a connection.
    :param read: seconds one socket read may wait for bytes.
    :param total: seconds one attempt may take in all; this is the clock that still
        fires when the server sends a keep-alive line every few seconds forever.

    ``Timeout(30)`` means 30 s for the whole attempt (and so for each read), with
    the connect timeout capped at the default.
    """

    __slots__ = ("connect", "read", "total")
    connect: float
    read: float
    total: Optional[float]

    def __init__(
        self,
        total: Optional[float] = DEFAULT_TOTAL_TIMEOUT,
        *,
        connect: Optional[float] = None,
        read: Optional[float] = None,
    ) -> None:
        for name, value in (("total", total), ("connect", connect), ("read", read)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0
            ):
                raise ValueError(f"timeout {name} must be a positive number of seconds or None, got {value!r}")
        if connect is None:
            connect = DEFAULT_CONNECT_TIMEOUT if total is None else min(DEFAULT_CONNECT_TIMEOUT, total)
        if read is None:
            read = DEFAULT_READ_TIMEOUT if total is None else min(DEFAULT_READ_TIMEOUT, total)
        object.__setattr__(self, "connect", float(connect))
        object.__setattr__(self, "read", float(read))
        object.__setattr__(self, "total", None if total is None else float(total))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Timeout is immutable; build a new one")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timeout):
            return NotImplemented
        return (self.connect, self.read, self.total) == (other.connect, other.read, other.total)

    def __hash__(self) -> int:
        return hash((self.connect, self.read, self.total))

    def __repr__(self) -> str:
        return f"Timeout(connect={self.connect}, read={self.read}, total={self.total})"

    @classmethod
    def coerce(cls, value: TimeoutLike) -> Timeout:
        """Accept a :class:`Timeout`, a number of seconds (the total), or None (the defaults)."""
        if value is None:
            return DEFAULT_TIMEOUT
        if isinstance(value, Timeout):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(value)
        raise TypeError(f"timeout must be a number of seconds or a deepseek_pool.Timeout, got {value!r}")


TimeoutLike = Union[Timeout, float, int, None]

DEFAULT_TIMEOUT = Timeout()
