"""Where a :class:`~deepseek_pool.Limiter`'s budget lives: this process, this machine, or further.

A storage keeps the state of each named budget and applies the limiter's operations to
it atomically: :class:`Storage` lists them (start, finish, rate_limited, spend_retry,
retry_hold, pace, renew, snapshot). Most storages need only two methods: a
:class:`TransactionalStorage` gives :meth:`~TransactionalStorage.transaction` (the state
of one budget, held against every other sharer, saved when the block ends) and
:meth:`~Storage.clock` (the clock every sharer agrees on), and the rules of
:mod:`deepseek_pool.budget.rules` do the rest. Two flags tell the limiter how to behave:
:attr:`~Storage.shared` (other processes change the state: a waiting limiter polls, as no
release of theirs can wake it) and :attr:`~Storage.leases_expire` (leases must be
renewed; a storage that dies with its process needs no expiry).

What follows a sent call (its release, a 429's cool-down, the wait before a retry, a
renewal) must never fail that call: a storage that cannot do it (a locked database, an
unreachable Redis) logs it, counts it in :attr:`~Storage.storage_errors` and carries on,
and the call keeps its own outcome. Only admission may fail a call, which then was not sent.

Storages are chosen by URI (:mod:`deepseek_pool.budget.storage_uri`); this module knows
none but its own :class:`MemoryStorage`, so every storage imports it and it imports none.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, Optional, Tuple

from ..forks import ProcessBound, reset_after_fork
from . import rules as budget
from .rules import BudgetConfig, BudgetState, Lease, RateLimitSignal
from .shares import SHARE_MARK, lease_share

__all__ = [
    "BudgetSnapshot",
    "MemoryStorage",
    "Storage",
    "TimedLease",
    "TransactionalStorage",
]

log = logging.getLogger(__name__)
_ERRORS_LOCK = threading.Lock()


#: Unsettled counts (see MemoryStorage) after which a call settles them, if the lock is free.
SETTLE_EVERY = 256
_ONE_START = (1, 0, 0, 0, None)


@dataclass
class TimedLease(Lease):
    """A lease that also knows when its call will have ended (None: unknown).

    A call cannot outlive its deadline, so neither can DeepSeek's work on it: a process
    that dies holding the lease gives the slot back then (see
    :class:`~deepseek_pool.budget.sqlite_storage.SQLiteStorage`), not before.
    """

    deadline: Optional[float] = None


@dataclass(frozen=True)
class BudgetSnapshot:
    """A budget's shared figures at one moment (what :attr:`Limiter.stats` shows of it)."""

    in_flight: int
    cap: float
    cooling_for: float
    budget_left: int
    started: int
    finished: int
    cool_downs: int
    retries: int
    retries_refused: int
    tokens_used: int


class Storage(ProcessBound):
    """The operations a limiter asks of its storage; each is atomic across every sharer.

    ``config`` is the asking limiter's :class:`~deepseek_pool.budget.rules.BudgetConfig`; the
    rules are those of :mod:`deepseek_pool.budget.rules`. :class:`TransactionalStorage`
    implements all of them over one method, :meth:`~TransactionalStorage.transaction`;
    a storage with a scripting engine (Redis and Lua) may implement them natively.
    """

    #: other processes may change the state: waiters poll it
    shared = False
    #: leases expire unless renewed (a process that dies gives its slots back)
    leases_expire = False
    #: storage errors absorbed after a call was sent (logged; the call kept its outcome)
    storage_errors = 0

    def _absorbed(self, operation: str, err: BaseException) -> None:
        """Log and count a failure of ``operation`` that must not replace a call's outcome."""
        with _ERRORS_LOCK:
            self.storage_errors += 1
        log.warning("%r could not %s (%s): the call keeps its outcome; its lease expires", self, operation, err)

    def clock(self) -> float:
        """Seconds on the clock every sharer of this storage agrees on."""
        raise NotImplementedError

    def start(
        self,
        name: str,
        config: BudgetConfig,
        tokens: int,
        lease: str,
        lease_seconds: float,
        ends_within: Optional[float] = None,
    ) -> float:
        """Admit a start under lease id ``lease`` (0.0) or say how long to wait (inf: for a release).

        ``ends_within``: seconds from now by which the call will have ended (its deadline),
        when known; a storage whose leases outlive their process keeps the slot until then.
        """
        raise NotImplementedError

    def finish(
        self,
        name: str,
        config: BudgetConfig,
        lease: str,
        *,
        reserved: int,
        tokens_used: Optional[int],
        earned: int,
        ok: bool,
    ) -> None:
        """A call ended: free its lease, settle its tokens, let a success raise the cap."""
        raise NotImplementedError

    def rate_limited(self, name: str, config: BudgetConfig, seconds: float, signal: RateLimitSignal) -> float:
        """A 429: lower the cap if it says so, cool down; return the cap after."""
        raise NotImplementedError

    def spend_retry(self, name: str, config: BudgetConfig, cost: int) -> Tuple[Optional[int], int]:
        """Pay for a retry: (what it cost or None when refused, what is left)."""
        raise NotImplementedError

    def retry_hold(self, name: str) -> float:
        """Seconds retries must still wait (a cool-down about concurrency), <= 0 when none."""
        raise NotImplementedError

    def pace(self, name: str, config: BudgetConfig) -> float:
        """A retry goes out now: take its place in the ``rpm`` spacing (0.0) or say how long to wait."""
        raise NotImplementedError

    def renew(self, name: str, leases: Iterable[str], lease_seconds: float) -> None:
        """Push the expiry of these leases ``lease_seconds`` ahead."""
        raise NotImplementedError

    def snapshot(self, name: str, config: BudgetConfig) -> BudgetSnapshot:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and files (the state stays, for the other sharers)."""

    def after_fork(self) -> None:
        """In a forked child: drop what the parent's connections and threads held."""

    def _after_fork(self) -> None:
        self.after_fork()  # once per process (see deepseek_pool.forks), at the first use or the fork hook


