"""Shared rate-limit gates: one :class:`Limiter` that any number of threads, pools and processes consult.

A worker asks :meth:`Limiter.acquire` for permission to *start* a call and hands the
returned :class:`Permit` back to :meth:`Limiter.release` when the call has ended.
A start is granted only when every gate of the budget allows it
(:mod:`deepseek_pool.budget.rules` has the rules):

* ``max_in_flight`` -- the ceiling of an adaptive cap on calls between acquire and
  release: a 429 lowers the cap (to the number DeepSeek names, else by a factor when it
  speaks of concurrency), successes raise it back (AIMD) while at least half of it is in
  use; ``stats.cap`` shows it. A 429 that names a cap applies even without a ceiling;
* ``rpm`` -- requests spaced at least ``60 / rpm`` seconds apart, retries included
  (:meth:`wait_before_retry` spaces them), so no one-second window ever sees more than
  ``ceil(rpm / 60)`` and no burst can draw a 429;
* ``tpm`` -- a token bucket that holds one minute of tokens (``tpm``) and refills
  continuously at ``tpm / 60`` per second. A start takes its estimate out; release
  gives back what was over-estimated (never above ``tpm``) or charges what was
  under-estimated (the bucket may go negative, which delays later starts). A request
  bigger than ``tpm`` starts when the bucket is full;
* a cool-down -- :meth:`Limiter.cool_down`, called after a 429, holds new starts back,
  and retries that go through :meth:`Limiter.wait_before_retry` too when the 429 was
  about concurrency or carried Retry-After; a 429 that says nothing about it, and no
  Retry-After, holds new starts only briefly. Each waiter ends a cool-down with a
  random jitter of its own, so the starts it held spread out.

Separately, a retry budget in the spirit of the AWS SDKs' retry quota makes a failing
API cost about ``budget / RETRY_COST`` retries in all rather than workers x retries:
:meth:`Limiter.spend_retry` pays for each retry and raises
:class:`~deepseek_pool.errors.RetryBudgetExceeded` when the budget cannot pay; a call
that succeeds earns :data:`NO_RETRY_INCREMENT` back, or what its retries cost.

The budget lives in a storage chosen by URI (:mod:`deepseek_pool.budget.storage`):
``memory://`` (this limiter alone, the default), ``sqlite:////path.db`` (every process
of the machine that names the same file and ``name``). There an in-flight slot is a
lease that the limiter renews while its call runs; a process that dies gives its slots
back within ``lease_seconds`` (for sqlite, at each call's deadline, ``acquire(ends_within=)``).

Waiting threads of one limiter form a FIFO queue: only the head one watches the clock
(and, for a shared storage, polls it), so a start wakes one thread rather than all
(the queue is the base class :class:`~deepseek_pool.budget.waiting.WaitingRoom`).

This module holds admission (acquire, release) and the lease renewer; what
follows a failure (cool-down, the wait before a retry, the retry budget) is the base class
:class:`~deepseek_pool.budget.retries.RetryGates`, and the :class:`Permit` and
:class:`LimiterStats` it hands out live in :mod:`deepseek_pool.budget.permit`.

Example::

    limiter = Limiter(max_in_flight=32, rpm=600, tpm=1_000_000, storage="sqlite:////var/tmp/ds.db")
    with limiter.acquire(tokens=estimate) as permit:
        completion = client.chat(messages, max_tokens=1000)
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from concurrent.futures import CancelledError
from typing import Any, Callable, Deque, Dict, Mapping, Optional, Set, Union

from ..forks import ProcessBound, reset_after_fork
from .peers import peers_of
from .permit import LimiterStats, Permit
from .retries import (
    DEFAULT_RETRY_BUDGET,
    NO_RETRY_INCREMENT,
    RETRY_COST,
    JitterFunction,
    RetryGates,
    WaitFunction,
    cool_down_jitter,
)
from .rules import BudgetConfig
from .shares import SHARE_MARK, check_share, parse_shares
from .storage import Storage
from .storage_uri import storage_from_uri
from .waiting import WaitingRoom

__all__ = ["Limiter", "LimiterStats", "Permit"]

log = logging.getLogger(__name__)

#: Seconds an in-flight lease lasts unless renewed; renewed every third of it.
DEFAULT_LEASE_SECONDS = 30.0
#: Held while a limiter makes the limiter of one of its shares.
_FAMILY_LOCK = threading.Lock()


def _check_count(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int if it is an int >= ``minimum``, else raise naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


class Limiter(WaitingRoom, RetryGates, ProcessBound):
    """Gates that decide when a call may start; share one across threads, pools, processes.

    :param max_in_flight: the ceiling of the adaptive in-flight cap (None: no ceiling).
    :param rpm: most starts per minute, evenly spaced (None: no limit).
    :param tpm: most tokens per minute, as a token bucket (None: no limit).
    :param retry_budget: capacity of the retry budget (None: retries are never refused).
    :param storage: where the budget lives: ``"memory://"`` (this limiter alone),
        ``"sqlite:////abs/path.db"`` (processes on one machine), a registered scheme
        such as ``"redis://..."``, or a :class:`~deepseek_pool.budget.storage.Storage`.
    :param name: the budget's name in the storage; limiters with the same storage and
        name share one budget (give them the same limits).
    :param lease_seconds: how long an in-flight slot outlives a process that died
        holding it (storages whose leases expire; renewed while the call runs).
    :param clock: monotonic seconds for this limiter's own waits (and the budget's, in
        memory); tests inject a fake one.
    :param wait: ``wait(event, timeout)`` blocks until the event is set or the timeout
        (None: forever) passes, like :meth:`threading.Event.wait`; tests inject one that
        advances a fake clock instead of sleeping.
    :param jitter: ``jitter(seconds)`` -> the random seconds added to the end of a
        ``seconds``-long cool-down or Retry-After wait (default
        :func:`~deepseek_pool.budget.retries.cool_down_jitter`); tests inject ``lambda s: 0.0``.

    :param shares: guaranteed shares of the cap, ``{name: slots}`` (an int) or ``{name:
        fraction}`` of the cap (a float from 0 to 1), for example ``{"interactive": 4,
        "batch": 0}``: a share's guaranteed slots are never taken by calls of another,
        and what no guarantee holds is everyone's (:mod:`~deepseek_pool.budget.shares` has
        the rule, and how a guarantee follows the adaptive cap). Needs ``max_in_flight``.
    :param share: the share this limiter's calls take (None: none, so only the slots no
        share is guaranteed); :meth:`for_share` gives the limiter of another share.

    Limiters of one process on one storage object and name wake each other's waiters.
    They must agree on ``max_in_flight`` and ``shares``: both are stored with the
    budget, and a limiter that sets others is refused with a
    :class:`~deepseek_pool.errors.ConfigurationError` while calls run under the first
    (new ones take over once none does).
    """

    def __init__(
        self,
        max_in_flight: Optional[int] = None,
        rpm: Optional[float] = None,
        tpm: Optional[int] = None,
        *,
        retry_budget: Optional[int] = DEFAULT_RETRY_BUDGET,
        storage: Union[str, Storage] = "memory://",
        name: str = "default",
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wait: WaitFunction = threading.Event.wait,
        jitter: JitterFunction = cool_down_jitter,
        shares: Optional[Mapping[str, float]] = None,
        share: Optional[str] = None,
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
        if not callable(jitter):
            raise TypeError(f"jitter must be callable, got {jitter!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)) or not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be a positive number of seconds, got {lease_seconds!r}")
        parsed = () if shares is None else parse_shares(shares, max_in_flight)
        self._config = BudgetConfig(max_in_flight, rpm, tpm, retry_budget, parsed)
        self._shares = None if shares is None else dict(shares)
        check_share(self._config.shares, share)  # before the storage is opened
        self.share = share
        self._lease_suffix = "" if share is None else SHARE_MARK + share
        #: this limiter and those :meth:`for_share` made of it, by share: one budget's members
        self._family: Dict[Optional[str], Limiter] = {share: self}
        self._owns_storage = not isinstance(storage, Storage)
        self.storage = storage_from_uri(storage, clock=clock)
        self.name = name
        self.lease_seconds = float(lease_seconds)
        self._clock = clock
        self._wait = wait
        self._jitter = jitter
        self._peers = peers_of(self.storage, name)
        self._peers.join(self)
        self._reset_local()
        reset_after_fork(self)

    def _reset_local(self) -> None:
        """This process's own part: the waiting queue, held leases, local counters."""
        self._lock = threading.Lock()
        # Head of the queue is the only waiter that watches the clock.
        self._waiters: Deque[threading.Event] = deque()
        self._cool_end = -math.inf  # the end of the latest cool-down a waiter of this limiter met
        self._retry_waiters: Set[threading.Event] = set()
        self._held: Set[str] = set()
        self._lease_ids = itertools.count(1)
        self._pid = os.getpid()
        # Lease ids are unique across limiters, processes and machines that share a budget.
        self._lease_prefix = f"{self._pid}-{os.urandom(6).hex()}"
        self._renewer: Optional[threading.Thread] = None
        self._closed = threading.Event()
        self._budget_exhausted = False
        self._throttled = 0
        self._wait_seconds = 0.0
        self._timeouts = 0
        self._cancellations = 0

    # -- configuration ---------------------------------------------------------------

    @property
    def max_in_flight(self) -> Optional[int]:
        """The ceiling of the in-flight cap (None: off)."""
        return self._config.max_in_flight

    @property
    def rpm(self) -> Optional[float]:
        """The requests-per-minute limit (None: off)."""
        return self._config.rpm

    @property
    def tpm(self) -> Optional[int]:
        """The tokens-per-minute limit (None: off)."""
        return self._config.tpm

    @property
    def retry_budget(self) -> Optional[int]:
        """The retry budget's capacity (None: off)."""
        return self._config.retry_budget

    @property
    def shares(self) -> Optional[Dict[str, float]]:
        """The guaranteed shares as given, ``{name: slots or fraction}`` (None: none)."""
        return None if self._shares is None else dict(self._shares)

    def for_share(self, share: Optional[str]) -> Limiter:
        """The limiter of this budget whose calls take ``share`` (None: no share).

        It is made once per share and kept: the same limits, storage and name (so the same
        budget), its own queue of waiters, so a share's calls never wait behind another's.
        Give it to a pool or a client (``DeepSeekPool(share=...)`` and
        ``DeepSeekClient(share=...)`` do so); it is closed with this limiter.

        :raises ConfigurationError: ``share`` is not one of :attr:`shares`.
        """
        family = self._family
        member = family.get(share)
        if member is None:
            check_share(self._config.shares, share)
            with _FAMILY_LOCK:
                member = family.get(share)
                if member is None:
                    member = Limiter(
                        self.max_in_flight,
                        self.rpm,
                        self.tpm,
                        retry_budget=self.retry_budget,
                        storage=self.storage,
                        name=self.name,
                        lease_seconds=self.lease_seconds,
                        clock=self._clock,
                        wait=self._wait,
                        jitter=self._jitter,
                        shares=self.shares,
                        share=share,
                    )
                    member._owns_storage = self._owns_storage
                    member._family = family
                    family[share] = member
        return member

    def __repr__(self) -> str:
        config = self._config
        text = (
            f"Limiter(max_in_flight={config.max_in_flight!r}, rpm={config.rpm!r}, "
            f"tpm={config.tpm!r}, retry_budget={config.retry_budget!r}"
        )
        if config.shares:
            text += f", shares={self.shares!r}, share={self.share!r}"
        if not self._owns_storage or self.storage.shared:
            text += f", storage={self.storage!r}, name={self.name!r}"
        return text + ")"

    # -- acquire / release -----------------------------------------------------------

    def _try_start(self, tokens: int, ends_by: Optional[float] = None) -> Union[Permit, float]:
        """One attempt at a start: a Permit, or seconds to wait.

        It takes no lock of the limiter's: the storage's own lock makes the decision
        atomic, and the limiter's lock held around it would make every worker thread
        queue behind one that the interpreter switched out mid-decision (a convoy that
        grows with the number of threads). Leases that must be renewed are recorded by
        :meth:`_hold`.
        """
        lease_id = f"{self._lease_prefix}:{next(self._lease_ids)}{self._lease_suffix}"
        ends_within = None if ends_by is None else max(0.0, ends_by - self._clock())
        delay = self.storage.start(self.name, self._config, tokens, lease_id, self.lease_seconds, ends_within)
        if delay > 0.0:
            return delay
        return Permit(self, tokens, self._clock(), 0.0, lease_id)

    def _hold(self, permit: Permit) -> None:
        """Renew ``permit``'s lease while its call runs, if the storage's leases expire (caller holds the lock)."""
        self._held.add(permit.lease)
        if self._renewer is None:
            self._start_renewer()

    def acquire(
        self,
        tokens: int = 0,
        *,
        timeout: Optional[float] = None,
        cancelled: Optional[threading.Event] = None,
        ends_within: Optional[float] = None,
        share: Optional[str] = None,
    ) -> Permit:
        """Block until every gate allows a call to start; return its :class:`Permit`.

        :param tokens: the call's estimated tokens (prompt estimate + ``max_tokens``),
            reserved against ``tpm``.
        :param timeout: most seconds to wait (None: no limit; 0: do not wait).
        :param cancelled: an event that, once set, makes the wait give up (it is
            checked at least every :data:`CANCEL_POLL_INTERVAL` seconds, and at once
            after :meth:`wake_waiters`).
        :param ends_within: seconds from now by which the call will have ended (its
            deadline), if known: a process that dies holding the slot gives it back then,
            as DeepSeek may work on its request until then (sqlite; else at the lease's end).
        :param share: the share the call takes (None: this limiter's own); it waits in
            the queue of :meth:`for_share`'s limiter, whose permit it returns.
        :raises TimeoutError: the timeout passed first.
        :raises concurrent.futures.CancelledError: ``cancelled`` was set first (or on entry).
        :raises ConfigurationError: ``share`` is not one of :attr:`shares`.
        """
        if share is not None and share != self.share:
            return self.for_share(share).acquire(tokens, timeout=timeout, cancelled=cancelled, ends_within=ends_within)
        self._check_process()
        if tokens.__class__ is not int or tokens < 0:
            tokens = _check_count("tokens", tokens, 0)
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
        if cancelled is not None and cancelled.is_set():
            with self._lock:
                self._cancellations += 1
            raise CancelledError("limiter wait cancelled before it started")
        ends_by = None if ends_within is None else self._clock() + ends_within
        if not self._waiters:  # nobody queued before us: try at once
            granted = self._try_start(tokens, ends_by)
            if isinstance(granted, Permit):
                if self.storage.leases_expire:
                    with self._lock:
                        self._hold(granted)
                return granted
        return self._acquire_slow(tokens, timeout, cancelled, ends_by)

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
        :param ok: whether the call succeeded; a failed call earns nothing back, and a
            success lets the adaptive cap grow.
        :raises RuntimeError: the permit was already released.
        :raises ValueError: the permit came from another limiter.
        """
        if permit._limiter is not self:
            granter = permit._limiter
            if isinstance(granter, Limiter) and self._family.get(granter.share) is granter:
                granter.release(permit, tokens_used=tokens_used, retries=retries, ok=ok)
                return
            raise ValueError("this permit was granted by another Limiter")
        if tokens_used is not None and (tokens_used.__class__ is not int or tokens_used < 0):
            tokens_used = _check_count("tokens_used", tokens_used, 0)
        if retries.__class__ is not int or retries < 0:
            retries = _check_count("retries", retries, 0)
        if permit.retry_cost:
            earned = permit.retry_cost
        elif retries:
            earned = retries * RETRY_COST
        else:
            earned = NO_RETRY_INCREMENT
        try:
            permit._unreleased.pop()
        except IndexError:
            raise RuntimeError("permit already released") from None
        storage = self.storage
        if storage.leases_expire:
            with self._lock:
                self._held.discard(permit.lease)
        # No limiter lock around the storage (see _try_start). A waiter queues itself
        # before it tries a start, so one that queued after this check sees the slot.
        storage.finish(
            self.name,
            self._config,
            permit.lease,
            reserved=permit.tokens,
            tokens_used=tokens_used,
            earned=earned,
            ok=ok,
        )
        # A slot freed here is free for every limiter of this process on the budget.
        for ref in self._peers.members:
            peer = ref()
            if peer is not None and peer._waiters:
                peer._wake_head()

    # -- observing, renewing, closing ------------------------------------------------

    @property
    def stats(self) -> LimiterStats:
        """A consistent snapshot of the counters (the budget's from one transaction; this
        limiter's own summed with those :meth:`for_share` made of it or its maker)."""
        waiting = throttled = timeouts = cancellations = 0
        wait_seconds = 0.0
        for member in list(self._family.values()):
            with member._lock:
                waiting += len(member._waiters)
                throttled += member._throttled
                wait_seconds += member._wait_seconds
                timeouts += member._timeouts
                cancellations += member._cancellations
        with self._lock:
            shared = self.storage.snapshot(self.name, self._config)
            return LimiterStats(
                in_flight=shared.in_flight,
                started=shared.started,
                finished=shared.finished,
                waiting=waiting,
                throttled=throttled,
                wait_seconds=wait_seconds,
                timeouts=timeouts,
                cancellations=cancellations,
                cool_downs=shared.cool_downs,
                cooling_for=shared.cooling_for,
                retries=shared.retries,
                retries_refused=shared.retries_refused,
                retry_budget=None if self._config.retry_budget is None else shared.budget_left,
                tokens_used=shared.tokens_used,
                cap=None if shared.cap == math.inf else shared.cap,
                storage_errors=self.storage.storage_errors,
            )

    def _start_renewer(self) -> None:
        self._renewer = threading.Thread(
            target=_renew_leases, args=(weakref.ref(self), self._closed), name="deepseek-lease-renewer", daemon=True
        )
        self._renewer.start()

    def _renew(self) -> None:
        with self._lock:
            held = list(self._held)
        if held:
            self.storage.renew(self.name, held, self.lease_seconds)

    def close(self) -> None:
        """Stop renewing leases (this limiter's and its shares' limiters') and close the
        storage if this limiter opened it."""
        for member in list(self._family.values()):
            member._closed.set()
        if self._owns_storage:
            self.storage.close()

    def _after_fork(self) -> None:
        # The parent's calls, waiters and renewal thread stay in the parent.
        self._reset_local()
        self.storage._check_process()  # once per process, however many limiters share it


def _renew_leases(ref: weakref.ReferenceType[Limiter], closed: threading.Event) -> None:
    """Renew a limiter's leases every third of their life, until it is closed or gone."""
    while True:
        limiter = ref()
        if limiter is None:
            return
        interval = limiter.lease_seconds / 3
        try:
            limiter._renew()
        except Exception:  # a storage hiccup: the next round tries again, leases last 3 rounds
            log.warning("could not renew the limiter's leases", exc_info=True)
        del limiter
        if closed.wait(interval):
            return
