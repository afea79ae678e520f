"""One call, as the client's retry loop sees it: its control, its abort handle, its deadlines.

* :class:`CallControl` -- what the caller of one call hands down: the call's deadline,
  a cancel event, the abort handle, and the hooks a pool uses (every attempt started,
  every response head seen, a stream's first token, every retry before it is made, the
  wait before a retry);
* :class:`CallHandle` -- lets another thread abort the exchange; it knows only the
  connection its call holds at this moment (the connection pool takes it back);
* :class:`Watchdog` -- one daemon thread that breaks an attempt's connection when the
  attempt's total deadline passes, so a response head trickled a byte at a time, a
  stalled TLS peer or a slow body cannot hold a call past its deadline.

Nothing here is per thread except :data:`sending`, which the client sets around the
one call into requests/urllib3 that opens or reuses a connection, so that the
connection can report itself to the handle (urllib3 gives no other way in).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import socket
import threading
import time
from typing import Any, Callable, List, NamedTuple, Optional, Protocol, Tuple

from ..errors import APIConnectionError, APITimeoutError, DeepSeekError
from ..forks import ProcessBound, reset_after_fork
from ..telemetry import CallTrace
from ..types import Usage
from .failures import translate_error

__all__ = [
    "Attempt",
    "CallControl",
    "CallHandle",
    "RetryCancelled",
    "RetryEvent",
    "RetryListener",
    "Silence",
    "Watchdog",
    "sending",
]


class RetryCancelled(APIConnectionError):
    """A call was abandoned because the pool running it is shutting down or cancelled it."""


class RetryEvent(NamedTuple):
    """What a listener learns before a retry: attempt ``attempt`` failed, next one in ``delay`` s."""

    attempt: int
    status: Optional[int]
    error: Optional[BaseException]
    delay: float
    kind: str  # "status", "connect", "read" or "timeout"


RetryListener = Callable[[RetryEvent], None]


class CallHandle:
    """Lets another thread abort the HTTP exchange of one call.

    A connection attaches itself when it is about to connect or send for this call
    (:meth:`attach`), and is detached when the connection pool takes it back
    (:meth:`detach`), so :meth:`abort` and :meth:`expire` can only ever break the
    connection the call holds at that moment, never one that now carries another call.
    An abort that lands while a connection is being opened takes effect before any
    byte of the request is sent.
    """

    __slots__ = ("_connection", "_lock", "aborted", "expired")

    def __init__(self) -> None:
        self._connection: Any = None
        self._lock = threading.Lock()
        #: set by :meth:`abort`; no further attempt starts
        self.aborted = False
        #: set by the watchdog when the current attempt's deadline passed
        self.expired = False

    def attach(self, connection: Any) -> None:
        """Called by the connection about to carry this call (before connect and before send)."""
        with self._lock:
            if self.aborted:
                raise RetryCancelled("the call was cancelled before it was sent")
            if self.expired:
                raise APITimeoutError("the attempt's total deadline passed before the request was sent")
            self._connection = connection
        connection._deepseek_handle = self

    def holds(self, connection: Any) -> bool:
        """Whether ``connection`` carries this call now (so :meth:`expire` can break it)."""
        return connection is not None and self._connection is connection

    def detach(self, connection: Any = None) -> None:
        """Forget ``connection`` (any connection when None): it no longer carries this call."""
        with self._lock:
            if connection is None or self._connection is connection:
                self._connection = None

    def abort(self) -> None:
        """Break the call's connection and refuse further attempts (idempotent, any thread)."""
        with self._lock:
            self.aborted = True
            self._break()

    def expire(self) -> None:
        """The current attempt's deadline passed: break its connection (the watchdog calls this)."""
        with self._lock:
            self.expired = True
            self._break()

    def interrupt(self, connection: Any) -> bool:
        """Break ``connection`` if this call still holds it (a read gone silent); True if it did.

        Unlike :meth:`expire` it refuses nothing: the call may retry on another connection.
        """
        with self._lock:
            if connection is None or self._connection is not connection:
                return False
            self._break()
            return True

    def _break(self) -> None:
        sock = getattr(self._connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing to break
                sock.shutdown(socket.SHUT_RDWR)


def release_connection(connection: Any) -> None:
    """The connection pool got ``connection`` back: it carries no call any more."""
    handle = getattr(connection, "_deepseek_handle", None)
    if handle is not None:
        connection._deepseek_handle = None
        handle.detach(connection)


class _Sending(threading.local):
    """The handle of the attempt this thread is sending, for the connection to attach to."""

    handle: Optional[CallHandle] = None


sending = _Sending()


class Expirable(Protocol):
    """What the watchdog can expire: a :class:`CallHandle`, or a :class:`Silence`."""

    def expire(self) -> None: ...


class _Watch:
    __slots__ = ("active", "deadline", "handle")

    def __init__(self, deadline: float, handle: Expirable) -> None:
        self.deadline = deadline
        self.handle = handle
        self.active = True


#: Cancelled watches kept in the heap before it is compacted (they also leave as their time comes).
_COMPACT_AT = 1024


class Watchdog(ProcessBound):
    """One daemon thread that expires attempts whose total deadline has passed.

    Watching costs a heap push under a lock; cancelling sets a flag. Cancelled entries
    leave the heap when their time comes, or in a compaction once they outnumber the
    live ones, so memory follows the attempts in flight, not the attempts made.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._heap: List[Tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._cancelled = 0
        self._thread: Optional[threading.Thread] = None

    def watch(self, deadline: float, handle: Expirable) -> _Watch:
        """Expire ``handle`` at ``deadline`` (monotonic seconds) unless cancelled first."""
        self._check_process()
        entry = _Watch(deadline, handle)
        with self._cond:
            heap = self._heap
            if self._cancelled > _COMPACT_AT and 2 * self._cancelled > len(heap):
                heap[:] = [item for item in heap if item[2].active]
                heapq.heapify(heap)
                self._cancelled = 0
            heapq.heappush(heap, (deadline, next(self._order), entry))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deepseek-watchdog", daemon=True)
                self._thread.start()
            elif heap[0][2] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: _Watch) -> None:
        """The attempt ended in time."""
        if entry.active:
            entry.active = False
            self._cancelled += 1  # a lost update only delays a compaction

    def _run(self) -> None:
        cond, heap, clock = self._cond, self._heap, self._clock
        while True:
            due: List[_Watch] = []
            with cond:
                while heap and not heap[0][2].active:
                    heapq.heappop(heap)
                    self._cancelled = max(0, self._cancelled - 1)
                if not heap:
                    cond.wait()
                    continue
                now = clock()
                while heap and heap[0][0] <= now:
                    entry = heapq.heappop(heap)[2]
                    if entry.active:
                        entry.active = False
                        due.append(entry)
                if not due:
                    cond.wait(heap[0][0] - now if heap else None)
                    continue
            for entry in due:
                entry.handle.expire()

    def _after_fork(self) -> None:
        """The thread did not survive a fork; the child starts afresh."""
        self._cond = threading.Condition(threading.Lock())
        self._heap = []
        self._cancelled = 0
        self._thread = None


#: The process's one watchdog.
WATCHDOG = Watchdog()
reset_after_fork(WATCHDOG)


class Silence:
    """A read timeout kept by the watchdog instead of the socket, which can then block.

    A socket with a timeout costs every read a ``poll`` before the ``recv``, and each of
    the two gives up and takes back the GIL: under hundreds of streams that is most of an
    event's cost. So the body is read from a blocking socket, the reader stamps
    :attr:`last` before each read, and the watchdog looks ``seconds`` after the last
    stamp: if no read began since, it breaks the connection (:attr:`fired`) and the
    reader reports the read timeout the socket would have raised; otherwise it looks
    again ``seconds`` after the newer stamp. While the caller holds a piece no read is
    waiting, and :attr:`last` is ``inf``: the caller's own time is not the server's silence.
    """

    __slots__ = ("_connection", "_lock", "_stopped", "_watch", "fired", "handle", "last", "seconds")

    def __init__(self, handle: CallHandle, connection: Any, seconds: float) -> None:
        self.handle = handle
        self.seconds = seconds
        self.fired = False
        self.last = time.monotonic()
        self._connection: Any = connection
        self._lock = threading.Lock()
        self._stopped = False
        self._watch: Optional[_Watch] = WATCHDOG.watch(self.last + seconds, self)

    def expire(self) -> None:
        """Called by the watchdog when the time is up, unless a read began since."""
        with self._lock:  # stop() waits for this, so nothing is broken after the read ended
            if self._stopped:
                return
            now = time.monotonic()
            due = self.last + self.seconds if self.last != math.inf else now + self.seconds
            if now < due:
                self._watch = WATCHDOG.watch(due, self)
                return
            self.fired = self.handle.interrupt(self._connection)

    def stop(self) -> None:
        """The body has been read (or the read failed): stop watching.

        The cancelled watch stays in the watchdog's heap until its time comes and refers to
        this object; dropping the way back (and the connection) leaves no cycle for the
        garbage collector to find when it leaves.
        """
        with self._lock:
            self._stopped = True
            watch, self._watch, self._connection = self._watch, None, None
        if watch is not None:
            WATCHDOG.cancel(watch)


class Attempt:
    """One attempt's total deadline, watched by the watchdog; ended exactly once.

    The watchdog breaks the attempt's connection when the deadline passes, so a read
    that blocks (a trickled head, a stalled body) fails, and :meth:`translate` then
    reports it as the timeout it is.
    """

    __slots__ = ("_watch", "deadline", "handle", "trace")

    def __init__(self, deadline: float, handle: CallHandle, trace: Optional[CallTrace] = None) -> None:
        self.deadline = deadline
        self.handle = handle
        #: the call's telemetry (None when nothing is recorded): a stream notes its first chunk there
        self.trace = trace
        handle.expired = False
        self._watch = WATCHDOG.watch(deadline, handle) if deadline != math.inf else None

    @property
    def expired(self) -> bool:
        return self.handle.expired

    def translate(self, err: BaseException) -> DeepSeekError:
        if self.handle.expired and not isinstance(err, DeepSeekError):
            return APITimeoutError(f"the attempt's total deadline passed ({type(err).__name__}: {err})")
        return translate_error(err)

    def end(self) -> None:
        """The attempt is over: stop watching it and forget its connection."""
        watch = self._watch
        if watch is not None:
            self._watch = None
            WATCHDOG.cancel(watch)
        self.handle.detach()


#: Longest a wait before a retry sleeps before it looks at the call's handle again.
ABORT_POLL_INTERVAL = 0.1


class CallControl:
    """What the caller of one call hands down to the client's retry loop.

    Plain calls get a default one; :class:`~deepseek_pool.DeepSeekPool` passes a
    subclass whose hooks feed its limiter. The hooks run in the calling thread.

    :param deadline: ``time.monotonic()`` by which the whole call must end (None: the
        client's ``call_timeout`` counted from the start of the call, if any).
    :param cancelled: once set, no further attempt or wait starts (:class:`RetryCancelled`).
    :param handle: the :class:`CallHandle` another thread may abort (made when None).
    :param on_retry: told of each retry before it is made; may raise
        :class:`~deepseek_pool.errors.RetryBudgetExceeded` to refuse it.
    """

    #: ``time.monotonic()`` when the call began, if before its first attempt (a pool's call
    #: waits at its limiter first): its telemetry span and duration count from then.
    started: Optional[float] = None

    def __init__(
        self,
        *,
        deadline: Optional[float] = None,
        cancelled: Optional[threading.Event] = None,
        handle: Optional[CallHandle] = None,
        on_retry: Optional[RetryListener] = None,
    ) -> None:
        self.deadline = deadline
        self.cancelled = cancelled
        self.handle = handle if handle is not None else CallHandle()
        self.on_retry = on_retry

    def check(self) -> None:
        """Raise :class:`RetryCancelled` if the call was cancelled or aborted."""
        if self.handle.aborted or (self.cancelled is not None and self.cancelled.is_set()):
            raise RetryCancelled("not sent: the call was cancelled (its pool is shutting down)")

    def attempt_started(self, attempt: int) -> None:
        """Attempt ``attempt`` (1-based) is about to be sent."""

    def response_received(self, status: int, retry_after: Optional[float], error: Optional[Exception]) -> None:
        """A response arrived (every attempt's, the last one's included).

        For an error status this is called once its body is read: ``error`` is the
        :class:`~deepseek_pool.errors.APIStatusError` it makes (its message may name
        the account's concurrency cap); for a success, at the head, with None.
        """

    def attempt_billed(self, usage: Optional[Usage]) -> None:
        """An attempt's 2xx answer was read, whether it is returned or retried (a 200 cut
        short by ``insufficient_system_resource`` is billed, then retried): ``usage`` is
        what it reported, None when it reported none. Not called for an attempt whose
        answer was never read whole (an error status, a timeout, a cut stream)."""

    def first_token(self, at: float) -> None:
        """A streamed attempt's first chunk with content (or reasoning) arrived at ``at``
        (``time.monotonic()``). It may run on the stream reader's thread: keep it short."""

    def before_retry(self, event: RetryEvent) -> None:
        """A retry is about to be waited for; raise RetryBudgetExceeded to refuse it."""
        if self.on_retry is not None:
            self.on_retry(event)

    def wait(self, delay: float, deadline: float) -> None:
        """Sleep ``delay`` seconds before the next attempt, ending early if cancelled.

        ``deadline`` is the call's; a wait that would pass it raises
        :class:`~deepseek_pool.errors.APITimeoutError` (the base version never does,
        as the loop only retries when the delay fits).
        """
        cancelled = self.cancelled
        end = time.monotonic() + delay
        while True:
            self.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            # An abort through the handle has no event to wake this wait: look every so often.
            if cancelled is None:
                time.sleep(min(left, ABORT_POLL_INTERVAL))
            elif cancelled.wait(min(left, ABORT_POLL_INTERVAL)):
                raise RetryCancelled("not retried: the pool is shutting down")
