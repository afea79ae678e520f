"""The limiter's gates for calls that failed: a 429's cool-down, the wait before a retry,
and the retry budget.

:class:`RetryGates` is a base class of :class:`~deepseek_pool.budget.limiter.Limiter`, kept
apart so that admission (acquire and release) and what follows a failure read on their own.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import threading
from concurrent.futures import CancelledError
from typing import Callable, Dict, Optional, Set

from ..errors import RetryBudgetExceeded
from . import rules as budget
from .permit import Permit
from .rules import BudgetConfig, RateLimitSignal
from .storage import Storage

__all__ = ["RetryGates"]

log = logging.getLogger(__name__)

#: Capacity of the retry budget when the caller does not choose one.
DEFAULT_RETRY_BUDGET = 500
#: What one retry after an error status (429, 5xx, an empty 200) costs.
RETRY_COST = 5
#: What one retry after a timeout or a connection error costs: these tie up a
#: thread for long, so they drain the budget twice as fast.
TIMEOUT_RETRY_COST = 10
#: What a call that succeeds at the first attempt earns back.
NO_RETRY_INCREMENT = 1
#: Cost of a retry by kind; the kinds are those of :class:`deepseek_pool.RetryEvent`.
RETRY_COSTS: Dict[str, int] = {
    "status": RETRY_COST,
    "connect": TIMEOUT_RETRY_COST,
    "connection": TIMEOUT_RETRY_COST,
    "read": TIMEOUT_RETRY_COST,
    "timeout": TIMEOUT_RETRY_COST,
}
# The waits of acquire and of a retry share these two.
#: Longest a waiter given a ``cancelled`` event sleeps before looking at it again;
#: :meth:`Limiter.wake_waiters` makes it look at once.
CANCEL_POLL_INTERVAL = 0.1
#: How often the head waiter looks at a shared storage whose cap is full: a release
#: in another process cannot wake it.
SHARED_POLL_INTERVAL = 0.02

#: The end of a cool-down or Retry-After wait is pushed back by a random part of it, up
#: to this fraction of the wait ...
JITTER_FRACTION = 0.2
#: ... and at most this many seconds: threads held together do not all wake in one instant.
JITTER_MAX = 1.0

WaitFunction = Callable[[threading.Event, Optional[float]], bool]
JitterFunction = Callable[[float], float]


def cool_down_jitter(seconds: float) -> float:
    """Seconds added to the end of a ``seconds``-long cool-down or Retry-After wait: positive,
    random, at most :data:`JITTER_FRACTION` of it and :data:`JITTER_MAX`.

    A wait that ends at the instant every other held thread's ends makes a herd, the
    very burst that drew the 429; the spread is each waiter's own, so processes that
    share a budget spread too.
    """
    return random.uniform(0.0, min(JITTER_MAX, JITTER_FRACTION * seconds))


class RetryGates:
    """Cool-down, the wait before a retry, and the retry budget: the :class:`~deepseek_pool.budget.limiter.Limiter`'s
    methods for calls that failed."""

    # Set by the Limiter (see its __init__ and _reset_local).
    storage: Storage
    name: str
    _config: BudgetConfig
    _lock: threading.Lock
    _clock: Callable[[], float]
    _wait: WaitFunction
    _jitter: JitterFunction
    _retry_waiters: Set[threading.Event]
    _budget_exhausted: bool
    _timeouts: int
    _cancellations: int

    def cool_down(
        self,
        seconds: float,
        *,
        message: Optional[str] = None,
        signal: Optional[RateLimitSignal] = None,
        retry_after: bool = False,
    ) -> None:
        """A call saw a 429: lower the cap if it speaks of concurrency, and hold starts back.

        :param seconds: the Retry-After value, or the backoff delay (the caller caps
            server-directed values).
        :param retry_after: ``seconds`` is the server's own Retry-After: new starts and
            retries of every sharer wait that long, whatever the message says.
        :param message: the 429's message; DeepSeek names the account's cap there
            ("concurrency limit of 39"). Without ``message`` or ``signal``, new starts and
            retries wait ``seconds`` and the cap stays.
        :param signal: what the 429 says, already read (:func:`~deepseek_pool.budget.rules.rate_limit_signal`).
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (0 <= seconds < math.inf):
            raise ValueError(f"cool-down seconds must be a finite number >= 0, got {seconds!r}")
        if signal is None:
            signal = budget.rate_limit_signal(message) if message is not None else RateLimitSignal()
        if retry_after and not signal.retry_after:
            signal = dataclasses.replace(signal, retry_after=True)
        with self._lock:
            cap = self.storage.rate_limited(self.name, self._config, seconds, signal)
        if signal.named_cap is not None:
            log.warning("DeepSeek named its concurrency cap: %d; the limiter's cap is now %g", signal.named_cap, cap)
        elif seconds > 0:
            log.info("rate limited: holding new calls back for up to %.2f s (cap %g)", seconds, cap)

    def wait_before_retry(
        self,
        delay: float,
        *,
        cancelled: Optional[threading.Event] = None,
        timeout: Optional[float] = None,
        permit: Optional[Permit] = None,
        pace: bool = True,
        retry_after: bool = False,
    ) -> None:
        """Sleep ``delay`` seconds before a retry, longer while a cool-down holds retries, then
        take the retry's place in the ``rpm`` spacing.

        The end of a cool-down is pushed back by :func:`cool_down_jitter`, so retries held
        together do not all go out at once.

        :param timeout: most seconds to wait in all (a call's deadline); a wait that
            would pass it raises at once rather than sleeping first.
        :param permit: the call's permit (accepted for symmetry with the other calls).
        :param retry_after: ``delay`` is the server's Retry-After: its end is jittered too.
        :param pace: take a place in the ``rpm`` spacing (every request that reaches the
            server counts); False for a retry that queues through :meth:`acquire` next,
            which spaces it.
        :raises concurrent.futures.CancelledError: ``cancelled`` was set while waiting.
        :raises TimeoutError: the wait would pass ``timeout``.
        """
        clock = self._clock
        begin = clock()
        end = begin + delay
        if retry_after and delay > 0.0:
            end += self._jitter(delay)
        limit = math.inf if timeout is None else begin + timeout
        hold_end = -math.inf  # the latest cool-down end seen, and this waiter's own end of it
        held_until = -math.inf
        paced = not pace or self._config.rpm is None
        waiter = threading.Event()
        with self._lock:
            self._retry_waiters.add(waiter)
        try:
            while True:
                if cancelled is not None and cancelled.is_set():
                    with self._lock:
                        self._cancellations += 1
                    raise CancelledError("retry wait cancelled")
                hold = self.storage.retry_hold(self.name)
                now = clock()
                if hold > 0.0 and now + hold > hold_end:
                    hold_end = now + hold
                    held_until = hold_end + self._jitter(hold)
                wait = max(end, held_until) - now
                if wait <= 0.0 and not paced:
                    wait = self.storage.pace(self.name, self._config)
                    paced = wait <= 0.0
                    end = now + wait
                if wait <= 0.0:
                    return
                if now + wait > limit:
                    with self._lock:
                        self._timeouts += 1
                    raise TimeoutError(f"the retry could not start within {timeout} s ({self!r})")
                if cancelled is not None and wait > CANCEL_POLL_INTERVAL:
                    wait = CANCEL_POLL_INTERVAL
                if self.storage.shared and wait > SHARED_POLL_INTERVAL * 10:
                    wait = SHARED_POLL_INTERVAL * 10  # another process may cool down meanwhile
                waiter.clear()
                self._wait(waiter, wait)
        finally:
            with self._lock:
                self._retry_waiters.discard(waiter)

    def spend_retry(self, kind: str = "status", *, permit: Optional[Permit] = None) -> int:
        """Pay for one retry from the shared budget; return what it cost.

        :param kind: ``"status"`` (an error status; costs :data:`RETRY_COST`) or
            ``"timeout"``, ``"connect"``, ``"read"``, ``"connection"`` (cost
            :data:`TIMEOUT_RETRY_COST`).
        :param permit: the call's permit, so that a later success refunds exactly this.
        :raises RetryBudgetExceeded: the budget cannot pay; the call should fail now.
        """
        cost = RETRY_COSTS.get(kind)
        if cost is None:
            raise ValueError(f"kind must be one of {sorted(RETRY_COSTS)}, got {kind!r}")
        with self._lock:
            paid, left = self.storage.spend_retry(self.name, self._config, cost)
            if paid is not None:
                self._budget_exhausted = False
                if permit is not None:
                    permit.retry_cost += paid
                return paid
            first = not self._budget_exhausted
            self._budget_exhausted = True
        message = (
            f"the API keeps failing: retry budget of {self._config.retry_budget} exhausted ({left} left, a {kind} "
            f"retry costs {cost}); calls now fail fast until calls succeed again"
        )
        if first:
            log.warning("%s", message)
        raise RetryBudgetExceeded(message)
