"""One pool call's control: how its attempts feed the pool's limiter, spend cap, stop and drain.

The pool hands a :class:`PoolCall` to the client for each call (``control=``); the
client's retry loop calls its hooks (see :class:`~deepseek_pool.wire.calls.CallControl`).
Every attempt is counted toward the spend cap as it ends, the retried ones included,
and a retry whose worst case no longer fits under the cap is not sent.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import threading
import time
from typing import TYPE_CHECKING, FrozenSet, Optional, Protocol

from ..budget.limiter import Limiter, Permit
from ..budget.rules import rate_limit_signal
from ..cache.response_cache import ResponseCache
from ..errors import APIStatusError, APITimeoutError, SpendCapReached
from ..money.spend import Reservation, SpendCap
from ..types import Usage
from ..wire.calls import CallControl, CallHandle, RetryCancelled, RetryEvent
from .items import Result

if TYPE_CHECKING:
    from ..client import DeepSeekClient

__all__ = ["CallOwner", "Drain", "DrainStopped", "PoolCall"]


class CallOwner(Protocol):
    """What a call needs of the pool that made it (a :class:`~deepseek_pool.pool.pool.DeepSeekPool`).

    Named here, not imported, so that the pool imports its calls and never the other way round.
    """

    limiter: Limiter
    client: DeepSeekClient
    cool_down: bool
    stop_on: FrozenSet[int]

    def _note_stop(self, status: int) -> None: ...


class DrainStopped(RetryCancelled):
    """Not sent: the pool is draining (``as_completed(stop=...)`` was set), so no request of
    any kind goes out, retries included. The call was never answered: run it again later."""


class Drain:
    """One ``as_completed`` iteration's graceful stop, as its calls see it.

    ``stop`` is the caller's event: once set, no attempt of any kind starts (checked
    before every attempt and retry). ``wake`` is set when the iteration notices the stop
    or is cancelled: it ends limiter waits and backoff sleeps at once.
    """

    __slots__ = ("stop", "wake")

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.wake = threading.Event()


class PoolCall(CallControl):
    """One pool call's control: its attempts feed the pool's limiter and stop.

    A call whose attempt met the account's concurrency cap (a 429 about concurrency)
    gives its in-flight slot back and queues for a new one before it retries: the cap
    was just lowered, and retrying on the old slot would only meet it again. Every retry
    takes its place in the ``rpm`` spacing, and a 429's ``Retry-After`` holds the whole
    budget (see :meth:`~deepseek_pool.budget.limiter.Limiter.cool_down`).

    With a spend cap (``spend`` and its ``reservation``), each attempt that was sent is
    counted as it ends: the usage it reported, else its whole reservation unless it
    surely generated nothing (an error status, a connection never made).
    """

    #: This control holds a slot of the budget: a client with a limiter takes no second one.
    holds_slot = True
    #: The pool's response cache, which it looked in before taking its limits (a miss): the
    #: client keeps the answer there and does not look again. None: no cache for this call.
    response_cache: Optional[ResponseCache] = None

    def __init__(
        self,
        pool: CallOwner,
        permit: Permit,
        tokens: int,
        deadline: Optional[float],
        cancelled: threading.Event,
        drain: Optional[Drain] = None,
        result: Optional[Result] = None,
        spend: Optional[SpendCap] = None,
        reservation: Optional[Reservation] = None,
        handle: Optional[CallHandle] = None,
    ) -> None:
        super().__init__(deadline=deadline, cancelled=cancelled, handle=handle)
        self.spend = spend
        self.reservation = reservation
        #: the running attempt may have been billed and its usage is not known yet
        self.unbilled = False
        self.result = result
        self.drain = drain
        self.pool = pool
        self.limiter = pool.limiter
        self.permit: Optional[Permit] = permit
        self.tokens = tokens
        self.attempts = 0
        self.retries = 0
        self._requeue = False
        self._retry_after = False

    def attempt_started(self, attempt: int) -> None:
        self.attempts = attempt
        self.unbilled = True

    def attempt_billed(self, usage: Optional[Usage]) -> None:
        if usage is not None:
            self.unbilled = False
            if self.spend is not None and self.reservation is not None:
                self.spend.bill(self.reservation, usage)

    def settle_spend(self) -> None:
        """The call ended: count its last attempt if it may have been billed unseen, free the rest."""
        if self.spend is not None and self.reservation is not None:
            self.spend.settle(self.reservation, charge=self.unbilled)
            self.unbilled = False

    def response_received(self, status: int, retry_after: Optional[float], error: Optional[Exception]) -> None:
        self._retry_after = retry_after is not None
        if status >= 400:
            self.unbilled = False  # an error status: nothing was generated
        if status == 429:
            if self.result is not None:
                self.result.rate_limited += 1
            if self.pool.cool_down:
                # An explicit Retry-After (capped by the policy's retry_after_max) holds the
                # whole budget; without one, the backoff is the guess, held as the message says.
                seconds = retry_after if retry_after is not None else self.pool.client.retry.backoff_for(1)
                message = error.message if isinstance(error, APIStatusError) else None
                signal = rate_limit_signal(message)
                self.limiter.cool_down(seconds, signal=signal, retry_after=retry_after is not None)
                self._requeue = signal.concurrency
        elif status in self.pool.stop_on:
            self.pool._note_stop(status)

    def first_token(self, at: float) -> None:
        result = self.result
        if result is not None and result.first_token is None and result.started_at is not None:
            result.first_token = at - result.started_at  # the first attempt's, if a stream restarts

    def check(self) -> None:
        super().check()
        drain = self.drain
        if drain is not None and drain.stop.is_set():
            raise DrainStopped("not sent: the pool is draining (stop was set); run this call again later")

    def before_retry(self, event: RetryEvent) -> None:
        self.check()  # a drain refuses retries too: nothing at all is sent once stop is set
        spend, reservation = self.spend, self.reservation
        if spend is not None and reservation is not None:
            if self.unbilled and event.kind != "connect":
                spend.charge(reservation)  # it may have been billed and said nothing: its worst case
            self.unbilled = False
            try:
                spend.check_retry(reservation)
            except SpendCapReached as refused:
                raise refused from event.error
        self.limiter.spend_retry(event.kind, permit=self.permit)
        self.retries += 1

    def wait(self, delay: float, deadline: float) -> None:
        timeout = None if deadline == math.inf else deadline - time.monotonic()
        # The drain's wake event is set by a cancel too, so one event ends the wait for both.
        wake = self.drain.wake if self.drain is not None else self.cancelled
        try:
            # A retry that queues for a new slot next is spaced there, not twice.
            self.limiter.wait_before_retry(
                delay,
                cancelled=wake,
                timeout=timeout,
                permit=self.permit,
                pace=not self._requeue,
                retry_after=self._retry_after,
            )
        except cf.CancelledError:
            self.check()
            raise RetryCancelled("not retried: the pool is shutting down") from None
        except TimeoutError:
            raise APITimeoutError(
                "not retried: the call's deadline (call_timeout) would pass while the limiter holds retries back"
            ) from None
        if self._requeue:
            self._requeue = False
            self._queue_again(deadline)
        self.check()

    def _queue_again(self, deadline: float) -> None:
        limiter, old = self.limiter, self.permit
        assert old is not None
        limiter.release(old, tokens_used=0, ok=False)  # a 429 generated nothing
        timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
        wake = self.drain.wake if self.drain is not None else self.cancelled
        try:
            self.permit = limiter.acquire(self.tokens, cancelled=wake, timeout=timeout, ends_within=timeout)
            self.permit.retry_cost = old.retry_cost  # refunded if the call succeeds
        except cf.CancelledError:
            self.permit = None
            self.check()
            raise RetryCancelled("not retried: the pool is shutting down") from None
        except TimeoutError:
            self.permit = None
            raise APITimeoutError(
                "not retried: the call's deadline (call_timeout) passed while it queued for the concurrency cap"
            ) from None
