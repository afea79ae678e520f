"""``DeepSeekPool``: many chat calls at once from synchronous code.

Each call is a ``functools.partial`` of one worker function
(:mod:`~deepseek_pool.pool.worker`), bound to that request's parameters and submitted to
a ``ThreadPoolExecutor``; results come back through the futures' done-callbacks in
completion order. Input is pulled lazily through a bounded window
(:mod:`~deepseek_pool.pool.window`), so a generator of a million requests runs in memory
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
import contextvars
import logging
import threading
import time
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Union, Unpack, cast

from ..budget.limiter import Limiter
from ..cache.response_cache import CacheLike, ResponseCache, open_cache
from ..client import DeepSeekClient
from ..errors import ConfigurationError
from ..forks import ProcessBound, reset_after_fork
from ..messages import Messages
from ..models import ModelPrice
from ..money.offpeak import OffPeakOnly
from ..money.spend import SpendCap
from ..params import ChatRequest, SubmitParams
from ..process import check_open_files, hint_large_pool
from ..types import ChatCompletion, Usage
from ..wire.calls import CallHandle
from .call import Drain, DrainStopped
from .items import BATCH_URLS, POOL_KEYS, PoolStats, Request, Result, Routed, parse_request, route_request
from .warming import WarmPrefix, warm_first
from .window import COLLECT_INTERVAL, WINDOW_PER_WORKER, bounded_window
from .worker import PoolChunkCallback, run_submitted

__all__ = [
    "BATCH_URLS",
    "DeepSeekPool",
    "DrainStopped",
    "PoolStats",
    "Request",
    "Result",
    "Routed",
    "WarmPrefix",
    "parse_request",
    "route_request",
]

log = logging.getLogger(__name__)

ResultCallback = Callable[["Result"], None]

#: Statuses after which a pool sends nothing more: the key is wrong, the balance is spent.
STOP_STATUSES = frozenset({401, 402})
_NOT_GIVEN: Any = object()  # the deprecated switch_interval=/gc_threshold= were not passed


class DeepSeekPool(ProcessBound):
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
    :param share: the guaranteed share of ``limiter``'s budget that this pool's calls take
        (one of its ``shares``, say ``"batch"``); the pool runs on
        ``limiter.for_share(share)``, which :attr:`limiter` then is.
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
        :data:`~deepseek_pool.pool.window.COLLECT_AFTER` times this (0.5 s by default), ``as_completed`` and ``map``
        wait this long for the results finishing around it before they block: with
        thousands of slow calls in flight, waking the consuming thread for every single
        result costs the process more CPU than the calls themselves add. 0 never waits.
    :param warm_prefix: warm DeepSeek's prompt cache before ``as_completed``/``map`` fan
        out: find the leading messages (with the tools) that their first ``window`` requests
        share, send two one-token requests carrying them, wait for the cache to build
        (3 s), then start the rest, which then pay that prefix at the cache-hit price.
        ``True`` or a :class:`~deepseek_pool.pool.warming.WarmPrefix` (its ``wait`` and
        ``min_tokens``). A prefix too short to be cached is not warmed (logged). See
        :mod:`deepseek_pool.pool.warming`; ``stats.cache_hit_share`` shows whether it worked.
    :param off_peak_only: start no call in DeepSeek's peak hours (which cost twice as
        much): a call about to start in a peak window waits until it ends, calls already
        running finish, and the log says when the pool goes on. ``True`` or an
        :class:`~deepseek_pool.money.offpeak.OffPeakOnly` (its clock, calendar and
        listeners); the spend cap then reads the same clock. See :mod:`deepseek_pool.money.offpeak`.
    :param cache: a response cache for the pool's calls (opt-in): a
        :class:`~deepseek_pool.ResponseCache` or a URI the pool opens and closes
        (``sqlite:////abs/path.db``, ``redis://host:6379/0``, ``?ttl=SECONDS``); None: the
        client's (``DeepSeekClient(cache=...)``), False: none. A request answered before,
        with the very same body, is served from it before the limits: no slot, no spend,
        nothing sent (``Result.cached``, ``stats.cached``); a request's ``cache: False``
        skips it. See :mod:`deepseek_pool.cache`.
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
        warm_prefix: Union[bool, WarmPrefix] = False,
        off_peak_only: Union[bool, OffPeakOnly] = False,
        cache: CacheLike = None,
        share: Optional[str] = None,
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if not isinstance(warm_prefix, (bool, WarmPrefix)):
            raise TypeError(f"warm_prefix must be True, False or a WarmPrefix, got {warm_prefix!r}")
        if not isinstance(off_peak_only, (bool, OffPeakOnly)):
            raise TypeError(f"off_peak_only must be True, False or an OffPeakOnly, got {off_peak_only!r}")
        if limiter is not None and (max_in_flight is not None or rpm is not None or tpm is not None):
            raise ValueError("give either limiter= or max_in_flight/rpm/tpm, not both")
        if share is not None:
            if limiter is None:
                raise ConfigurationError(f"share={share!r} needs limiter=, a Limiter with shares=")
            limiter = limiter.for_share(share)  # an unknown share is refused here, before anything is sent
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
        #: the off-peak gate (None: calls start at any hour)
        self.off_peak: Optional[OffPeakOnly] = (
            off_peak_only if isinstance(off_peak_only, OffPeakOnly) else OffPeakOnly() if off_peak_only else None
        )
        if max_cost is not None:
            gate = self.off_peak
            self.spend = (
                SpendCap(max_cost, prices=prices)
                if gate is None
                else SpendCap(max_cost, prices=prices, clock=gate.clock.now, calendar=gate.calendar)
            )
        elif prices:
            raise ValueError("prices= is only used with max_cost=")
        self.limiter = limiter or Limiter(max_in_flight=max_in_flight, rpm=rpm, tpm=tpm, retry_budget=retry_budget)
        self._owns_client = client is None
        self.client = client if client is not None else DeepSeekClient()
        if self.spend is not None:
            self.spend.check_models([self.client.model])  # an unpriced default model is refused up front
        #: the response cache of the pool's calls (None: none)
        self.cache: Optional[ResponseCache] = getattr(self.client, "cache", None)
        self._owns_cache = False
        try:
            if cache is not None:
                self.cache, self._owns_cache = open_cache(cache)
        except BaseException:
            if self._owns_client:
                self.client.close()
            raise
        self.max_workers = max_workers
        self.client.reserve_connections(max_workers)
        self._connections_released = False
        self._stopped_by: Optional[int] = None
        self._owns_executor = executor is None
        self._executor = executor or cf.ThreadPoolExecutor(max_workers, thread_name_prefix="deepseek-pool")
        self.window = window or WINDOW_PER_WORKER * max_workers
        self.collect_interval = float(collect_interval)
        #: how ``as_completed``/``map`` warm the prompt cache first (None: they do not)
        self.warm_prefix: Optional[WarmPrefix] = (
            warm_prefix if isinstance(warm_prefix, WarmPrefix) else WarmPrefix() if warm_prefix else None
        )
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
        self._submit_handles: Dict[cf.Future[Any], CallHandle] = {}
        #: each submitted call's own stop, set by abort() and close(cancel=True), so waits end at once
        self._submit_stops: Dict[CallHandle, threading.Event] = {}
        self._submitted = 0
        self._done = 0
        self._ok = 0
        self._failed = 0
        self._retried = 0
        self._cancelled = 0
        self._cached = 0
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
        self._submit_handles = {}
        self._submit_stops = {}
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

    # -- what each call reports (its worker is in pool/worker.py) ------------------

    def _note_stop(self, status: int) -> None:
        if self._stopped_by is None:
            self._stopped_by = status
            log.error("stopping: DeepSeek answered %d; calls not yet sent now fail without being sent", status)

    def _finish(self, result: Result) -> None:
        completion = result.completion
        cached = result.cached
        usage = completion.usage if result.error is None and completion is not None and not cached else None
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
            if cached:
                self._cached += 1
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
        self._check_process()  # the entry of submit, as_completed and map
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
        handle = self._submit_handles.pop(future, None)
        if handle is not None:
            self._submit_stops.pop(handle, None)
        if future.cancelled():
            with self._lock:
                self._cancelled += 1

    def submit(self, messages: Messages, **params: Unpack[SubmitParams]) -> cf.Future[ChatCompletion]:
        """Start one chat call and return its ``concurrent.futures.Future`` at once.

        The future's ``result()`` is the :class:`ChatCompletion` or raises the error;
        ``asyncio.wrap_future`` makes it awaitable. ``params`` are typed by
        :class:`~deepseek_pool.SubmitParams`: the chat fields, ``model``, ``stream`` and
        ``timeout``; others go in ``extra_body={...}``. ``custom_id`` may not be given here.

        The call runs in a copy of the caller's ``contextvars`` context, taken here, as do
        the pool's callbacks for it (``on_chunk``, ``on_result``); the future's own
        done-callbacks run in the worker thread outside it, as ``concurrent.futures`` runs them.
        """
        self._check_open()
        for key in POOL_KEYS & params.keys():
            raise TypeError(f"{key!r} is a batch key; use as_completed()/map() for it")
        result = Result(-1, None, messages)
        handle = CallHandle()
        stop = self._submit_stops[handle] = threading.Event()  # before the call can run: close() sets it
        future = self._executor.submit(
            contextvars.copy_context().run,
            run_submitted,
            self,
            result,
            messages,
            cast("Dict[str, Any]", params),
            time.monotonic(),
            handle,
            stop,
        )
        self._submit_handles[future] = handle  # before _track: its done-callback drops it
        self._track(future)
        return future

    def abort(self, future: cf.Future[Any]) -> bool:
        """Stop the call behind a future of :meth:`submit`, whatever its state, from any thread.

        Unlike ``future.cancel()``, which drops only a call that has not started, this also
        breaks a running call's connection (DeepSeek stops generating, and billing, when
        the connection goes) and refuses any further attempt: the future then raises an
        :class:`~deepseek_pool.APIConnectionError` (``RetryCancelled``). A call still
        waiting (for the limiter, or for off-peak hours) stops waiting at once, unsent. This is what a web
        relay calls when its client hangs up (``asyncio.wrap_future`` cancels only calls
        that have not started). Returns False when the call had already finished.
        """
        if future.cancel():
            return True
        handle = self._submit_handles.get(future)
        if handle is None or future.done():
            return False
        handle.abort()
        stop = self._submit_stops.get(handle)
        if stop is not None:
            stop.set()
            self.limiter.wake_waiters()
        return True

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
            :data:`~deepseek_pool.pool.window.STOP_POLL_INTERVAL` seconds; attempts check it before they are sent.
        """
        self._check_open()
        if self.warm_prefix is not None:
            requests = warm_first(self, requests, self.window, self.warm_prefix, stop)
        yield from bounded_window(self, requests, stop)

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
            return PoolStats(
                self._submitted, self._done, self._ok, self._failed, self._retried, usage, self._cancelled, self._cached
            )

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
            for stop in list(self._submit_stops.values()):
                stop.set()
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
        if self._owns_cache and self.cache is not None and (wait or cancel):
            self._owns_cache = False
            self.cache.close()

    def __enter__(self) -> DeepSeekPool:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Like ThreadPoolExecutor: a normal exit waits for submitted calls; an exit by
        # an exception (Ctrl-C included) cancels what has not started, then waits only
        # for the calls already running.
        self.close(wait=True, cancel=exc_type is not None)
