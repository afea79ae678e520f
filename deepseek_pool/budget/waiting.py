"""The limiter's waiting room: the queue of threads that wait for a start, and who wakes whom.

Waiting threads of one limiter form a FIFO queue: only the head one watches the clock
(and, for a shared storage, polls it), so a start wakes one thread rather than all; a
release by any limiter of the process on the same budget wakes the head of each
(:mod:`~deepseek_pool.budget.peers`). A cool-down is every waiter's business: each ends it
with a random jitter of its own, in turn or not, so the starts it held spread out.

:class:`WaitingRoom` is a base class of :class:`~deepseek_pool.budget.limiter.Limiter`,
kept apart so that admission's rules and its waits read on their own.
"""

from __future__ import annotations

import contextlib
import math
import threading
from concurrent.futures import CancelledError
from typing import Any, Callable, Deque, Dict, Optional, Set, Union

from .permit import Permit
from .retries import CANCEL_POLL_INTERVAL, SHARED_POLL_INTERVAL, JitterFunction, WaitFunction
from .rules import CoolingDelay
from .storage import Storage

__all__ = ["WaitingRoom"]


class WaitingRoom:
    """The queue of a :class:`~deepseek_pool.budget.limiter.Limiter`'s waiting threads."""

    # Set by the Limiter (see its __init__ and _reset_local).
    storage: Storage
    _lock: threading.Lock
    _clock: Callable[[], float]
    _wait: WaitFunction
    _jitter: JitterFunction
    _waiters: Deque[threading.Event]
    _retry_waiters: Set[threading.Event]
    _cool_end: float
    _throttled: int
    _wait_seconds: float
    _timeouts: int
    _cancellations: int
    _family: Dict[Any, Any]  # the limiters of this budget's shares, this one among them

    def _try_start(self, tokens: int, ends_by: Optional[float] = None) -> Union[Permit, float]:
        raise NotImplementedError

    def _hold(self, permit: Permit) -> None:
        raise NotImplementedError

    def _acquire_slow(
        self, tokens: int, timeout: Optional[float], cancelled: Optional[threading.Event], ends_by: Optional[float]
    ) -> Permit:
        clock = self._clock
        lock = self._lock
        waiters = self._waiters
        begin = clock()
        deadline = None if timeout is None else begin + timeout
        waiter = threading.Event()
        outcome = "interrupted"
        # The end of the latest cool-down this waiter met, and its own start after it (jittered).
        seen_cool_end = not_before = -math.inf
        out_of_turn = False
        with lock:
            waiters.append(waiter)
        try:
            while True:
                with lock:
                    # Cleared under the lock, so a set() that follows is never missed.
                    waiter.clear()
                    head = waiters[0] is waiter
                    if self._cool_end > seen_cool_end and begin < self._cool_end:
                        # Held by a cool-down: start at its end plus a jitter of this waiter's
                        # own, in turn or not, so that the starts it held spread out.
                        seen_cool_end = self._cool_end
                        not_before = seen_cool_end + self._jitter(seen_cool_end - begin)
                        out_of_turn = True
                    early = not_before - clock()
                    if early > 0.0:
                        delay = early
                    elif head or out_of_turn:
                        out_of_turn = False
                        granted = self._try_start(tokens, ends_by)
                        if isinstance(granted, Permit):
                            if self.storage.leases_expire:
                                self._hold(granted)
                            if head:
                                waiters.popleft()
                                if waiters:
                                    waiters[0].set()
                            else:
                                waiters.remove(waiter)
                            granted.waited = clock() - begin
                            self._throttled += 1
                            self._wait_seconds += granted.waited
                            outcome = "granted"
                            return granted
                        delay = granted
                        if delay.__class__ is CoolingDelay:
                            # Every waiter of this limiter draws its own end of this cool-down.
                            self._cool_end = max(self._cool_end, clock() + delay)
                            for other in waiters:
                                other.set()
                            continue
                        if not head:
                            delay = math.inf
                        elif self.storage.shared and delay > SHARED_POLL_INTERVAL:
                            delay = SHARED_POLL_INTERVAL  # another process may release first
                    else:
                        delay = math.inf
                if cancelled is not None:
                    if cancelled.is_set():
                        outcome = "cancelled"
                        raise CancelledError("limiter wait cancelled")
                    if delay > CANCEL_POLL_INTERVAL:
                        delay = CANCEL_POLL_INTERVAL
                if deadline is not None:
                    remaining = deadline - clock()
                    if remaining <= 0.0:
                        outcome = "timeout"
                        raise TimeoutError(f"no start allowed within {timeout} s ({self!r})")
                    if remaining < delay:
                        delay = remaining
                self._wait(waiter, None if delay == math.inf else delay)
        finally:
            if outcome != "granted":
                with lock:
                    self._leave(waiter)
                    self._throttled += 1
                    self._wait_seconds += clock() - begin
                    if outcome == "timeout":
                        self._timeouts += 1
                    elif outcome == "cancelled":
                        self._cancellations += 1

    def _wake_head(self) -> None:
        if self._waiters:
            with self._lock:
                if self._waiters:
                    self._waiters[0].set()

    def _leave(self, waiter: threading.Event) -> None:
        """Take ``waiter`` out of the queue; if it was the head, wake the next one."""
        waiters = self._waiters
        if waiters and waiters[0] is waiter:
            waiters.popleft()
            if waiters:
                waiters[0].set()
        else:
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)

    def wake_waiters(self) -> None:
        """Wake every thread waiting in :meth:`acquire` or :meth:`wait_before_retry` to
        re-check its ``cancelled`` event and timeout now (call it right after setting one)."""
        for member in list(self._family.values()):
            with member._lock:
                for waiter in member._waiters:
                    waiter.set()
                for waiter in member._retry_waiters:
                    waiter.set()
