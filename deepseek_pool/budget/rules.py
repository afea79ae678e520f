"""The rules of one concurrency budget, as pure functions over its shared state.

A :class:`~deepseek_pool.Limiter` is these rules over a storage
(:mod:`deepseek_pool.budget.storage`): the storage holds a :class:`BudgetState` and runs each
rule inside one atomic transaction, so limiters in several threads, processes or
machines that share the storage and a name share one budget. Nothing here waits,
locks or reads a clock: ``now`` is passed in, which keeps every rule testable alone.

What the state holds:

* in-flight slots as *leases* (an id, an expiry, the owner's pid and, where the
  storage keeps it, the call's deadline): a process that dies gives its slots back
  when DeepSeek can no longer be working on its requests -- at each call's deadline,
  else when its leases expire -- never the moment it is seen gone;
* the adaptive cap (AIMD): a 429 lowers it -- to the number DeepSeek names in its
  message ("concurrency limit of 39"), else multiplicatively when the message speaks
  of concurrency -- and successes raise it additively back toward the ceiling
  (``max_in_flight``), but only while at least half of it is in use, as Netflix's
  AIMD limit does: a cap that nobody fills has learnt nothing about the account;
* the ceiling itself, stored with the budget: every sharer must configure the same
  ``max_in_flight`` (a different one is refused, naming both), and a new one takes
  over only once no call of the budget is in flight; the same holds for its guaranteed
  shares (:mod:`~deepseek_pool.budget.shares` has their rule, which :func:`try_start` applies);
* the start spacing (``rpm``), which retries take too (:func:`pace`), and the token
  bucket (``tpm``);
* the cool-down after a 429: new starts wait; retries too, when the 429 was about
  concurrency or carried ``Retry-After`` (a sporadic 429 without one holds new starts
  only briefly);
* the retry budget, and counters for the stats.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import ConfigurationError
from . import shares as share_rules
from .shares import Share

__all__ = [
    "BudgetConfig",
    "BudgetState",
    "CoolingDelay",
    "Lease",
    "RateLimitSignal",
    "budget_conflict",
    "ceiling_conflict",
    "rate_limit_signal",
]

#: A 429 that names the account's cap: "... concurrency limit of 39 based on your remaining balance".
_NAMED_CAP = re.compile(r"concurren\w*\s+limit\D{0,20}?(\d+)", re.IGNORECASE)
_CONCURRENCY = re.compile(r"concurren", re.IGNORECASE)

#: Multiplicative decrease after a 429 about concurrency that names no number.
DECREASE_FACTOR = 0.75
#: Seconds a cap that DeepSeek named is held before successes may raise it again.
NAMED_CAP_HOLD = 30.0
#: Successes needed to raise the cap by one: ``INCREASE_PATIENCE * cap`` (slower than
#: TCP's one per window, so a hard cap costs a 429 only every few windows).
INCREASE_PATIENCE = 4.0
#: Most seconds a 429 that says nothing about concurrency holds new starts back.
SPORADIC_COOL_DOWN = 0.01
#: Tokens are whole numbers, so a shortfall this small is float rounding in the refill.
_TOKEN_EPSILON = 1e-6


@dataclass(frozen=True)
class BudgetConfig:
    """The limits one limiter was configured with (the same for every sharer, ideally)."""

    max_in_flight: Optional[int] = None
    rpm: Optional[float] = None
    tpm: Optional[int] = None
    retry_budget: Optional[int] = None
    #: guaranteed shares of the cap (:mod:`~deepseek_pool.budget.shares`), sorted by name
    shares: Tuple[Share, ...] = ()
    #: ``max_in_flight`` as the cap's ceiling (inf: none); a field, not a property,
    #: because the rules read it inside the storage's lock on every call.
    ceiling: float = field(init=False, repr=False, compare=False)
    #: ``max_in_flight`` as the budget stores it (0: none); see :func:`try_start`.
    stored_ceiling: int = field(init=False, repr=False, compare=False)
    #: the shares as the budget stores them (:func:`~deepseek_pool.budget.shares.shares_key`; 0: none)
    shares_key: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ceiling", math.inf if self.max_in_flight is None else float(self.max_in_flight))
        object.__setattr__(self, "stored_ceiling", self.max_in_flight or 0)
        object.__setattr__(self, "shares_key", share_rules.shares_key(self.shares))


@dataclass(frozen=True)
class RateLimitSignal:
    """What a 429 says about the budget.

    :ivar named_cap: the account's cap, when the message names it.
    :ivar concurrency: the message speaks of concurrency (the cap is reached).
    :ivar sporadic: the message speaks of something else: a passing limit, not the cap.
    :ivar retry_after: the server said how long to wait (``Retry-After``): the whole budget
        waits that long, however sporadic the message.

    With neither flag (a 429 whose message was not read) the cool-down is a plain one.
    """

    named_cap: Optional[int] = None
    concurrency: bool = False
    sporadic: bool = False
    retry_after: bool = False


def rate_limit_signal(message: Optional[str]) -> RateLimitSignal:
    """Read a 429's message: ``"concurrency limit of 39"`` names the cap; "concurrency" alone is a hint."""
    if message:
        named = _NAMED_CAP.search(message)
        if named is not None and int(named.group(1)) > 0:
            return RateLimitSignal(int(named.group(1)), True)
        if _CONCURRENCY.search(message) is not None:
            return RateLimitSignal(None, True)
    return RateLimitSignal(None, False, True)