class TransactionalStorage(Storage):
    """A storage that runs :mod:`deepseek_pool.budget.rules`'s rules on a state it loads and saves.

    Subclasses give :meth:`transaction` (the state of one budget, held exclusively until
    the block ends, then saved) and :meth:`clock`; everything else follows.
    """

    def transaction(self, name: str) -> contextlib.AbstractContextManager[BudgetState]:
        raise NotImplementedError

    def start(
        self,
        name: str,
        config: BudgetConfig,
        tokens: int,
        lease: str,
        lease_seconds: float,
        ends_within: Optional[float] = None,
    ) -> float:
        with self.transaction(name) as state:
            now = self.clock()
            expires = now + lease_seconds if self.leases_expire else math.inf
            deadline = None if ends_within is None else now + ends_within
            return budget.try_start(state, config, now, tokens, TimedLease(lease, expires, os.getpid(), deadline))

    def finish(
        self,
        name: str,
        config: BudgetConfig,
        lease: str,
        *,
        reserved: int,
        tokens_used: Optional[int],
        earned: int,
        ok: bool,
    ) -> None:
        with self.transaction(name) as state:
            budget.finish(
                state, config, self.clock(), lease, reserved=reserved, tokens_used=tokens_used, earned=earned, ok=ok
            )

    def rate_limited(self, name: str, config: BudgetConfig, seconds: float, signal: RateLimitSignal) -> float:
        with self.transaction(name) as state:
            budget.rate_limited(state, config, self.clock(), seconds, signal)
            return state.cap

    def spend_retry(self, name: str, config: BudgetConfig, cost: int) -> Tuple[Optional[int], int]:
        with self.transaction(name) as state:
            paid = budget.spend_retry(state, config, self.clock(), cost)
            return paid, int(state.budget_left)

    def retry_hold(self, name: str) -> float:
        with self.transaction(name) as state:
            return float(state.retry_hold_until - self.clock())

    def pace(self, name: str, config: BudgetConfig) -> float:
        with self.transaction(name) as state:
            return budget.pace(state, config, self.clock())

    def renew(self, name: str, leases: Iterable[str], lease_seconds: float) -> None:
        with self.transaction(name) as state:
            state.renew(list(leases), self.clock() + lease_seconds)

    def snapshot(self, name: str, config: BudgetConfig) -> BudgetSnapshot:
        with self.transaction(name) as state:
            now = self.clock()
            budget.fill(state, config, now)
            return BudgetSnapshot(
                in_flight=state.alive(now),
                cap=state.cap,
                cooling_for=max(0.0, state.cool_until - now),
                budget_left=int(state.budget_left),
                started=state.started,
                finished=state.finished,
                cool_downs=state.cool_downs,
                retries=state.retries,
                retries_refused=state.retries_refused,
                tokens_used=state.tokens_used,
            )


