"""Shared rate-limit gates: one :class:`Limiter` that any number of threads and pools consult.

A worker asks :meth:`Limiter.acquire` for permission to *start* a call and hands the
returned :class:`Permit` back to :meth:`Limiter.release` when the call has ended.
A start is granted only when every configured gate allows it:

* ``max_in_flight`` -- at most N calls between acquire and release;
* ``rpm`` -- starts spaced at least ``60 / rpm`` seconds apart, so no one-second
  window ever sees more than ``ceil(rpm / 60)`` starts and no burst can draw a 429;
* ``tpm`` -- a token bucket that holds one minute of tokens (``tpm``) and refills
  continuously at ``tpm / 60`` per second. A start takes its estimate out; release
  gives back what was over-estimated (never above ``tpm``) or charges what was
  under-estimated (the bucket may go negative, which delays later starts). After an
  idle minute up to ``tpm`` tokens may start at once; afterwards the flow is smooth. A
  request bigger than ``tpm`` starts when the bucket is full (the "window is empty");
* a cool-down -- :meth:`Limiter.cool_down`, called after any 429, holds every *new*
  start, and every retry that goes through :meth:`Limiter.wait_before_retry`, back
  until it ends. Then one call probes: the others wait until it gets an answer that
  is not an error (:meth:`Limiter.note_success`), or until :data:`PROBE_LEASE` passes,
  so a pool that hit the rate limit sends one request, not one per thread, to find
  out whether the limit is over (a circuit breaker's half-open state).

Separately, a retry budget in the spirit of the AWS SDKs' retry quota makes a failing
API cost about ``budget / RETRY_COST`` retries in all rather than workers x retries:
:meth:`Limiter.spend_retry` pays for each retry and raises
:class:`~deepseek_pool.errors.RetryBudgetExceeded` when the budget cannot pay; a call
that succeeds earns :data:`NO_RETRY_INCREMENT` back, or what its retries cost.

Waiting threads form a FIFO queue: only the head one watches the clock, the rest sleep
until it has started, so a start wakes one thread rather than all of them, and a large
request is never starved by small ones behind it.

Example::

    limiter = Limiter(max_in_flight=32, rpm=600, tpm=1_000_000)
    permit = limiter.acquire(tokens=estimate)
    try:
        completion = client.chat(messages, max_tokens=1000)
    except BaseException:
        limiter.release(permit, tokens_used=0, ok=False)
        raise
    limiter.release(permit, tokens_used=completion.usage.total_tokens)
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Optional, Type

from .errors import RetryBudgetExceeded

__all__ = ["Limiter", "LimiterStats", "Permit"]

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
#: Cost of a retry by kind; the kinds are those of :class:`deepseek_pool.retry.RetryEvent`.
RETRY_COSTS: Dict[str, int] = {
    "status": RETRY_COST,
    "connect": TIMEOUT_RETRY_COST,
    "connection": TIMEOUT_RETRY_COST,
    "read": TIMEOUT_RETRY_COST,
    "timeout": TIMEOUT_RETRY_COST,
}
#: Most seconds the others wait for a probe's outcome after a cool-down before
#: another call may probe.
PROBE_LEASE = 10.0
#: Longest a waiter given a ``cancelled`` event sleeps before looking at it again;
#: :meth:`Limiter.wake_waiters` makes it look at once.
CANCEL_POLL_INTERVAL = 0.1

# Tokens are whole numbers, so a shortfall this small is float rounding in the refill,
# not a reason to wait again.
_TOKEN_EPSILON = 1e-6

#: Stands for the Permit about to be made for a start that takes the probe.
_PROBING_START = object()

#: Stands for the Permit about to be made for a start that takes the probe.
_PROBING_START = object()

WaitFunction = Callable[[threading.Event, Optional[float]], bool]


@dataclass(frozen=True)
class LimiterStats:
    """A consistent snapshot of a :class:`Limiter`'s counters (taken under its lock).

    :ivar in_flight: calls between acquire and release now.
    :ivar started: starts granted so far.
    :ivar finished: permits released so far.
    :ivar waiting: threads queued in :meth:`Limiter.acquire` now.
    :ivar throttled: acquires that had to wait (whatever their outcome).
    :ivar wait_seconds: total seconds those acquires waited.
    :ivar timeouts: acquires that gave up with :class:`TimeoutError`.
    :ivar cancellations: acquires that gave up because their ``cancelled`` event was set.
    :ivar cool_downs: calls to :meth:`Limiter.cool_down`.
    :ivar cooling_for: seconds left in the current cool-down (0.0 when none).
    :ivar retries: retries paid for by :meth:`Limiter.spend_retry`.
    :ivar retries_refused: retries refused because the budget could not pay.
    :ivar retry_budget: what is left in the retry budget (None when it is off).
    :ivar tokens_used: real tokens reported to :meth:`Limiter.release`.
    """

    in_flight: int
    started: int
    finished: int
    waiting: int
    throttled: int
    wait_seconds: float
    timeouts: int
    cancellations: int
    cool_downs: int
    cooling_for: float
    retries: int
    retries_refused: int
    retry_budget: Optional[int]
    tokens_used: int


class Permit:
    """Permission to run one call, returned by :meth:`Limiter.acquire`.

    Hand it back with :meth:`Limiter.release` exactly once, or use it as a context
    manager (``with limiter.acquire(): ...``), which releases it with ``ok`` set to
    whether the block raised.

    :ivar tokens: the tokens reserved for the call (its estimate).
    :ivar started_at: the limiter's clock when the start was granted.
    :ivar waited: seconds the acquire waited.
    :ivar retry_cost: budget spent on this call's retries via
        ``spend_retry(kind, permit=permit)``; refunded if the call succeeds.
    """

    __slots__ = ("_epoch", "_limiter", "_released", "retry_cost", "started_at", "tokens", "waited")

    def __init__(self, limiter: Limiter, tokens: int, started_at: float, waited: float) -> None:
        self._epoch = limiter._cool_epoch
        self.tokens = tokens
        self.started_at = started_at
        self.waited = waited
        self.retry_cost = 0
        self._limiter = limiter
        self._released = False

    @property
    def released(self) -> bool:
        """Whether the permit has been handed back."""
        return self._released

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Any) -> None:
        if not self._released:
            self._limiter.release(self, ok=exc_type is None)

    def __repr__(self) -> str:
        return (
            f"Permit(tokens={self.tokens}, started_at={self.started_at:.3f}, "
            f"waited={self.waited:.3f}, released={self._released})"
        )


def _check_count(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int if it is an int >= ``minimum``, else raise naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


class Limiter:
    """Thread-safe gates that decide when a call may start; share one across pools.

    :param max_in_flight: most calls between acquire and release at once (None: no cap).
    :param rpm: most starts per minute, evenly spaced (None: no limit).
    :param tpm: most tokens per minute, as a token bucket (None: no limit).
    :param retry_budget: capacity of the retry budget (None: retries are never refused).
    :param clock: monotonic seconds; every decision reads it, so tests can fake it.
    :param wait: ``wait(event, timeout)`` blocks until the event is set or the timeout
        (None: forever) passes, like :meth:`threading.Event.wait`; tests inject one that
        advances a fake clock instead of sleeping.

    Locks are held for a few microseconds and never while waiting.
    """

    def __init__(
        self,
        *,
        max_in_flight: Optional[int] = None,
        rpm: Optional[float] = None,
        tpm: Optional[int] = None,
        retry_budget: Optional[int] = DEFAULT_RETRY_BUDGET,
        clock: Callable[[], float] = time.monotonic,
        wait: WaitFunction = threading.Event.wait,
    ) -> None:
        if max_in_flight is not None:
            max_in_flight = _check_count("max_in_flight", max_in_flight, 1)
        if rpm is not None:
            if isinstance(rpm, bool) or not isinstance(rpm, (int, float)):
                raise TypeError(f"rpm must be a number, got {rpm!r}")
            if not (0 < rpm < math.inf):
                raise ValueError(f"rpm must be > 0, got {rpm!r}")
        if tpm is not None:
            tpm = _check_count("tpm", tpm, 1)
        if retry_budget is not None:
            retry_budget = _check_count("retry_budget", retry_budget, 0)
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        if not callable(wait):
            raise TypeError(f"wait must be callable, got {wait!r}")

        self._max_in_flight = max_in_flight
        self._rpm = rpm
        self._tpm = tpm
        self._retry_budget = retry_budget
        self._clock = clock
        self._wait = wait
        self._lock = threading.Lock()
        # Head of the queue is the only waiter that watches the clock.
        self._waiters: Deque[threading.Event] = deque()

        self._interval: Optional[float] = None if rpm is None else 60.0 / rpm
        self._next_start = -math.inf
        self._cool_until = -math.inf
        # Counts cool-downs; an outcome ends the probing phase only if its attempt
        # started in the current epoch (after the latest 429), so an older call that
        # happens to succeed during the cool-down does not let every held thread rush in.
        self._cool_epoch = 0
        # After a cool-down: one call at a time probes until one succeeds.
        self._probing = False
        self._probe_until = -math.inf
        # Who probes: the Permit of a probing start, or the thread of a probing retry.
        self._prober: Any = None
        self._gate_changed = threading.Condition(self._lock)
        self._tpm_capacity = float(tpm) if tpm is not None else 0.0
        self._tpm_rate = self._tpm_capacity / 60.0
        self._tpm_level = self._tpm_capacity
        self._tpm_last = clock()
        self._budget_left = retry_budget if retry_budget is not None else 0
        self._budget_exhausted = False

        self._in_flight = 0
        self._started = 0
        self._finished = 0
        self._throttled = 0
        self._wait_seconds = 0.0
        self._timeouts = 0
        self._cancellations = 0
        self._cool_downs = 0
        self._retries = 0
        self._retries_refused = 0
        self._tokens_used = 0

    # -- configuration ---------------------------------------------------------------

    @property
    def max_in_flight(self) -> Optional[int]:
        """The in-flight cap (None: off)."""
        return self._max_in_flight

    @property
    def rpm(self) -> Optional[float]:
        """The requests-per-minute limit (None: off)."""
        return self._rpm

    @property
    def tpm(self) -> Optional[int]:
        """The tokens-per-minute limit (None: off)."""
        return self._tpm

    @property
    def retry_budget(self) -> Optional[int]:
        """The retry budget's capacity (None: off)."""
        return self._retry_budget

    def __repr__(self) -> str:
        return (
            f"Limiter(max_in_flight={self._max_in_flight!r}, rpm={self._rpm!r}, "
            f"tpm={self._tpm!r}, retry_budget={self._retry_budget!r})"
        )

    # -- the clock-driven core (call with the lock held) -----------------------------

    def _refill(self, now: float) -> None:
        elapsed = now - self._tpm_last
        if elapsed > 0.0:
            level = self._tpm_level + elapsed * self._tpm_rate
            self._tpm_level = level if level < self._tpm_capacity else self._tpm_capacity
            self._tpm_last = now

    def _reserve(self, now: float, tokens: int) -> float:
        """Grant and record a start at ``now`` (return 0.0) or say how long to wait.

        The wait is the time until every clock-driven gate opens, or ``math.inf`` when
        the in-flight cap is reached (only a release can open it). The caller holds the
        lock; tests call it directly with a fake ``now``.
        """
        if self._max_in_flight is not None and self._in_flight >= self._max_in_flight:
            return math.inf
        delay = self._cool_until - now
        if delay <= 0.0 and self._probing and now < self._probe_until:
            delay = self._probe_until - now  # wait for the probe's outcome
        if self._interval is not None:
            gap = self._next_start - now
            if gap > delay:
                delay = gap
        if self._tpm is not None:
            self._refill(now)
            # An oversize request needs a full bucket, not more than the bucket can hold.
            need = tokens if tokens < self._tpm_capacity else self._tpm_capacity
            short = need - self._tpm_level
            if short > _TOKEN_EPSILON:
                gap = short / self._tpm_rate
                if gap > delay:
                    delay = gap
        if delay > 0.0:
            return delay
        self._in_flight += 1
        self._started += 1
        if self._probing:
            self._take_probe(now, _PROBING_START)
        if self._interval is not None:
            # Spaced from this start, not from the schedule: catching up after a late
            # wake-up would squeeze two starts closer than the interval.
            self._next_start = now + self._interval
        if self._tpm is not None:
            self._tpm_level -= tokens
        return 0.0

    def _take_probe(self, now: float, owner: Any) -> None:
        self._probe_until = now + PROBE_LEASE
        self._prober = owner

    def _grant(self, tokens: int, now: float, waited: float) -> Permit:
        """The Permit of a start ``_reserve`` just granted (lock held); a probing start owns the probe."""
        permit = Permit(self, tokens, now, waited)
        if self._prober is _PROBING_START:
            self._prober = permit
        return permit

    def _end_probing(self) -> None:
        """The rate limit is over: let every held start and retry go (lock held)."""
        self._probing = False
        self._probe_until = -math.inf
        self._prober = None
        self._gate_changed.notify_all()
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

    # -- acquire / release -----------------------------------------------------------

    def acquire(
        self,
        tokens: int = 0,
        *,
        timeout: Optional[float] = None,
        cancelled: Optional[threading.Event] = None,
    ) -> Permit:
        """Block until every gate allows a call to start; return its :class:`Permit`.

        :param tokens: the call's estimated tokens (prompt estimate + ``max_tokens``),
            reserved against ``tpm``.
        :param timeout: most seconds to wait (None: no limit; 0: do not wait).
        :param cancelled: an event that, once set, makes the wait give up (it is
            checked at least every :data:`CANCEL_POLL_INTERVAL` seconds, and at once
            after :meth:`wake_waiters`).
        :raises TimeoutError: the timeout passed first.
        :raises concurrent.futures.CancelledError: ``cancelled`` was set first (or on entry).
        """
        if tokens.__class__ is not int or tokens < 0:
            tokens = _check_count("tokens", tokens, 0)
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
        if cancelled is not None and cancelled.is_set():
            with self._lock:
                self._cancellations += 1
            raise CancelledError("limiter wait cancelled before it started")
        with self._lock:
            if not self._waiters:
                now = self._clock()
                if self._reserve(now, tokens) == 0.0:
                    return self._grant(tokens, now, 0.0)
        return self._acquire_slow(tokens, timeout, cancelled)

    def _acquire_slow(self, tokens: int, timeout: Optional[float], cancelled: Optional[threading.Event]) -> Permit:
        clock = self._clock
        lock = self._lock
        waiters = self._waiters
        begin = clock()
        deadline = None if timeout is None else begin + timeout
        waiter = threading.Event()
        outcome = "interrupted"
        with lock:
            waiters.append(waiter)
        try:
            while True:
                with lock:
                    # Cleared under the lock, so a set() that follows is never missed.
                    waiter.clear()
                    if waiters[0] is waiter:
                        now = clock()
                        delay = self._reserve(now, tokens)
                        if delay == 0.0:
                            waiters.popleft()
                            if waiters:
                                waiters[0].set()
                            waited = now - begin
                            self._throttled += 1
                            self._wait_seconds += waited
                            outcome = "granted"
                            return self._grant(tokens, now, waited)
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

    def release(
        self,
        permit: Permit,
        *,
        tokens_used: Optional[int] = None,
        retries: int = 0,
        ok: bool = True,
    ) -> None:
        """Hand back a permit when its call has ended.

        :param tokens_used: the real total tokens; corrects the ``tpm`` reservation
            (None: keep the estimate; pass 0 for a call that failed without using any).
        :param retries: how many retries the call made. A call that succeeded after
            retries is refunded what they cost: exactly, if they were paid with
            ``spend_retry(kind, permit=permit)``, else ``retries * RETRY_COST``.
        :param ok: whether the call succeeded; a failed call earns nothing back.
        :raises RuntimeError: the permit was already released.
        :raises ValueError: the permit came from another limiter.
        """
        if permit._limiter is not self:
            raise ValueError("this permit was granted by another Limiter")
        if tokens_used is not None and (tokens_used.__class__ is not int or tokens_used < 0):
            tokens_used = _check_count("tokens_used", tokens_used, 0)
        if retries.__class__ is not int or retries < 0:
            retries = _check_count("retries", retries, 0)
        with self._lock:
            if permit._released:
                raise RuntimeError("permit already released")
            permit._released = True
            self._in_flight -= 1
            self._finished += 1
            wake = self._max_in_flight is not None
            if tokens_used is not None:
                self._tokens_used += tokens_used
                if self._tpm is not None:
                    self._refill(self._clock())
                    refund = permit.tokens - tokens_used
                    level = self._tpm_level + refund
                    self._tpm_level = level if level < self._tpm_capacity else self._tpm_capacity
                    if refund > 0:
                        wake = True
            if ok and self._retry_budget is not None:
                if permit.retry_cost:
                    earned = permit.retry_cost
                elif retries:
                    earned = retries * RETRY_COST
                else:
                    earned = NO_RETRY_INCREMENT
                left = self._budget_left + earned
                self._budget_left = left if left < self._retry_budget else self._retry_budget
            if self._probing:
                if ok and permit._epoch == self._cool_epoch:
                    self._end_probing()
                elif self._prober is permit or self._prober == threading.get_ident():
                    # The probe failed for another reason: the next call may probe.
                    self._probe_until = -math.inf
                    self._prober = None
                    self._gate_changed.notify_all()
                    wake = True
            if wake and self._waiters:
                self._waiters[0].set()

    # -- cool-down and retry budget --------------------------------------------------

    def cool_down(self, seconds: float) -> None:
        """Hold every new start back for ``seconds`` (keeping any longer cool-down).

        Call it when a call sees a 429, with the Retry-After value or the backoff delay;
        calls already running are not touched. The caller caps server-directed values.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (0 <= seconds < math.inf):
            raise ValueError(f"cool-down seconds must be a finite number >= 0, got {seconds!r}")
        with self._lock:
            now = self._clock()
            until = now + seconds
            self._cool_downs += 1
            starting = self._cool_until <= now
            if until > self._cool_until:
                self._cool_until = until
            else:
                starting = False
            self._probing = True
            self._cool_epoch += 1
            self._probe_until = -math.inf
            self._prober = None
            # Waiters need no wake-up: a cool-down only ever pushes their start later,
            # and the head re-checks when its current wait ends.
        if starting and seconds > 0:
            log.info("rate limited: holding new calls back for %.2f s", seconds)

    def wait_before_retry(
        self,
        delay: float,
        *,
        cancelled: Optional[threading.Event] = None,
        timeout: Optional[float] = None,
        permit: Optional[Permit] = None,
    ) -> None:
        """Sleep ``delay`` seconds before a retry, and longer while the pool cools down.

        After a cool-down only one call probes at a time, so a retry waits for the
        probe's outcome too; if none is out, this retry becomes the probe.

        :param timeout: most seconds to wait in all (a call's deadline); a wait that
            would pass it raises at once rather than sleeping first.
        :param permit: the call's permit: if the call started as the probe, this retry
            means the probe failed, and the call probes again rather than waiting for itself.
        :raises concurrent.futures.CancelledError: ``cancelled`` was set while waiting.
        :raises TimeoutError: the wait would pass ``timeout``.
        """
        clock = self._clock
        begin = clock()
        end = begin + delay
        limit = math.inf if timeout is None else begin + timeout
        me = threading.get_ident()
        with self._gate_changed:
            if self._prober == me or (permit is not None and self._prober is permit):
                self._probe_until = -math.inf  # this call's own probe failed: probe again
                self._prober = None
            while True:
                if cancelled is not None and cancelled.is_set():
                    self._cancellations += 1
                    raise CancelledError("retry wait cancelled")
                now = clock()
                if max(end, self._cool_until) > limit or now >= limit:
                    self._timeouts += 1
                    raise TimeoutError(f"the retry could not start within {timeout} s ({self!r})")
                wait = max(end - now, self._cool_until - now)
                if wait <= 0.0:
                    if not self._probing:
                        return
                    if now >= self._probe_until:
                        self._take_probe(now, me)
                        return
                    wait = self._probe_until - now
                if cancelled is not None and wait > CANCEL_POLL_INTERVAL:
                    wait = CANCEL_POLL_INTERVAL
                if wait > limit - now:
                    wait = limit - now
                self._gate_changed.wait(wait)

    @property
    def epoch(self) -> int:
        """Cool-downs so far; read it when an attempt starts and give it to :meth:`note_success`."""
        return self._cool_epoch

    def note_success(self, epoch: Optional[int] = None) -> None:
        """An attempt got an answer that is not an error: a cool-down's probe has succeeded.

        :param epoch: :attr:`epoch` when the attempt started. An attempt that started
            before the latest cool-down says nothing about whether it is over, so its
            success does not end the probing phase (None: the attempt is recent).
        """
        if not self._probing:  # unlocked read: the common case costs nothing
            return
        with self._lock:
            if self._probing and (epoch is None or epoch == self._cool_epoch):
                self._end_probing()

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
            if self._retry_budget is None:
                self._retries += 1
                return 0
            left = self._budget_left
            if left >= cost:
                self._budget_left = left - cost
                self._retries += 1
                self._budget_exhausted = False
                if permit is not None:
                    permit.retry_cost += cost
                return cost
            self._retries_refused += 1
            first = not self._budget_exhausted
            self._budget_exhausted = True
            capacity = self._retry_budget
        message = (
            f"the API keeps failing: retry budget of {capacity} exhausted ({left} left, a {kind} "
            f"retry costs {cost}); calls now fail fast until calls succeed again"
        )
        if first:
            log.warning("%s", message)
        raise RetryBudgetExceeded(message)

    # -- observing -------------------------------------------------------------------

    def wake_waiters(self) -> None:
        """Wake every thread waiting in :meth:`acquire` to re-check its ``cancelled``
        event and timeout now (call it right after setting a ``cancelled`` event)."""
        with self._lock:
            for waiter in self._waiters:
                waiter.set()
            self._gate_changed.notify_all()

    @property
    def stats(self) -> LimiterStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            now = self._clock()
            return LimiterStats(
                in_flight=self._in_flight,
                started=self._started,
                finished=self._finished,
                waiting=len(self._waiters),
                throttled=self._throttled,
                wait_seconds=self._wait_seconds,
                timeouts=self._timeouts,
                cancellations=self._cancellations,
                cool_downs=self._cool_downs,
                cooling_for=max(0.0, self._cool_until - now),
                retries=self._retries,
                retries_refused=self._retries_refused,
                retry_budget=None if self._retry_budget is None else self._budget_left,
                tokens_used=self._tokens_used,
            )
