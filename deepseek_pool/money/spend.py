"""The spend cap of a pool (``DeepSeekPool(max_cost=...)``): reserve before a call, bill each attempt.

Before a call starts, :meth:`SpendCap.reserve` prices the worst case of one attempt --
the prompt estimate as cache misses plus ``max_tokens`` of output
(:data:`UNSET_MAX_TOKENS_RESERVE` when the request sets none), at the off-peak rate only
when no peak window can begin before the call ends (its deadline, else
:data:`RESERVE_HORIZON`), else at the peak rate -- and refuses the call with
:class:`~deepseek_pool.errors.SpendCapReached` when the money already spent plus every
running call's reservation plus this one would pass the cap.

DeepSeek bills every attempt that generated, not only the last: a 200 cut short by
``insufficient_system_resource`` is billed and then retried. So each attempt is counted
as it ends -- :meth:`SpendCap.bill` with the usage it reported, :meth:`SpendCap.charge`
with the whole reservation when it may have been billed but reported nothing (a timeout,
a cut stream, a body without usage) -- while the reservation stays held for the next
attempt; :meth:`SpendCap.check_retry` refuses a retry whose worst case no longer fits,
and :meth:`SpendCap.settle` lets the reservation go. So the sum of what the server billed
stays under the cap, as long as each attempt costs at most its reservation: the prompt
estimate is never below the real count, and only a request without ``max_tokens`` can
generate more than it reserved.

The hour: DeepSeek does not say whether a call is billed at the hour it starts or the
hour it ends, so an attempt is priced at the off-peak rate only when no peak instant lies
between the call's start and the attempt's end
(:meth:`~deepseek_pool.money.offpeak.PeakCalendar.peak_between`, which also counts
make-up working days and days the holiday data does not cover as peak days).

Prices come from :mod:`deepseek_pool.models`, or from ``prices`` given by the user; a
model without a price cannot be capped and is refused up front
(:class:`~deepseek_pool.errors.ConfigurationError`), never treated as free.

Example::

    cap = SpendCap(5.00)
    held = cap.reserve("deepseek-flash", prompt_tokens=1200, completion_tokens=800)
    ...  # an attempt answered 200 insufficient_system_resource: billed, to be retried
    cap.bill(held, usage)
    cap.check_retry(held)  # raises SpendCapReached when another attempt might not fit
    ...  # the retry
    cap.settle(held, usage=completion.usage)
    print(cap.spent, cap.reserved)
"""

from __future__ import annotations

import datetime as _dt
import math
import threading
from typing import Callable, Iterable, Mapping, Optional

from ..errors import ConfigurationError, SpendCapReached
from ..models import ModelPrice, cost_of, price_of
from ..types import Usage
from .offpeak import PeakCalendar

__all__ = ["RESERVE_HORIZON", "UNSET_MAX_TOKENS_RESERVE", "Reservation", "SpendCap", "cost_at"]

#: Output tokens reserved for a request that sets no ``max_tokens`` (set it for a hard bound).
UNSET_MAX_TOKENS_RESERVE = 8192

#: Seconds a call without a deadline is assumed to run at most when its reservation is
#: priced: a peak window starting sooner makes it reserve at the peak rate.
RESERVE_HORIZON = 3600.0
#: Added to a call's deadline for that check (the end of a call is seen a little after it).
_DEADLINE_SLACK = 60.0

Clock = Callable[[], _dt.datetime]

#: A Monday 02:00 and a Sunday noon, UTC: one hour of each rate for ``models.cost_of``.
_A_PEAK_HOUR = _dt.datetime(2026, 11, 2, 2, tzinfo=_dt.UTC)
_AN_OFF_PEAK_HOUR = _dt.datetime(2026, 11, 1, 12, tzinfo=_dt.UTC)


