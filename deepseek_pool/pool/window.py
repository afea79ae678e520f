"""The bounded window behind ``as_completed`` and ``map``: input pulled lazily, results in completion order.

At most ``window`` requests of one iteration are submitted and unfinished at once, so a
generator of a million requests runs in memory bounded by the window, and leaving the
loop early cancels what it queued and aborts what it started. Each call runs in a copy of
the context of the thread iterating when the window takes its item (``contextvars``: a
trace's parent, a logging context, a tenant id), as ``submit`` does. What the window needs of
the pool is named here as a Protocol (:class:`WindowOwner`), so the pool imports its
window and never the other way round.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import queue
import threading
import time
from functools import partial
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Protocol, Union

from ..budget.limiter import Limiter
from ..params import ChatRequest
from .call import Drain
from .items import Request, Result, route_request
from .worker import PoolWorker, run_item

__all__ = [
    "ABORT_WAIT",
    "COLLECT_AFTER",
    "COLLECT_INTERVAL",
    "STOP_POLL_INTERVAL",
    "WINDOW_PER_WORKER",
    "WindowOwner",
    "bounded_window",
]

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
_sleep = time.sleep  # as_completed's collecting wait (a name of its own, for the tests to watch)


class WindowOwner(PoolWorker, Protocol):
    """What the window needs of its pool (a :class:`~deepseek_pool.pool.pool.DeepSeekPool`)."""

    window: int
    collect_interval: float
    limiter: Limiter
    _lock: threading.Lock
    _iterations: Dict[threading.Event, Optional[Drain]]
    _executor: cf.Executor
    _submitted: int

    def _track(self, future: cf.Future[Any]) -> None: ...

    def _abort_running(self, event: Optional[threading.Event] = None) -> None: ...


def bounded_window(
    pool: WindowOwner, requests: Iterable[Union[ChatRequest, Request]], stop: Optional[threading.Event]
) -> Iterator[Result]:
    """The body of :meth:`~deepseek_pool.pool.pool.DeepSeekPool.as_completed`, once the pool is known to be open."""
    done: queue.SimpleQueue[cf.Future[Result]] = queue.SimpleQueue()
    cancelled = threading.Event()
    drain = Drain(stop) if stop is not None else None
    pending: set[cf.Future[Result]] = set()
    source = enumerate(requests)
    exhausted = False
    with pool._lock:
        pool._iterations[cancelled] = drain
    submit = pool._executor.submit
    monotonic = time.monotonic
    copy_context = contextvars.copy_context

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
            pool._finish(result)
            future.set_result(result)
            with pool._lock:
                pool._submitted += 1
        else:
            item = Result(index, custom_id, request)
            call = partial(run_item, pool, item, messages, params, cancelled, endpoint, drain, monotonic())
            future = submit(copy_context().run, call)  # a copy each: a context runs in one thread at a time
            pool._track(future)
        pending.add(future)
        future.add_done_callback(done.put)
        return True

    get = done.get
    collect = pool.collect_interval
    slow = collect * COLLECT_AFTER
    linger = False  # the last result was a slow call's: its neighbours are worth a moment
    try:
        while True:
            if drain is not None and drain.stop.is_set() and not drain.wake.is_set():
                drain.wake.set()  # end the limiter waits and backoff sleeps of this iteration's calls
                pool.limiter.wake_waiters()
            if stop is not None and stop.is_set() and not exhausted:
                exhausted = True
                # Cancelling calls done-callbacks at once: the dropped futures go
                # through ``done`` and are skipped below like any cancelled one.
                for future in list(pending):
                    future.cancel()
            while not exhausted and len(pending) < pool.window:
                if pool._closing.is_set() or cancelled.is_set():
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
        with pool._lock:
            pool._iterations.pop(cancelled, None)
        if pending:
            cancelled.set()
            if drain is not None:
                drain.wake.set()
            pool.limiter.wake_waiters()
            running = [future for future in pending if not future.cancel()]
            pool._abort_running(cancelled)
            # Aborted calls end within moments; waiting for them keeps the stats true
            # (nothing of this loop is left in flight) and the limiter's slots given back.
            cf.wait(running, timeout=ABORT_WAIT)
