"""One pool call, in a worker thread: check it, wait for the limits, call the client, account.

The pool submits :func:`run_item` (a batch item: never raises, the outcome goes on its
:class:`~deepseek_pool.pool.items.Result`) or :func:`run_submitted` (``submit``: its future
raises); both run :func:`run_call` and hand the result to the pool's counters. What they
need of the pool is named here as a Protocol (:class:`PoolWorker`), so the pool imports
its worker and never the other way round.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import threading
import time
from functools import partial
from typing import Any, Callable, Dict, NoReturn, Optional, Protocol, Tuple

from ..cache.response_cache import CacheLookup, ResponseCache
from ..errors import APIStatusError, APITimeoutError, status_error
from ..messages import Messages, normalize_messages
from ..money.offpeak import OffPeakOnly
from ..money.spend import UNSET_MAX_TOKENS_RESERVE, Reservation, SpendCap
from ..types import ChatChunk, ChatCompletion
from ..wire.calls import CallControl, CallHandle, RetryCancelled
from .call import CallOwner, Drain, DrainStopped, PoolCall
from .items import Result, estimate_prompt_tokens, estimate_tokens, route_request

__all__ = ["PoolChunkCallback", "PoolWorker", "in_cache", "run_call", "run_item", "run_submitted"]

PoolChunkCallback = Callable[["Result", ChatChunk], None]

#: Call options the pool sets itself, so a request may not.
_POOL_OWNED = frozenset({"on_retry", "on_chunk", "restart_streams"})


class PoolWorker(CallOwner, Protocol):
    """What a worker needs of its pool (a :class:`~deepseek_pool.pool.pool.DeepSeekPool`)."""

    spend: Optional[SpendCap]
    off_peak: Optional[OffPeakOnly]
    cache: Optional[ResponseCache]
    on_chunk: Optional[PoolChunkCallback]
    _stopped_by: Optional[int]
    _closing: threading.Event
    _handles: Dict[CallHandle, threading.Event]

    def _finish(self, result: Result) -> None: ...


def run_item(
    pool: PoolWorker,
    result: Result,
    messages: Messages,
    params: Dict[str, Any],
    cancelled: threading.Event,
    endpoint: str = "chat",
    drain: Optional[Drain] = None,
    accepted: Optional[float] = None,
) -> Result:
    """Worker body for a batch item: never raises, the outcome goes on ``result``."""
    try:
        result.completion = run_call(pool, result, messages, params, cancelled, endpoint, drain, accepted)
    except BaseException as err:
        result.error = err
    pool._finish(result)
    return result


def run_call(
    pool: PoolWorker,
    result: Result,
    messages: Messages,
    params: Dict[str, Any],
    cancelled: threading.Event,
    endpoint: str = "chat",
    drain: Optional[Drain] = None,
    accepted: Optional[float] = None,
    handle: Optional[CallHandle] = None,
) -> Any:
    """Validate, wait for the limits, call, account; raise on failure (used by submit too).

    ``accepted`` is when the pool took the request (``submit``, or the window taking the
    item): the client's ``call_timeout`` runs from then, so time queued behind busy
    workers counts too. ``handle``: the call's abort handle, made before the call starts
    (``submit``: :meth:`~deepseek_pool.DeepSeekPool.abort`); an aborted one is never sent.
    Returns a :class:`ChatCompletion` (a :class:`~deepseek_pool.FIMCompletion` for ``"fim"``).
    """
    if endpoint != "fim":
        normalize_messages(messages)  # bad input fails here, before any limiter or network
    for key in _POOL_OWNED & params.keys():
        raise TypeError(f"{key!r} is set by the pool; use DeepSeekPool(on_chunk=...) or its limiter instead")
    stopped = pool._stopped_by
    if stopped is not None:
        raise status_error(stopped, f"not sent: an earlier call of this pool was answered {stopped}")
    params, lookup = _look_up(pool, messages, params, endpoint)
    if lookup is not None and lookup.hit is not None:
        return _from_cache(pool, result, lookup, endpoint)  # no limiter slot, no spend: $0
    spend = pool.spend
    model = params.get("model") or pool.client.model
    if spend is not None:
        spend.price(model)  # an unpriced model is refused before it waits anywhere
    tokens = estimate_tokens(messages, params)
    limiter = pool.limiter
    start = time.monotonic()
    call_timeout = pool.client.call_timeout
    deadline = None if call_timeout is None else (start if accepted is None else accepted) + call_timeout
    if deadline is not None and start >= deadline:
        raise APITimeoutError(f"not sent: the call's deadline (call_timeout={call_timeout} s) passed in the queue")
    if handle is not None and handle.aborted:
        raise RetryCancelled("not sent: the call was aborted")
    wake = cancelled if drain is None else drain.wake
    off_peak = pool.off_peak
    while True:
        if off_peak is not None and off_peak.hold(wake):  # a peak window: no call starts in it
            if wake.is_set():
                _stopped(cancelled, drain, handle)
            start = time.monotonic()  # waiting for off-peak was asked for: call_timeout starts again
            deadline = None if call_timeout is None else start + call_timeout
        try:
            remaining = None if deadline is None else deadline - start
            permit = limiter.acquire(tokens, cancelled=wake, timeout=remaining, ends_within=remaining)
        except TimeoutError:
            raise APITimeoutError(
                f"the call's deadline (call_timeout={call_timeout} s) passed while waiting for the limiter"
            ) from None
        except cf.CancelledError:
            _stopped(cancelled, drain, handle)
        if off_peak is None or not off_peak.calendar.is_peak(off_peak.clock.now()):
            break
        limiter.release(permit, tokens_used=0, ok=False)  # a peak began during the wait: back to the gate
    reservation: Optional[Reservation] = None
    if spend is not None:
        max_tokens = params.get("max_tokens")
        try:
            reservation = spend.reserve(
                model,
                prompt_tokens=estimate_prompt_tokens(messages, params),
                completion_tokens=max_tokens
                if isinstance(max_tokens, int) and max_tokens > 0
                else UNSET_MAX_TOKENS_RESERVE,
                within=None if deadline is None else deadline - time.monotonic(),
            )
        except BaseException:
            limiter.release(permit, tokens_used=0, ok=False)
            raise
    begun = time.monotonic()
    result.started_at = begun
    result.queued = begun - start
    control = PoolCall(pool, permit, tokens, deadline, cancelled, drain, result, spend, reservation, handle)
    control.started = start  # its telemetry span covers the wait at the limiter too
    telemetry = getattr(pool.client, "telemetry", None)  # a stand-in client may have none
    if telemetry is not None:
        telemetry.watch_limiter(limiter)
    control.response_cache = None if lookup is None else lookup.cache
    handle = control.handle
    completion: Any = None
    pool._handles[handle] = cancelled  # a dict store: atomic, no lock (see DeepSeekPool._untrack)
    if cancelled.is_set():
        handle.abort()
    try:
        if endpoint == "fim":
            assert isinstance(messages, str)  # route_request made it the FIM prompt
            fim_params = dict(params)
            completion = pool.client.fim(
                messages, fim_params.pop("suffix", None), control=control, cache=False, **fim_params
            )
        elif params.get("stream"):
            completion = _stream(pool, result, messages, dict(params), control, endpoint == "beta")
        else:
            completion = pool.client.chat(messages, control=control, beta=endpoint == "beta", cache=False, **params)
        return completion
    finally:
        del pool._handles[handle]
        result.attempts = control.attempts
        result.elapsed = time.monotonic() - begun
        usage = completion.usage if completion is not None else None
        if usage is not None:
            used: Optional[int] = usage.total_tokens
        else:
            # An error status means nothing was generated; after a timeout or a cut
            # stream the server may have spent tokens, so the estimate stays charged.
            error = sys.exc_info()[1]
            unsent = control.attempts == 0 or isinstance(error, (TypeError, ValueError))
            used = 0 if unsent or isinstance(error, APIStatusError) else None
        if control.permit is not None:  # None: it gave its slot back and did not get a new one
            limiter.release(control.permit, tokens_used=used, retries=control.retries, ok=completion is not None)
        control.settle_spend()  # each attempt was counted as it ended; the last one if unseen
        if reservation is not None:
            result.cost = reservation.spent


def _stopped(cancelled: threading.Event, drain: Optional[Drain], handle: Optional[CallHandle] = None) -> NoReturn:
    """A wait before the call's start was ended: by the drain, an abort, or a cancel."""
    if handle is not None and handle.aborted:
        raise RetryCancelled("not sent: the call was aborted while it waited")
    if drain is not None and drain.stop.is_set() and not cancelled.is_set():
        raise DrainStopped("not sent: the pool is draining (stop was set); run this call again later") from None
    raise cf.CancelledError