class _MemoryState(BudgetState):
    """A budget held in this process; its leases never expire (they die with the process)."""

    def __init__(self) -> None:
        super().__init__()
        self.leases: Dict[str, Lease] = {}
        #: counts of ungated starts and finishes not yet added to the scalars, each
        #: ``(started, finished, tokens_used, earned, retry_budget)``; see MemoryStorage.
        self.unsettled: Deque[Tuple[int, int, int, int, Optional[int]]] = deque()
        #: leases per share, for the shares' rule (only gated starts have a share)
        self.shares: Dict[str, int] = {}

    def settle(self) -> None:
        """Add the ungated starts' and finishes' counts to the scalars (the caller holds the lock)."""
        pop = self.unsettled.popleft
        while self.unsettled:
            started, finished, tokens_used, earned, retry_budget = pop()
            self.started += started
            self.finished += finished
            self.tokens_used += tokens_used
            if earned and retry_budget is not None:
                self.budget_left = min(retry_budget, self.budget_left + earned)

    def alive(self, now: float) -> int:
        return len(self.leases)

    def by_share(self, now: float) -> Dict[str, int]:
        if not self.leases:
            self.shares.clear()
        return self.shares

    def add(self, lease: Lease) -> None:
        self.leases[lease.id] = lease
        if SHARE_MARK in lease.id:
            share = lease_share(lease.id)
            self.shares[share] = self.shares.get(share, 0) + 1

    def drop(self, lease_id: str) -> bool:
        gone = self.leases.pop(lease_id, None) is not None
        if gone and SHARE_MARK in lease_id:
            share = lease_share(lease_id)
            self.shares[share] = self.shares.get(share, 1) - 1
        return gone

    def renew(self, lease_ids: Any, expires: float) -> None:
        pass


class MemoryStorage(TransactionalStorage):
    """Budgets in this process's memory, behind one lock: the fast default.

    ``storage="memory://"`` gives each limiter a storage of its own; to share one budget
    between limiters of a process, share the Limiter (or pass one MemoryStorage to each).

    A start or finish that no gate can refuse or learn from (:func:`~deepseek_pool.budget.rules.ungated`: no
    cap, rpm, tpm or cool-down, the common case) takes no lock: its lease is one dict
    operation and its counts go on a deque (both atomic in CPython), added to the budget
    by the next locked operation. A lock every worker takes for every call makes them all
    queue behind one the interpreter switched out while holding it; with thousands of
    runnable threads that convoy costs several times the call itself.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._states: Dict[str, _MemoryState] = {}
        reset_after_fork(self)

    def clock(self) -> float:
        return self._clock()

    def _state(self, name: str) -> _MemoryState:
        """The state of ``name``, made on first use (the caller holds the lock)."""
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = _MemoryState()
        return state

    def _known_state(self, name: str) -> _MemoryState:
        """The state of ``name``, read without the lock once it exists (states are never removed)."""
        state = self._states.get(name)
        if state is None:
            with self._lock:
                state = self._state(name)
        return state

    @contextlib.contextmanager
    def transaction(self, name: str) -> Iterator[BudgetState]:
        self._check_process()
        with self._lock:
            state = self._state(name)
            state.settle()
            yield state

    def _settle_some(self, state: _MemoryState) -> None:
        """Keep the deque of unsettled counts short, but never wait for the lock."""
        if len(state.unsettled) >= SETTLE_EVERY and self._lock.acquire(blocking=False):
            try:
                state.settle()
            finally:
                self._lock.release()

    # start and finish run once per call: the same rules as TransactionalStorage's, with
    # the lock-free path above and without the context manager.

    def start(
        self,
        name: str,
        config: BudgetConfig,
        tokens: int,
        lease: str,
        lease_seconds: float,
        ends_within: Optional[float] = None,
    ) -> float:
        self._check_process()  # the parent's leases are not this process's
        held = Lease(lease, math.inf, self._pid)
        state = self._known_state(name)
        if budget.ungated(state, config, self._clock()):
            state.leases[lease] = held
            state.unsettled.append(_ONE_START)
            self._settle_some(state)
            return 0.0
        with self._lock:
            state.settle()
            return budget.try_start(state, config, self._clock(), tokens, held)

    def finish(
        self,
        name: str,
        config: BudgetConfig,
        lease: str,
        *,
        reserved: int,
        tokens_used: Optional[int],
        earned: int,
        ok: bool,
    ) -> None:
        state = self._known_state(name)
        if budget.ungated(state, config, self._clock()):
            state.leases.pop(lease, None)
            paid_back = earned if ok and config.retry_budget is not None else 0
            state.unsettled.append((0, 1, tokens_used or 0, paid_back, config.retry_budget))
            self._settle_some(state)
            return
        with self._lock:
            state.settle()
            budget.finish(
                state,
                config,
                self._clock(),
                lease,
                reserved=reserved,
                tokens_used=tokens_used,
                earned=earned,
                ok=ok,
            )

    def after_fork(self) -> None:
        # The parent's calls do not run in the child: their slots are not the child's.
        self._lock = threading.Lock()
        self._pid = os.getpid()
        for state in self._states.values():
            state.leases.clear()
            state.shares.clear()

    def __repr__(self) -> str:
        return "MemoryStorage()"