def cost_at(
    price: ModelPrice,
    *,
    prompt_cache_hit_tokens: int,
    prompt_cache_miss_tokens: int,
    completion_tokens: int,
    peak: bool,
) -> float:
    """USD for these tokens at ``price``'s peak or off-peak rate (the calendar decided which)."""
    return cost_of(
        price,
        prompt_cache_hit_tokens=prompt_cache_hit_tokens,
        prompt_cache_miss_tokens=prompt_cache_miss_tokens,
        completion_tokens=completion_tokens,
        when=_A_PEAK_HOUR if peak else _AN_OFF_PEAK_HOUR,
    )


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class Reservation:
    """Money held for one running call until :meth:`SpendCap.settle`."""

    #: ``amount`` is the worst case of one attempt; ``spent`` what this call's attempts were counted.
    __slots__ = ("amount", "model", "price", "settled", "spent", "when")

    def __init__(self, model: str, price: ModelPrice, amount: float, when: _dt.datetime) -> None:
        self.model = model
        self.price = price
        self.amount = amount
        self.when = when
        self.settled = False
        self.spent = 0.0

    def __repr__(self) -> str:
        return (
            f"Reservation(model={self.model!r}, amount={self.amount:.6f}, spent={self.spent:.6f}, "
            f"settled={self.settled})"
        )