def _stream(
    pool: PoolWorker,
    result: Result,
    messages: Messages,
    params: Dict[str, Any],
    control: CallControl,
    beta: bool = False,
) -> ChatCompletion:
    params = _stream_params(params)
    user_callback = pool.on_chunk
    # The control records the first token (PoolCall.first_token). Without a user
    # callback nobody watches the chunks: the client's shared reader may read them,
    # and a broken stream may be retried from the start.
    on_chunk = None if user_callback is None else partial(user_callback, result)
    return pool.client.chat(
        messages,
        stream=True,
        on_chunk=on_chunk,
        restart_streams=user_callback is None,
        control=control,
        beta=beta,
        cache=False,
        **params,
    )


def _stream_params(params: Dict[str, Any]) -> Dict[str, Any]:
    """What a pool's streamed call sends: the usage asked for, unless the caller set ``stream_options``."""
    params = {key: value for key, value in params.items() if key != "stream"}
    if params.get("stream_options") is None:
        params["stream_options"] = {"include_usage": True}  # settled with the usage, not the estimate
    return params


def _cached_request(
    pool: PoolWorker, messages: Messages, params: Dict[str, Any], endpoint: str
) -> Tuple[Dict[str, Any], Optional[Tuple[str, Dict[str, Any]]]]:
    """The params to send (without the pool's ``cache`` option), and the URL and body the
    pool's response cache knows the call by (None: no cache for it)."""
    use = params.get("cache", True)
    if "cache" in params:
        if not isinstance(use, bool):
            raise TypeError(f"a request's 'cache' must be True or False, got {use!r}")
        params = {key: value for key, value in params.items() if key != "cache"}
    if not use or pool.cache is None:
        return params, None
    sent = {**_stream_params(params), "stream": True} if endpoint != "fim" and params.get("stream") else params
    return params, pool.client.request_for(endpoint, messages, sent)