class CoolingDelay(float):
    """A wait that :func:`try_start` asks for because of a cool-down (not the ``rpm`` spacing
    or the token bucket): the limiter pushes its end back by a random jitter, so the
    starts it held do not all go out in one instant. Still a float for everyone else."""


@dataclass
class Lease:
    """One in-flight slot."""

    id: str
    expires: float
    pid: int


class BudgetState:
    """The shared numbers of one budget; storages load and save it around each rule.

    Leases are kept by the storage (:meth:`alive`, :meth:`add`, :meth:`drop`,
    :meth:`renew`), the rest in plain attributes that :meth:`scalars` and
    :meth:`load_scalars` turn into a dict and back.
    """

    SCALARS = (
        "max_in_flight",
        "shares_key",
        "cap",
        "cap_hold_until",
        "successes",
        "next_start",
        "tpm_level",
        "tpm_last",
        "cool_until",
        "retry_hold_until",
        "budget_left",
        "started",
        "finished",
        "cool_downs",
        "rate_limited",
        "retries",
        "retries_refused",
        "tokens_used",
    )

    def __init__(self) -> None:
        self.max_in_flight = -1  # the ceiling its sharers agreed on (0: none; -1: not yet set)
        self.shares_key = 0  # the shares they agreed on (0: none)
        self.cap = math.inf
        self.cap_hold_until = -math.inf
        self.successes = 0.0
        self.next_start = -math.inf
        self.tpm_level = math.nan  # nan: not yet filled (the first rule fills it)
        self.tpm_last = -math.inf
        self.cool_until = -math.inf
        self.retry_hold_until = -math.inf
        self.budget_left = -1  # -1: not yet filled
        self.started = 0
        self.finished = 0
        self.cool_downs = 0
        self.rate_limited = 0
        self.retries = 0
        self.retries_refused = 0
        self.tokens_used = 0

    # -- leases (storages override these five) --------------------------------------

    def alive(self, now: float) -> int:
        """How many leases have not expired at ``now`` (expired ones may be dropped)."""
        raise NotImplementedError

    def by_share(self, now: float) -> Mapping[str, int]:
        """Leases not expired at ``now`` per share name (:func:`~deepseek_pool.budget.shares.lease_share`
        of their ids; those of no share may be left out). Asked only after :meth:`alive`."""
        raise NotImplementedError

    def add(self, lease: Lease) -> None:
        raise NotImplementedError

    def drop(self, lease_id: str) -> bool:
        """Remove a lease; False when it was not there (it had expired and was dropped)."""
        raise NotImplementedError

    def renew(self, lease_ids: Any, expires: float) -> None:
        raise NotImplementedError

    # -- scalars ---------------------------------------------------------------------

    def scalars(self) -> Dict[str, Any]:
        return {name: _encode(getattr(self, name)) for name in self.SCALARS}

    def load_scalars(self, values: Dict[str, Any]) -> None:
        for name in self.SCALARS:
            if name in values:
                setattr(self, name, _decode(values[name]))