class SpendCap:
    """A thread-safe budget in USD shared by the calls of a pool.

    :param max_cost: the cap in USD (> 0).
    :param prices: model id -> :class:`~deepseek_pool.models.ModelPrice`, used before the
        built-in table (for models or servers it does not know).
    :param clock: returns the current aware datetime; tells peak from off-peak hours.
    :param calendar: the :class:`~deepseek_pool.money.offpeak.PeakCalendar` (default: DeepSeek's).
    """

    def __init__(
        self,
        max_cost: float,
        *,
        prices: Optional[Mapping[str, ModelPrice]] = None,
        clock: Clock = _utc_now,
        calendar: Optional[PeakCalendar] = None,
    ) -> None:
        if isinstance(max_cost, bool) or not isinstance(max_cost, (int, float)) or not math.isfinite(max_cost):
            raise ValueError(f"max_cost must be a number of USD > 0, got {max_cost!r}")
        if max_cost <= 0:
            raise ValueError(f"max_cost must be a number of USD > 0, got {max_cost!r}")
        for model, price in (prices or {}).items():
            if not isinstance(price, ModelPrice):
                raise TypeError(f"prices[{model!r}] must be a ModelPrice, got {type(price).__name__}")
        self.max_cost = float(max_cost)
        self.prices = dict(prices or {})
        self._clock = clock
        self.calendar = calendar if calendar is not None else PeakCalendar()
        self._lock = threading.Lock()
        self._spent = 0.0
        self._reserved = 0.0
        #: calls refused because they would have passed the cap
        self.refused = 0
        #: calls that were let start
        self.started = 0

    def price(self, model: str) -> ModelPrice:
        """The price of ``model``; :class:`ConfigurationError` when none is known."""
        price = price_of(model, self.prices)
        if price is None:
            raise ConfigurationError(
                f"no price is known for model {model!r}, so a spend cap cannot be kept; give its price "
                "(DeepSeekPool(prices={...}) or deepseek-pool run --price MODEL=HIT,MISS,OUTPUT)"
            )
        return price

    def check_models(self, models: Iterable[str]) -> None:
        """Refuse up front (:class:`ConfigurationError`) when any of ``models`` has no price."""
        for model in models:
            self.price(model)

    def reserve(
        self, model: str, *, prompt_tokens: int, completion_tokens: int, within: Optional[float] = None
    ) -> Reservation:
        """Hold the worst case of one call, or raise :class:`SpendCapReached` if it does not fit.

        ``within``: the most seconds the call can run (its deadline), else
        :data:`RESERVE_HORIZON`; a peak window that can begin before then makes it the peak rate.
        """
        price = self.price(model)
        when = self._clock()
        reach = RESERVE_HORIZON if within is None else max(0.0, within) + _DEADLINE_SLACK
        amount = cost_at(
            price,
            prompt_cache_hit_tokens=0,
            prompt_cache_miss_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            peak=self.calendar.peak_between(when, when + _dt.timedelta(seconds=reach)),
        )
        with self._lock:
            committed = self._spent + self._reserved
            if committed + amount > self.max_cost:
                self.refused += 1
                raise SpendCapReached(
                    f"not sent: the spend cap ${self.max_cost:g} would pass (spent ${self._spent:.6f}, "
                    f"held by running calls ${self._reserved:.6f}, this call up to ${amount:.6f})"
                )
            self._reserved += amount
            self.started += 1
        return Reservation(model, price, amount, when)

    def cost(self, reservation: Reservation, usage: Usage) -> float:
        """USD that ``usage`` costs at the reservation's price, off-peak only if no peak
        instant lies between the call's start and now (the attempt's end)."""
        hit = usage.prompt_cache_hit_tokens
        miss = usage.prompt_cache_miss_tokens
        return cost_at(
            reservation.price,
            prompt_cache_hit_tokens=hit,
            prompt_cache_miss_tokens=miss if hit + miss else usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            peak=self.calendar.peak_between(reservation.when, self._clock()),
        )

    def bill(self, reservation: Reservation, usage: Usage) -> float:
        """Count one attempt that reported ``usage`` (retried or not); the reservation stays held."""
        return self._count(reservation, self.cost(reservation, usage))

    def charge(self, reservation: Reservation) -> float:
        """Count one attempt that may have been billed but reported no usage: its worst case."""
        return self._count(reservation, reservation.amount)

    def _count(self, reservation: Reservation, cost: float) -> float:
        with self._lock:
            if reservation.settled:
                return 0.0
            reservation.spent += cost
            self._spent += cost
        return cost

    def peak_cost(self, model: str, usage: Usage) -> float:
        """USD ``usage`` costs for ``model`` at its dearest hour: what a call of unknown hour cost at most."""
        price = self.price(model)
        hit = usage.prompt_cache_hit_tokens
        miss = usage.prompt_cache_miss_tokens
        return max(
            cost_of(
                price,
                prompt_cache_hit_tokens=hit,
                prompt_cache_miss_tokens=miss if hit + miss else usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                when=when,
            )
            for when in (_A_PEAK_HOUR, _AN_OFF_PEAK_HOUR)
        )

    def count_earlier(self, amount: float) -> None:
        """Count ``amount`` USD spent before this cap existed (earlier runs on the same output).

        :raises SpendCapReached: it leaves nothing to spend; the message names both amounts.
        """
        if not amount > 0:
            return
        with self._lock:
            self._spent += amount
            spent = self._spent
        if spent >= self.max_cost:
            raise SpendCapReached(
                f"${spent:.6f} is already spent, at or above the spend cap ${self.max_cost:g}: nothing was sent"
            )

    def check_retry(self, reservation: Reservation) -> None:
        """Raise :class:`SpendCapReached` when another attempt's worst case would not fit.

        The reservation is still held for that attempt, so the money counted plus every
        running call's reservation must stay within the cap.
        """
        with self._lock:
            if reservation.settled or self._spent + self._reserved <= self.max_cost:
                return
            self.refused += 1
            spent, held = self._spent, self._reserved
        raise SpendCapReached(
            f"not retried: the spend cap ${self.max_cost:g} could pass (spent ${spent:.6f}, held by running "
            f"calls ${held:.6f}, this call's next attempt up to ${reservation.amount:.6f})"
        )

    def settle(self, reservation: Reservation, *, usage: Optional[Usage] = None, charge: bool = True) -> float:
        """End a call and let its reservation go; count its last attempt first if not yet counted.

        ``usage``: the last attempt's, when it was not counted with :meth:`bill`;
        ``charge``: the last attempt may have been billed and reported nothing (a timeout,
        a cut stream), so its worst case is counted. Returns the amount counted now.
        """
        cost = 0.0
        if usage is not None:
            cost = self.cost(reservation, usage)
        elif charge:
            cost = reservation.amount
        with self._lock:
            if reservation.settled:
                return 0.0
            reservation.settled = True
            reservation.spent += cost
            self._reserved = max(0.0, self._reserved - reservation.amount)
            self._spent += cost
        return cost

    @property
    def spent(self) -> float:
        """USD counted as spent by the calls that ended."""
        return self._spent

    @property
    def reserved(self) -> float:
        """USD held by the calls running now."""
        return self._reserved

    @property
    def remaining(self) -> float:
        """USD left before the cap, running calls' reservations deducted."""
        with self._lock:
            return max(0.0, self.max_cost - self._spent - self._reserved)

    def __repr__(self) -> str:
        return (
            f"SpendCap(max_cost={self.max_cost:g}, spent={self._spent:.6f}, reserved={self._reserved:.6f}, "
            f"started={self.started}, refused={self.refused})"
        )
