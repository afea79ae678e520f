"""``DeepSeekPool``: many chat calls at once from synchronous code.

Each call is a ``functools.partial`` of one worker function, bound to that
request's parameters and submitted to a ``ThreadPoolExecutor``; results come back
through the futures' done-callbacks in completion order. Input is pulled lazily
through a bounded window, so a generator of a million requests runs in memory
bounded by the window. Every start goes through a shared
:class:`~deepseek_pool.budget.limiter.Limiter` (in-flight cap, requests and tokens per
minute, 429 cool-down, retry budget).

Example::

    import deepseek_pool as dp

    with dp.DeepSeekPool(max_workers=16) as pool:
        for result in pool.as_completed(["What is 2+2?", "Name a colour."]):
            print(result.index, result.completion.content if result.ok else result.error)
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue
import sys
import threading
import time
import warnings
from functools import partial
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Union,
    Unpack,
    cast,
)

from ..budget.limiter import Limiter
from ..client import DeepSeekClient
from ..errors import APIStatusError, APITimeoutError, status_error
from ..forks import reset_after_fork
from ..messages import Messages, normalize_messages
from ..models import ModelPrice
from ..money.spend import UNSET_MAX_TOKENS_RESERVE, Reservation, SpendCap
from ..params import ChatRequest, SubmitParams
from ..process import check_open_files, hint_large_pool
from ..types import ChatChunk, ChatCompletion, Usage
from ..wire.calls import CallControl, CallHandle
from .call import Drain, DrainStopped, PoolCall
from .items import (
    BATCH_URLS,
    POOL_KEYS,
    PoolStats,
    Request,
    Result,
    Routed,
    estimate_prompt_tokens,
    estimate_tokens,
    parse_request,
    route_request,
)

__all__ = [
    "BATCH_URLS",
    "DeepSeekPool",
    "DrainStopped",
    "PoolStats",
    "Request",
    "Result",
    "Routed",
    "parse_request",
    "route_request",
]

log = logging.getLogger(__name__)

ResultCallback = Callable[["Result"], None]
PoolChunkCallback = Callable[["Result", ChatChunk], None]

#: Call options the pool sets itself, so a request may not.
_POOL_OWNED = frozenset({"on_retry", "on_chunk", "restart_streams"})
#: Submitted-but-unfinished requests per worker that as_completed/map keep queued.
WINDOW_PER_WORKER = 2
#: Default ``collect_interval``: how long ``as_completed`` waits, after a slow call's result,
#: for the results finishing around it, so that its thread wakes once for them all.
COLLECT_INTERVAL = 0.005
#: ``as_completed`` waits so only after a call that took this many collect intervals (0.5 s
#: by default): the results of such calls come at most 1 % of their latency later.
COLLECT_AFTER = 100
#: Seconds between looks at an ``as_completed(stop=...)`` event while no result arrives.
STOP_POLL_INTERVAL = 0.1
#: Most seconds leaving an ``as_completed`` loop early waits for its aborted calls to end.
ABORT_WAIT = 2.0
#: Statuses after which a pool sends nothing more: the key is wrong, the balance is spent.
STOP_STATUSES = frozenset({401, 402})
_NOT_GIVEN: Any = object()  # the deprecated switch_interval=/gc_threshold= were not passed
_sleep = time.sleep  # as_completed's collecting wait (a name of its own, for the tests to watch)


class DeepSeekPool:
    """Run many DeepSeek chat calls at once on a thread pool, within shared limits.

    :param client: the :class:`DeepSeekClient` to use; built from the environment
        when None (and then closed with the pool).
    :param max_workers: threads making calls; the client's connection pool is sized to it.
    :param max_in_flight: most calls running at once, across every pool sharing ``limiter``.
    :param rpm: most call starts per minute, evenly spaced.
    :param tpm: most tokens per minute (estimated before a call, corrected after).
    :param retry_budget: capacity of the retry budget (None: never refuse a retry).
    :param limiter: a :class:`~deepseek_pool.budget.limiter.Limiter` to share with other pools
        (then ``max_in_flight``/``rpm``/``tpm``/``retry_budget`` must not be given).
    :param executor: an executor to run calls on; the pool never shuts it down.
    :param window: most requests of one ``as_completed``/``map`` submitted but unfinished
        (default ``2 * max_workers``).
    :param on_result: called with each finished :class:`Result`, in the worker thread.
    :param on_chunk: called with ``(result, chunk)`` for each chunk of streamed requests.
    :param cool_down: tell the limiter of every 429: one about the account's concurrency
        cap lowers the limiter's adaptive cap (to the number DeepSeek names) and holds
        every call sharing the limiter back for the wait the server asked for, and the call
        queues for a slot again before retrying; any other 429 holds new starts briefly.
        Turn it off and only the call that got a 429 waits.
    :param stop_on: statuses after which the pool sends nothing more (default 401 and
        402: a wrong key or a spent balance fails every call alike); later calls fail at
        once with the same error class, without being sent. ``()`` never stops.
    :param max_cost: a spend cap in USD: no call starts once the money spent plus what the
        running calls reserved (prompt estimate and ``max_tokens``, priced from the model
        table at the peak or off-peak rate) would pass it; such a call fails at once with
        :class:`~deepseek_pool.errors.SpendCapReached`, unsent. A model without a known
        price is refused (:class:`~deepseek_pool.errors.ConfigurationError`) unless
        ``prices`` gives one. See :mod:`deepseek_pool.money.spend`.
    :param prices: model id -> :class:`~deepseek_pool.models.ModelPrice`, for ``max_cost``.
    :param collect_interval: after yielding the result of a call that took at least
        :data:`COLLECT_AFTER` times this (0.5 s by default), ``as_completed`` and ``map``
        wait this long for the results finishing around it before they block: with
        thousands of slow calls in flight, waking the consuming thread for every single
        result costs the process more CPU than the calls themselves add. 0 never waits.
    :param switch_interval: deprecated, ignored: the pool no longer changes process-wide
        settings; an application calls :func:`deepseek_pool.tune_process` instead.
    :param gc_threshold: deprecated, ignored, as ``switch_interval``.

    A pool that may hold more connections (``max_workers``, or ``max_in_flight`` if lower)
    than the process may open files refuses to start
    (:class:`~deepseek_pool.errors.ConfigurationError`), before anything is sent. A pool of
    128 workers or more, in a process that never called :func:`deepseek_pool.tune_process`,
    logs once what that call would gain.
    """

    def __init__(
        self,
        client: Optional[DeepSeekClient] = None,
        *,
        max_workers: int = 8,
        max_in_flight: Optional[int] = None,
        rpm: Optional[float] = None,
        tpm: Optional[int] = None,
        retry_budget: Optional[int] = 500,
        limiter: Optional[Limiter] = None,
        executor: Optional[cf.Executor] = None,
        window: Optional[int] = None,
        on_result: Optional[ResultCallback] = None,
        on_chunk: Optional[PoolChunkCallback] = None,
        cool_down: bool = True,
        stop_on: Iterable[int] = STOP_STATUSES,
        max_cost: Optional[float] = None,
        prices: Optional[Mapping[str, ModelPrice]] = None,
        switch_interval: Union[str, float, None] = _NOT_GIVEN,
        collect_interval: float = COLLECT_INTERVAL,
        gc_threshold: Union[str, int, None] = _NOT_GIVEN,
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if limiter is not None and (max_in_flight is not None or rpm is not None or tpm is not None):
            raise ValueError("give either limiter= or max_in_flight/rpm/tpm, not both")
        if (
            isinstance(collect_interval, bool)
            or not isinstance(collect_interval, (int, float))
            or not (0 <= collect_interval <= 1)
        ):
            raise ValueError(f"collect_interval must be a number of seconds from 0 to 1, got {collect_interval!r}")
        for name, option in (("switch_interval", switch_interval), ("gc_threshold", gc_threshold)):
            if option is not _NOT_GIVEN:
                warnings.warn(
                    f"DeepSeekPool({name}=...) is deprecated and does nothing: the pool no longer changes "
                    "process-wide settings; call deepseek_pool.tune_process(calls_in_flight) in your application",
                    DeprecationWarning,
                    stacklevel=2,
                )
        cap = max_in_flight if limiter is None else limiter.max_in_flight  # a bad one is named below
        connections = min(max_workers, cap) if isinstance(cap, int) and cap > 0 else max_workers
        check_open_files(connections, f"DeepSeekPool(max_workers={max_workers})")  # before anything is made
        #: the spend cap (None without ``max_cost``): ``spend.spent``, ``spend.reserved`` ...
        self.spend: Optional[SpendCap] = None
        if max_cost is not None:
            self.spend = SpendCap(max_cost, prices=prices)
        elif prices:
            raise ValueError("prices= is only used with max_cost=")
        self.limiter = limiter or Limiter(max_in_flight=max_in_flight, rpm=rpm, tpm=tpm, retry_budget=retry_budget)
        self._owns_client = client is None
        self.client = client if client is not None else DeepSeekClient()
        if self.spend is not None:
            self.spend.check_models([self.client.model])  # an unpriced default model is refused up front
        self.max_workers = max_workers
        self.client.reserve_connections(max_workers)
        self._connections_released = False
        self._stopped_by: Optional[int] = None
        self._owns_executor = executor is None
        self._executor = executor or cf.ThreadPoolExecutor(max_workers, thread_name_prefix="deepseek-pool")
        self.window = window or WINDOW_PER_WORKER * max_workers
        self.collect_interval = float(collect_interval)
        self.on_result = on_result
        self.on_chunk = on_chunk
        self.cool_down = cool_down
        self.stop_on = frozenset(stop_on)
        self._closing = threading.Event()
        self._closed = False
        self._client_closed = False
        self._iterations: Dict[threading.Event, Optional[Drain]] = {}
        self._handles: Dict[CallHandle, threading.Event] = {}
        self._lock = threading.Lock()
        self._futures: set[cf.Future[Any]] = set()
        self._submitted = 0
        self._done = 0
        self._ok = 0
        self._failed = 0
        self._retried = 0
        self._cancelled = 0
        self._usage = Usage()
        hint_large_pool(max_workers)
        reset_after_fork(self)

    def _after_fork(self) -> None:
        """In a forked child: the parent's worker threads are not here; start with fresh ones.

        The parent's calls in flight belong to the parent: the child forgets them (its
        counters start again) and runs its own work on a new executor.
        """
        self._lock = threading.Lock()
        self._iterations = {}
        self._handles = {}
        self._futures = set()
        if self._owns_executor:
            self._executor = cf.ThreadPoolExecutor(self.max_workers, thread_name_prefix="deepseek-pool")

    @property
    def stopped_by(self) -> Optional[int]:
        """The status (one of ``stop_on``) that stopped the pool, or None.

        A wrong key or an empty balance fails every call the same way, so after the
        first such answer, on any attempt, the pool sends nothing more: later calls fail
        at once with the same error class.
        """
        return self._stopped_by

    def __repr__(self) -> str:
        return f"DeepSeekPool(max_workers={self.max_workers}, window={self.window}, limiter={self.limiter!r})"

    # -- one call ----------------------------------------------------------------------

    def _run(
        self,
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
            result.completion = self._call(result, messages, params, cancelled, endpoint, drain, accepted)
        except BaseException as err:
            result.error = err
        self._finish(result)
        return result

    def _call(
        self,
        result: Result,
        messages: Messages,
        params: Dict[str, Any],
        cancelled: threading.Event,
        endpoint: str = "chat",
        drain: Optional[Drain] = None,
        accepted: Optional[float] = None,
    ) -> Any:
        """Validate, wait for the limits, call, account; raise on failure (used by submit too).

        ``accepted`` is when the pool took the request (``submit``, or the window taking the
        item): the client's ``call_timeout`` runs from then, so time queued behind busy
        workers counts too. Returns a :class:`ChatCompletion` (a
        :class:`~deepseek_pool.FIMCompletion` for ``"fim"``).
        """
        if endpoint != "fim":
            normalize_messages(messages)  # bad input fails here, before any limiter or network
        for key in _POOL_OWNED & params.keys():
            raise TypeError(f"{key!r} is set by the pool; use DeepSeekPool(on_chunk=...) or its limiter instead")
        stopped = self._stopped_by
        if stopped is not None:
            raise status_error(stopped, f"not sent: an earlier call of this pool was answered {stopped}")
        spend = self.spend
        model = params.get("model") or self.client.model
        if spend is not None:
            spend.price(model)  # an unpriced model is refused before it waits anywhere
        tokens = estimate_tokens(messages, params)
        limiter = self.limiter
        start = time.monotonic()
        call_timeout = self.client.call_timeout
        deadline = None if call_timeout is None else (start if accepted is None else accepted) + call_timeout
        if deadline is not None and start >= deadline:
            raise APITimeoutError(f"not sent: the call's deadline (call_timeout={call_timeout} s) passed in the queue")
        wake = cancelled if drain is None else drain.wake
        try:
            permit = limiter.acquire(tokens, cancelled=wake, timeout=None if deadline is None else deadline - start)
        except TimeoutError:
            raise APITimeoutError(
                f"the call's deadline (call_timeout={call_timeout} s) passed while waiting for the limiter"
            ) from None
        except cf.CancelledError:
            if drain is not None and drain.stop.is_set() and not cancelled.is_set():
                raise DrainStopped("not sent: the pool is draining (stop was set); run this call again later") from None
            raise
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
                )
            except BaseException:
                limiter.release(permit, tokens_used=0, ok=False)
                raise
        begun = time.monotonic()
        result.started_at = begun
        result.queued = begun - start
        control = PoolCall(self, permit, tokens, deadline, cancelled, drain, result)
        handle = control.handle
        completion: Any = None
        self._handles[handle] = cancelled  # a dict store: atomic, no lock (see _untrack)
        if cancelled.is_set():
            handle.abort()
        try:
            if endpoint == "fim":
                assert isinstance(messages, str)  # route_request made it the FIM prompt
                fim_params = dict(params)
                completion = self.client.fim(messages, fim_params.pop("suffix", None), control=control, **fim_params)
            elif params.get("stream"):
                completion = self._stream(result, messages, dict(params), control, endpoint == "beta")
            else:
                completion = self.client.chat(messages, control=control, beta=endpoint == "beta", **params)
            return completion
        finally:
            del self._handles[handle]
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
            if reservation is not None:
                assert spend is not None
                spend.settle(reservation, usage=usage, charge=used is None)

    def _note_stop(self, status: int) -> None:
        if self._stopped_by is None:
            self._stopped_by = status
            log.error("stopping: DeepSeek answered %d; calls not yet sent now fail without being sent", status)

    def _stream(
        self,
        result: Result,
        messages: Messages,
        params: Dict[str, Any],
        control: CallControl,
        beta: bool = False,
    ) -> ChatCompletion:
        params.pop("stream")
        user_callback = self.on_chunk
        # The control records the first token (PoolCall.first_token). Without a user
        # callback nobody watches the chunks: the client's shared reader may read them,
        # and a broken stream may be retried from the start.
        on_chunk = None if user_callback is None else partial(user_callback, result)
        return self.client.chat(
            messages,
            stream=True,
            on_chunk=on_chunk,
            restart_streams=user_callback is None,
            control=control,
            beta=beta,
            **params,
        )

    def _finish(self, result: Result) -> None:
        completion = result.completion
        usage = completion.usage if result.error is None and completion is not None else None
        retried = result.attempts > 1
        # One short critical section per item and no call inside it: a thread that the
        # interpreter switches out while holding a lock shared by every worker makes them
        # all queue behind it, and that convoy grows with max_workers.
        with self._lock:
            self._done += 1
            if result.error is None:
                self._ok += 1
            else:
                self._failed += 1
            if retried:
                self._retried += 1
            if usage is not None:
                total = self._usage  # this pool's own Usage object, summed in place
                total.prompt_tokens += usage.prompt_tokens
                total.completion_tokens += usage.completion_tokens
                total.total_tokens += usage.total_tokens
                total.prompt_cache_hit_tokens += usage.prompt_cache_hit_tokens
                total.prompt_cache_miss_tokens += usage.prompt_cache_miss_tokens
                total.reasoning_tokens += usage.reasoning_tokens
        callback = self.on_result
        if callback is not None:
            try:
                callback(result)
            except Exception:  # a progress hook must never break the batch
                log.exception("on_result callback failed for item %d", result.index)

    def _abort_running(self, event: Optional[threading.Event] = None) -> None:
        """Break the connections of running calls (all, or those of one iteration)."""
        handles = [h for h, e in list(self._handles.items()) if event is None or e is event]
        for handle in handles:
            handle.abort()

    # -- public surface ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._closing.is_set():
            raise RuntimeError("this DeepSeekPool is closed")

    def _track(self, future: cf.Future[Any]) -> None:
        with self._lock:
            self._submitted += 1
        self._futures.add(future)
        future.add_done_callback(self._untrack)

    def _untrack(self, future: cf.Future[Any]) -> None:
        # ``_futures`` and ``_handles`` are changed and copied only by single set and dict
        # operations, which CPython makes atomic, so they need no lock: taking the pool's
        # lock for them would add two more critical sections per item (see _finish).
        self._futures.discard(future)
        if future.cancelled():
            with self._lock:
                self._cancelled += 1

    def submit(self, messages: Messages, **params: Unpack[SubmitParams]) -> cf.Future[ChatCompletion]:
        """Start one chat call and return its ``concurrent.futures.Future`` at once.

        The future's ``result()`` is the :class:`ChatCompletion` or raises the error;
        ``asyncio.wrap_future`` makes it awaitable. ``params`` are typed by
        :class:`~deepseek_pool.SubmitParams`: the chat fields, ``model``, ``stream`` and
        ``timeout``; others go in ``extra_body={...}``. ``custom_id`` may not be given here.
        """
        self._check_open()
        for key in POOL_KEYS & params.keys():
            raise TypeError(f"{key!r} is a batch key; use as_completed()/map() for it")
        result = Result(-1, None, messages)
        future = self._executor.submit(
            self._submitted_call, result, messages, cast("Dict[str, Any]", params), time.monotonic()
        )
        self._track(future)
        return future

    def _submitted_call(
        self, result: Result, messages: Messages, params: Dict[str, Any], accepted: float
    ) -> ChatCompletion:
        try:
            result.completion = self._call(result, messages, params, self._closing, accepted=accepted)
            return result.completion
        except BaseException as err:
            result.error = err
            raise
        finally:
            self._finish(result)

    def as_completed(
        self, requests: Iterable[Union[ChatRequest, Request]], *, stop: Optional[threading.Event] = None
    ) -> Iterator[Result]:
        """Run ``requests`` and yield one :class:`Result` per request as each finishes.

        A request is a str, a list of messages, a dict typed by :class:`~deepseek_pool.ChatRequest`
        (``messages`` or ``prompt``, ``custom_id``, chat fields) or an OpenAI batch line.

        The input is consumed lazily: at most ``window`` requests are submitted and
        unfinished at once. Errors stay on their Result. Leaving the loop early
        (``break``, an exception, Ctrl-C) cancels what this iteration queued but had
        not started and aborts its calls still running (their connections are closed),
        so the ``with`` block is left at once.

        :param stop: a graceful stop, a drain (a batch runner's first Ctrl-C): once set,
            no request of any kind is sent. No more input is taken, queued requests that
            have not started are dropped, attempts already sent finish and are yielded; a
            call that would now need another attempt (a retry, or a first attempt after a
            rate-limit wait) ends with :class:`DrainStopped` instead, and is yielded with
            it: it was never answered. Waits notice the stop within
            :data:`STOP_POLL_INTERVAL` seconds; attempts check it before they are sent.
        """
        self._check_open()
        done: queue.SimpleQueue[cf.Future[Result]] = queue.SimpleQueue()
        cancelled = threading.Event()
        drain = Drain(stop) if stop is not None else None
        pending: set[cf.Future[Result]] = set()
        source = enumerate(requests)
        exhausted = False
        with self._lock:
            self._iterations[cancelled] = drain
        submit = self._executor.submit
        run = self._run
        monotonic = time.monotonic

        def feed() -> bool:
            """Submit the next request; False when the input is exhausted."""
            try:
                index, request = next(source)
            except StopIteration:
                return False
            try:
                custom_id, messages, params, endpoint = route_request(request)
            except (TypeError, ValueError) as err:
                result = Result(index, request.get("custom_id") if isinstance(request, Mapping) else None, request)
                result.error = err
                future: cf.Future[Result] = cf.Future()
                self._finish(result)
                future.set_result(result)
                with self._lock:
                    self._submitted += 1
            else:
                item = Result(index, custom_id, request)
                future = submit(partial(run, item, messages, params, cancelled, endpoint, drain, monotonic()))
                self._track(future)
            pending.add(future)
            future.add_done_callback(done.put)
            return True

        get = done.get
        collect = self.collect_interval
        slow = collect * COLLECT_AFTER
        linger = False  # the last result was a slow call's: its neighbours are worth a moment
        try:
            while True:
                if drain is not None and drain.stop.is_set() and not drain.wake.is_set():
                    drain.wake.set()  # end the limiter waits and backoff sleeps of this iteration's calls
                    self.limiter.wake_waiters()
                if stop is not None and stop.is_set() and not exhausted:
                    exhausted = True
                    # Cancelling calls done-callbacks at once: the dropped futures go
                    # through ``done`` and are skipped below like any cancelled one.
                    for future in list(pending):
                        future.cancel()
                while not exhausted and len(pending) < self.window:
                    if self._closing.is_set() or cancelled.is_set():
                        exhausted = True
                        break
                    exhausted = not feed()
                if not pending:
                    return
                if linger and done.empty():
                    linger = False
                    _sleep(collect)  # results finishing meanwhile come in this one wake-up
                if stop is None:
                    future = get()
                else:
                    try:
                        future = get(timeout=STOP_POLL_INTERVAL)
                    except queue.Empty:
                        continue
                pending.discard(future)
                if future.cancelled():
                    continue
                result = future.result()
                linger = collect > 0 and result.elapsed >= slow
                yield result
        finally:
            with self._lock:
                self._iterations.pop(cancelled, None)
            if pending:
                cancelled.set()
                if drain is not None:
                    drain.wake.set()
                self.limiter.wake_waiters()
                running = [future for future in pending if not future.cancel()]
                self._abort_running(cancelled)
                # Aborted calls end within moments; waiting for them keeps the stats true
                # (nothing of this loop is left in flight) and the limiter's slots given back.
                cf.wait(running, timeout=ABORT_WAIT)

    def map(self, requests: Iterable[Union[ChatRequest, Request]]) -> List[Result]:
        """Run ``requests`` and return their :class:`Result` objects in input order."""
        results = list(self.as_completed(requests))
        results.sort(key=lambda result: result.index)
        return results

    @property
    def stats(self) -> PoolStats:
        """A snapshot of the counters: submitted, done, ok, failed, retried, usage."""
        with self._lock:
            usage = self._usage + Usage()  # a copy: the pool sums into its own in place
            return PoolStats(self._submitted, self._done, self._ok, self._failed, self._retried, usage, self._cancelled)

    def close(self, *, wait: bool = True, cancel: bool = False) -> None:
        """Stop accepting work; ``cancel`` drops what has not started; ``wait`` waits for the rest.

        An executor passed in by the caller is never shut down: only this pool's own
        calls are cancelled or waited for.
        """
        self._closed = True
        futures = list(self._futures)
        with self._lock:
            iterations = list(self._iterations.items())
        if cancel:
            self._closing.set()
            for event, drain in iterations:
                event.set()
                if drain is not None:
                    drain.wake.set()
            self.limiter.wake_waiters()
            for future in futures:
                future.cancel()
            self._abort_running()
        if self._owns_executor:
            self._executor.shutdown(wait=wait, cancel_futures=cancel)
        elif wait:
            cf.wait(futures)
        if not self._connections_released:
            self._connections_released = True
            self.client.release_connections(self.max_workers)
        if self._owns_client and not self._client_closed and (wait or cancel):
            self._client_closed = True
            self.client.close()

    def __enter__(self) -> DeepSeekPool:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Like ThreadPoolExecutor: a normal exit waits for submitted calls; an exit by
        # an exception (Ctrl-C included) cancels what has not started, then waits only
        # for the calls already running.
        self.close(wait=True, cancel=exc_type is not None)