def _encode(value: Any) -> Any:
    """JSON has no infinities: store them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        return float(value)
    return value


# -- the rules (each runs inside one transaction) ------------------------------------


def fill(state: BudgetState, config: BudgetConfig, now: float) -> None:
    """First use of a budget, or a budget whose configured limits changed.

    try_start and finish call it only when it has something to do; their guard lists the
    three conditions below, so a new one must go there too.
    """
    if state.budget_left < 0:
        state.budget_left = config.retry_budget or 0
    if config.tpm is not None:
        if math.isnan(state.tpm_level):
            state.tpm_level = float(config.tpm)
            state.tpm_last = now
        elif now > state.tpm_last:
            rate = config.tpm / 60.0
            state.tpm_level = min(float(config.tpm), state.tpm_level + (now - state.tpm_last) * rate)
            state.tpm_last = now
    if state.cap > config.ceiling:
        state.cap = config.ceiling


def cap_of(state: BudgetState) -> float:
    """The in-flight limit now: the adaptive cap, at least one."""
    cap = state.cap
    return cap if cap == math.inf else max(1.0, math.floor(cap))


def ungated(state: BudgetState, config: BudgetConfig, now: float) -> bool:
    """Whether no gate can refuse a start now, nor learn from a finish.

    True without a cap (configured or learnt), rpm, tpm or cool-down, once the budget is
    filled. Then :func:`try_start` only records the lease and counts, and :func:`finish`
    only drops it and counts (tokens used, retry budget earned): a storage may do that
    much without its lock (:class:`~deepseek_pool.budget.storage.MemoryStorage` does).
    """
    return (
        state.cap == math.inf
        and config.max_in_flight is None
        and state.max_in_flight == 0
        and config.rpm is None
        and config.tpm is None
        and state.cool_until <= now
        and state.budget_left >= 0
    )


def try_start(state: BudgetState, config: BudgetConfig, now: float, tokens: int, lease: Lease) -> float:
    """Admit a start (record its lease, return 0.0) or say how long to wait (inf: until a release).

    This and :func:`finish` run once per call inside the storage's lock, so they make as
    few function calls as they can: a thread switched out inside a lock every worker
    needs makes them all queue behind it.
    """
    if state.budget_left < 0 or config.tpm is not None or state.cap > config.ceiling:  # else fill has nothing to do
        fill(state, config, now)
    if state.max_in_flight != config.stored_ceiling or state.shares_key != config.shares_key:
        # One ceiling and one set of shares per budget: a sharer configured otherwise is
        # refused, not obeyed in silence; new ones take over once nothing runs under the old.
        if state.max_in_flight >= 0 and state.alive(now) > 0:
            raise budget_conflict(config, state.max_in_flight)
        state.max_in_flight = config.stored_ceiling
        state.shares_key = config.shares_key
    cap = state.cap
    if cap != math.inf:
        in_flight = state.alive(now)
        limit = cap_of(state)
        if in_flight >= limit:
            return math.inf
        if config.shares and not share_rules.admits(
            config.shares, limit, in_flight, state.by_share(now), share_rules.lease_share(lease.id)
        ):
            return math.inf
    delay = state.cool_until - now
    cooling = True
    if config.rpm is not None:
        gap = state.next_start - now
        if gap > delay:
            delay = gap
            cooling = False
    if config.tpm is not None:
        # An oversize request needs a full bucket, not more than the bucket can hold.
        need = min(float(tokens), float(config.tpm))
        short = need - state.tpm_level
        if short > _TOKEN_EPSILON:
            gap = short / (config.tpm / 60.0)
            if gap > delay:
                delay = gap
                cooling = False
    if delay > 0.0:
        return CoolingDelay(delay) if cooling else delay
    state.add(lease)
    state.started += 1
    if config.rpm is not None:
        # Spaced from this start, not from the schedule: catching up after a late
        # wake-up would squeeze two starts closer than the interval.
        state.next_start = now + 60.0 / config.rpm
    if config.tpm is not None:
        state.tpm_level -= tokens
    return 0.0


def finish(
    state: BudgetState,
    config: BudgetConfig,
    now: float,
    lease_id: str,
    *,
    reserved: int,
    tokens_used: Optional[int],
    earned: int,
    ok: bool,
) -> None:
    """A call ended: give its slot back, correct its token reservation, learn from its success."""
    if state.budget_left < 0 or config.tpm is not None or state.cap > config.ceiling:  # else fill has nothing to do
        fill(state, config, now)
    ceiling = config.ceiling
    grow = ok and state.cap < ceiling and now >= state.cap_hold_until
    # In use as this call ends, itself included: the cap grows only while half of it is.
    in_use = state.alive(now) if grow else 0
    state.drop(lease_id)
    state.finished += 1
    if tokens_used is not None:
        state.tokens_used += tokens_used
        if config.tpm is not None:
            state.tpm_level = min(float(config.tpm), state.tpm_level + (reserved - tokens_used))
    if ok:
        if config.retry_budget is not None:
            left = state.budget_left + earned
            state.budget_left = left if left < config.retry_budget else config.retry_budget
        if grow and 2 * in_use >= cap_of(state):
            # Additive increase: one more slot per INCREASE_PATIENCE * cap successes.
            state.successes += 1
            if state.successes >= INCREASE_PATIENCE * state.cap:
                state.successes = 0
                state.cap = min(ceiling, math.floor(state.cap) + 1.0)
                if state.cap >= ceiling and ceiling != math.inf:
                    state.cap = ceiling


def rate_limited(state: BudgetState, config: BudgetConfig, now: float, seconds: float, signal: RateLimitSignal) -> None:
    """A 429: lower the cap when it speaks of concurrency, and cool down.

    A 429 holds new starts and retries for ``seconds`` (the server's Retry-After, else
    the backoff), except a sporadic one (its message speaks of something other than
    concurrency) that carried no Retry-After, which holds new starts for
    :data:`SPORADIC_COOL_DOWN` at most and leaves retries to their own backoff, so that
    sporadic 429s cost little. An explicit Retry-After is the server's instruction to
    every caller: it always holds the whole budget.
    """
    fill(state, config, now)
    state.rate_limited += 1
    state.cool_downs += 1
    if signal.named_cap is not None:
        state.cap = min(config.ceiling, float(signal.named_cap))
        state.cap_hold_until = now + NAMED_CAP_HOLD
        state.successes = 0
    elif signal.concurrency:
        base = state.cap if state.cap != math.inf else float(max(1, state.alive(now)))
        state.cap = max(1.0, math.floor(base * DECREASE_FACTOR))
        state.successes = 0
    if signal.sporadic and not signal.retry_after:
        state.cool_until = max(state.cool_until, now + min(seconds, SPORADIC_COOL_DOWN))
    else:
        state.cool_until = max(state.cool_until, now + seconds)
        state.retry_hold_until = max(state.retry_hold_until, now + seconds)


def spend_retry(state: BudgetState, config: BudgetConfig, now: float, cost: int) -> Optional[int]:
    """Pay ``cost`` from the retry budget; None when it cannot pay (the retry is refused)."""
    fill(state, config, now)
    if config.retry_budget is None:
        state.retries += 1
        return 0
    if state.budget_left >= cost:
        state.budget_left -= cost
        state.retries += 1
        return cost
    state.retries_refused += 1
    return None


def pace(state: BudgetState, config: BudgetConfig, now: float) -> float:
    """A retry is about to be sent: take its place in the ``rpm`` spacing (0.0), or say how long to wait.

    Every request that reaches the server counts against ``rpm``, retries too; a retry
    keeps its call's in-flight slot, so it takes nothing else of the budget.
    """
    if config.rpm is None:
        return 0.0
    gap = state.next_start - now
    if gap > 0.0:
        return gap
    state.next_start = now + 60.0 / config.rpm
    return 0.0


def budget_conflict(config: BudgetConfig, stored_ceiling: int) -> ConfigurationError:
    """The error for a limiter whose ceiling or shares differ from its budget's."""
    if stored_ceiling != config.stored_ceiling:
        return ceiling_conflict(config.stored_ceiling, stored_ceiling)
    mine = {share.name: share.fraction for share in config.shares}
    return ConfigurationError(
        f"this Limiter has shares={mine or None!r}, but its budget (same storage and name) runs with other "
        "shares, set by another Limiter whose calls are in flight: give every sharer the same shares, or a "
        "different name (new shares take over once no call of the budget runs)"
    )


def ceiling_conflict(mine: int, stored: int) -> ConfigurationError:
    """The error for a limiter whose ``max_in_flight`` differs from its budget's (0: none)."""

    def shown(value: int) -> str:
        return "None" if value == 0 else str(value)

    return ConfigurationError(
        f"this Limiter has max_in_flight={shown(mine)}, but its budget (same storage and name) runs with "
        f"max_in_flight={shown(stored)}, set by another Limiter whose calls are in flight: give every sharer "
        "the same ceiling, or a different name (a new ceiling takes over once no call of the budget runs)"
    )
