"""What a :class:`~deepseek_pool.budget.limiter.Limiter` hands out and reports: the
:class:`Permit` for one call, and :class:`LimiterStats`, a snapshot of its counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, Type

__all__ = ["LimiterStats", "Permit"]


class _Releases(Protocol):
    """The limiter, as a permit sees it (named, not imported: the limiter imports permits)."""

    def release(self, permit: Permit, *, ok: bool = True) -> None: ...


@dataclass(frozen=True)
class LimiterStats:
    """A consistent snapshot of a :class:`Limiter`'s counters.

    Budget figures (``in_flight`` to ``cap``) are the shared budget's, summed over every
    limiter that shares it; ``waiting`` to ``cancellations`` are this limiter's own.

    :ivar in_flight: calls between acquire and release now (live leases).
    :ivar started: starts granted so far.
    :ivar finished: permits released so far.
    :ivar cool_downs: calls to :meth:`Limiter.cool_down` (429s seen).
    :ivar cooling_for: seconds left in the current cool-down (0.0 when none).
    :ivar retries: retries paid for by :meth:`Limiter.spend_retry`.
    :ivar retries_refused: retries refused because the budget could not pay.
    :ivar retry_budget: what is left in the retry budget (None when it is off).
    :ivar tokens_used: real tokens reported to :meth:`Limiter.release`.
    :ivar cap: the adaptive in-flight cap now (None: no cap).
    :ivar storage_errors: failures of the storage after a call was sent (a release, a
        cool-down, a renewal that a locked database or an unreachable Redis missed),
        logged and absorbed: each call kept its own outcome.
    :ivar waiting: threads queued in this limiter's :meth:`Limiter.acquire` now.
    :ivar throttled: acquires that had to wait (whatever their outcome).
    :ivar wait_seconds: total seconds those acquires waited.
    :ivar timeouts: acquires that gave up with :class:`TimeoutError`.
    :ivar cancellations: acquires that gave up because their ``cancelled`` event was set.
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
    cap: Optional[float] = None
    storage_errors: int = 0


class Permit:
    """Permission to run one call, returned by :meth:`Limiter.acquire`.

    Hand it back with :meth:`Limiter.release` exactly once, or use it as a context
    manager (``with limiter.acquire(): ...``), which releases it with ``ok`` set to
    whether the block raised.

    :ivar tokens: the tokens reserved for the call (its estimate).
    :ivar started_at: the limiter's clock when the start was granted.
    :ivar waited: seconds the acquire waited.
    :ivar lease: the id of the call's in-flight lease in the storage.
    :ivar retry_cost: budget spent on this call's retries via
        ``spend_retry(kind, permit=permit)``; refunded if the call succeeds.
    """

    __slots__ = ("_limiter", "_unreleased", "lease", "retry_cost", "started_at", "tokens", "waited")

    def __init__(self, limiter: _Releases, tokens: int, started_at: float, waited: float, lease: str) -> None:
        self.tokens = tokens
        self.started_at = started_at
        self.waited = waited
        self.lease = lease
        self.retry_cost = 0
        self._limiter = limiter
        #: one item until released: ``list.pop`` takes it in one step, so of two threads
        #: releasing the permit at once exactly one gets it (a flag's test and set are two)
        self._unreleased = [True]

    @property
    def released(self) -> bool:
        """Whether the permit has been handed back."""
        return not self._unreleased

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Any) -> None:
        if self._unreleased:
            self._limiter.release(self, ok=exc_type is None)

    def __repr__(self) -> str:
        return (
            f"Permit(tokens={self.tokens}, started_at={self.started_at:.3f}, "
            f"waited={self.waited:.3f}, released={self.released})"
        )
