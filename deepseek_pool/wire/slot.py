"""A direct call's slot of a shared budget: its control, and the stream that gives the slot back.

A client given a limiter (``DeepSeekClient(limiter=...)``) wraps each direct call's
control in a :class:`SlotCall`: the call waits for a slot before it is sent, keeps it
through its retries, feeds its 429s and retries to the budget as a pool's calls do,
and gives the slot back when it ends -- for ``chat_stream``, when the stream ends
(:class:`SlotStream`). The wire knows no budget: :class:`SharedBudget` names what a
slot needs of one (a :class:`~deepseek_pool.Limiter` is one).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from concurrent.futures import CancelledError
from typing import Any, Optional, Protocol

import requests

from ..errors import APIStatusError, APITimeoutError
from .calls import Attempt, CallControl, RetryCancelled, RetryEvent
from .retry import DeepSeekRetry
from .stream import ChatStream

__all__ = ["SharedBudget", "SlotCall", "SlotStream"]


class SharedBudget(Protocol):
    """What a slot needs of a budget: :class:`~deepseek_pool.budget.limiter.Limiter`'s methods."""

    def acquire(
        self, tokens: int = 0, *, timeout: Optional[float] = None, cancelled: Optional[threading.Event] = None
    ) -> Any: ...

    def release(self, permit: Any, *, tokens_used: Optional[int] = None, retries: int = 0, ok: bool = True) -> None: ...

    def cool_down(self, seconds: float, *, message: Optional[str] = None, retry_after: bool = False) -> None: ...

    def spend_retry(self, kind: str = "status", *, permit: Any = None) -> int: ...

    def wait_before_retry(
        self,
        delay: float,
        *,
        cancelled: Optional[threading.Event] = None,
        timeout: Optional[float] = None,
        permit: Any = None,
        retry_after: bool = False,
    ) -> None: ...


class SlotCall(CallControl):
    """A direct call's control that holds a slot of ``budget`` for the call's whole life.

    It wraps the caller's own control (deadline, cancel event, handle, hooks), if any;
    the slot is taken by :meth:`start` and given back by :meth:`end`, once.
    """

    #: This control holds a slot: a client with a limiter takes no second one for it.
    holds_slot = True

    def __init__(
        self,
        budget: SharedBudget,
        inner: Optional[CallControl],
        *,
        retry: DeepSeekRetry,
        call_timeout: Optional[float],
    ) -> None:
        inner = inner if inner is not None else CallControl()
        deadline = inner.deadline
        if deadline is None and call_timeout is not None:
            deadline = time.monotonic() + call_timeout
        super().__init__(deadline=deadline, cancelled=inner.cancelled, handle=inner.handle, on_retry=inner.on_retry)
        self.budget = budget
        self.permit: Any = None
        self._inner = inner
        self._retry = retry
        self._retry_after = False

    def start(self) -> SlotCall:
        """Wait for the slot within the call's deadline; raise as a call that was not sent does."""
        self.started = time.monotonic()  # the call's telemetry span covers the wait for the slot
        timeout = None if self.deadline is None else max(0.0, self.deadline - self.started)
        try:
            self.permit = self.budget.acquire(cancelled=self.cancelled, timeout=timeout)
        except TimeoutError:
            raise APITimeoutError("not sent: no slot of the limiter's budget within the call's deadline") from None
        except CancelledError:
            raise RetryCancelled("not sent: the call was cancelled while it waited for a slot") from None
        return self

    def end(self, *, ok: bool, usage: Any = None) -> None:
        """Give the slot back (once; later calls do nothing), with the tokens the answer used."""
        permit, self.permit = self.permit, None
        if permit is not None:
            self.budget.release(permit, tokens_used=None if usage is None else usage.total_tokens, ok=ok)

    def check(self) -> None:
        self._inner.check()

    def attempt_started(self, attempt: int) -> None:
        self._inner.attempt_started(attempt)

    def first_token(self, at: float) -> None:
        self._inner.first_token(at)

    def response_received(self, status: int, retry_after: Optional[float], error: Optional[Exception]) -> None:
        self._inner.response_received(status, retry_after, error)
        self._retry_after = retry_after is not None
        if status == 429:
            seconds = retry_after if retry_after is not None else self._retry.backoff_for(1)
            message = error.message if isinstance(error, APIStatusError) else None
            self.budget.cool_down(seconds, message=message or "", retry_after=retry_after is not None)

    def before_retry(self, event: RetryEvent) -> None:
        self._inner.before_retry(event)
        self.budget.spend_retry(event.kind, permit=self.permit)

    def wait(self, delay: float, deadline: float) -> None:
        timeout = None if deadline == math.inf else deadline - time.monotonic()
        try:
            self.budget.wait_before_retry(
                delay, cancelled=self.cancelled, timeout=timeout, permit=self.permit, retry_after=self._retry_after
            )
        except CancelledError:
            raise RetryCancelled("not retried: the call was cancelled") from None
        except TimeoutError:
            raise APITimeoutError(
                "not retried: the call's deadline would pass while the limiter holds retries back"
            ) from None
        self.check()


class SlotStream(ChatStream):
    """A stream that gives its call's slot back when it ends, is closed, or is collected unclosed."""

    def __init__(self, response: requests.Response, attempt: Attempt, *, slot: SlotCall) -> None:
        super().__init__(response, attempt)
        self._give_back = weakref.finalize(self, slot.end, ok=True)

    def close(self) -> None:
        super().close()
        self._give_back()