def _look_up(
    pool: PoolWorker, messages: Messages, params: Dict[str, Any], endpoint: str
) -> Tuple[Dict[str, Any], Optional[CacheLookup]]:
    """The params to send and the call's look in the pool's cache (None: no cache for it)."""
    params, request = _cached_request(pool, messages, params, endpoint)
    return params, None if request is None or pool.cache is None else pool.cache.lookup(*request)


def in_cache(pool: PoolWorker, request: Any) -> bool:
    """Whether the pool's response cache would answer ``request`` (a peek that counts nowhere)."""
    if pool.cache is None:
        return False
    try:
        _custom_id, messages, params, endpoint = route_request(request)
        params, sent = _cached_request(pool, messages, params, endpoint)
    except (TypeError, ValueError):
        return False
    return sent is not None and pool.cache.holds(*sent)


def _from_cache(pool: PoolWorker, result: Result, lookup: CacheLookup, endpoint: str) -> Any:
    """A cached answer, as a call would have given it (a streamed one shown to ``on_chunk``)."""
    result.started_at = time.monotonic()
    if pool.spend is not None:
        result.cost = 0.0
    if endpoint == "fim":
        return lookup.fim()
    user_callback = pool.on_chunk
    return lookup.chat(None if user_callback is None else partial(user_callback, result))


def run_submitted(
    pool: PoolWorker,
    result: Result,
    messages: Messages,
    params: Dict[str, Any],
    accepted: float,
    handle: Optional[CallHandle] = None,
    stop: Optional[threading.Event] = None,
) -> ChatCompletion:
    """Worker body for ``submit``: its future raises what the call raised.

    ``stop`` is the call's own cancel event (``DeepSeekPool.abort`` and ``close(cancel=True)``
    set it), else the pool's closing event.
    """
    cancelled = pool._closing if stop is None else stop
    if stop is not None and pool._closing.is_set():
        stop.set()  # closed between submit's check and this start
    try:
        result.completion = run_call(pool, result, messages, params, cancelled, accepted=accepted, handle=handle)
        return result.completion
    except BaseException as err:
        result.error = err
        raise
    finally:
        pool._finish(result)
