"""The shared stream reader: one thread reads the bodies of every aggregated stream.

A streamed answer read by its own thread costs a thread wake-up per event: the
``recv`` returns, the thread takes the GIL, decodes one event, and blocks again.
DeepSeek sends an event every few milliseconds per stream, so with hundreds of
streams most of an event's CPU is those wake-ups, not the decoding. An event loop
pays one wake-up for every socket that became readable meanwhile.

When nobody looks at the chunks as they come (``chat(stream=True)`` without
``on_chunk``, and a pool's streams without its ``on_chunk``), the calling thread hands
the body to :data:`READER` and sleeps until the answer is whole. The reader's one
thread waits on an ``epoll`` set of every such socket, and for each that is readable
reads what it holds, strips the chunked framing and adds the events to its answer
(:meth:`~deepseek_pool.wire.stream.ChatStream.feed`). Every guarantee of a stream read
in its own thread holds, by the same code: the watchdog still ends an attempt at its
deadline and a silent read at its read timeout (it breaks the connection, and the
reader sees the socket end), an abort still breaks only its own call's connection,
``[DONE]`` still gets :data:`~deepseek_pool.wire.stream.STREAM_END_GRACE`, and a body
read to its end gives its connection back to the pool. What the reader runs for a body
(its call control's hooks, such as ``first_token``) runs in a copy of the context of the
thread that handed the body over, as it would have in that thread.

Only bodies that :func:`~deepseek_pool.wire.body.plain_chunked` accepts on platforms
with ``epoll`` (Linux) are taken; the others are read by the calling thread as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import select
import threading
import time
from typing import Any, Dict, List, Optional

from ..errors import APIConnectionError, APITimeoutError
from ..forks import ProcessBound, reset_after_fork
from .body import body_begins, finish_chunked, plain_chunked, reporting_silence, watchable
from .calls import WATCHDOG, Silence
from .chunked import Dechunker
from .stream import STREAM_END_GRACE, ChatStream

__all__ = ["READER", "StreamReader"]

log = logging.getLogger(__name__)

#: Bytes asked of one ``recv``: what the socket file would have read at once.
READ_SIZE = 8192
#: Seconds between a waiting caller's looks that the reader thread is still alive.
LIVENESS_INTERVAL = 5.0
_EPOLL = getattr(select, "epoll", None)
_READABLE = getattr(select, "EPOLLIN", 1)

try:
    from ssl import SSLWantReadError
except ImportError:  # Python built without ssl: no TLS socket can reach here

    class SSLWantReadError(OSError):  # type: ignore[no-redef]
        pass


def _read_now(sock: Any) -> bytes:
    """What ``sock`` (non-blocking) holds now; ``b""`` when the connection ended.

    A TLS socket may hold decrypted bytes that epoll cannot see: they are read too. They can
    only be there when the read filled its buffer: one ``recv`` of a TLS socket returns the
    rest of one record, or ``READ_SIZE`` bytes of it (so the ``pending()`` call, a third of
    a microsecond and a trip through ``ssl.py``, is made only then).

    :raises BlockingIOError: nothing to read yet (``SSLWantReadError`` is turned into it).
    """
    try:
        data: bytes = sock.recv(READ_SIZE)
        if len(data) == READ_SIZE:  # a TLS record may hold more; a shorter read emptied its record
            pending = getattr(sock, "pending", None)
            while pending is not None and pending():
                data += sock.recv(READ_SIZE)
    except SSLWantReadError:
        raise BlockingIOError("no whole TLS record yet") from None
    return data


class _Body:
    """One body the reader is reading: its socket, its framing, its stream, and how it ended."""

    __slots__ = (
        "_fp",
        "_framing",
        "_grace",
        "_lock",
        "_raw",
        "context",
        "deadline",
        "done",
        "ended",
        "error",
        "fd",
        "silence",
        "sock",
        "stream",
        "withdrawn",
    )

    def __init__(self, stream: ChatStream, fp: Any, sock: Any, silence: Optional[Silence]) -> None:
        self.stream = stream
        self._raw = stream.response.raw
        self._fp = fp
        self._framing = Dechunker(self._raw)
        self.sock = sock
        self.fd = sock.fileno()
        self.silence = silence
        self.deadline = stream.attempt.deadline
        self.done = False  # [DONE] came: what follows is only the end of the body
        self._grace: Any = None  # the watchdog's watch over that end
        self.error: Optional[BaseException] = None
        #: set when the body is over, read to its end or failed
        self.ended = threading.Event()
        self.withdrawn = False  # the caller gave up on it (Ctrl-C): touch nothing
        self._lock = threading.Lock()
        #: the caller's context, in which the reader thread reads this body (its hooks see it)
        self.context = contextvars.copy_context()

    def take(self, data: bytes) -> bool:
        """What one read brought (``b""``: the connection ended); True once the body is whole.

        The connection is left as it is: :meth:`end` gives it back, once the socket has
        left the reader's epoll set (a connection back in the pool may carry another call).
        """
        framing = self._framing
        payload = framing.feed(data) if data else framing.end()
        if payload and not self.done and self.stream.feed(payload):
            self.done = True
            self._grace = WATCHDOG.watch(time.monotonic() + STREAM_END_GRACE, self.stream.attempt.handle)
        if framing.done:
            return True
        now = time.monotonic()
        if self.silence is not None:
            self.silence.last = now  # the next read begins: the silence counts from here
        if now >= self.deadline:
            raise APITimeoutError("the request's total deadline passed while the server was still sending")
        return False

    def step(self) -> bool:
        """The socket is readable: read it (the reader thread); True once the body is over."""
        with self._lock:
            if self.withdrawn:
                return True
            try:
                data = _read_now(self.sock)
            except BlockingIOError:
                return False
            return self.take(data)

    def end(self, error: Optional[BaseException]) -> None:
        """The body is over (``error``: how it broke); its socket is out of the epoll set.

        A whole body gives its connection back to the pool; one that broke after ``[DONE]``
        only closes it (the answer came); any other failure is kept for the caller, who
        closes the connection. Then the caller is woken.
        """
        with self._lock:
            if not self.withdrawn:
                if self._grace is not None:
                    WATCHDOG.cancel(self._grace)
                    self._grace = None
                if error is None:
                    try:
                        finish_chunked(self._raw, self._fp, reuse=self._framing.clean)
                    except Exception as err:  # the caller hears of it
                        self.error = err
                elif self.done and isinstance(error, Exception):
                    self._raw.close()
                else:
                    self.error = error
        self.ended.set()

    def withdraw(self) -> None:
        """The caller stops waiting (an interrupt): the reader must not touch the connection again."""
        with self._lock:
            self.withdrawn = True
            if self._grace is not None:
                WATCHDOG.cancel(self._grace)
                self._grace = None


class StreamReader(ProcessBound):
    """One daemon thread that reads many streamed bodies, each readable socket once per wake.

    :meth:`read` blocks its caller until the body is over; the thread starts with the
    first body and lives as long as the process (like the watchdog).
    """

    def __init__(self) -> None:
        self._bodies: Dict[int, _Body] = {}
        self._epoll: Any = None
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()
        #: what stopped the last reader thread (None: none stopped)
        self._stopped_by: Optional[BaseException] = None

    @property
    def available(self) -> bool:
        """Whether this platform has what the reader needs (``epoll``)."""
        return _EPOLL is not None

    def read(self, stream: ChatStream) -> Optional[bool]:
        """Read ``stream``'s body to its end while the calling thread sleeps.

        :returns: whether ``data: [DONE]`` came, or None when the body is not one the
            reader takes (the caller then reads it itself; nothing was read).
        :raises: what broke the body, as reading it in this thread would have raised it.
        """
        self._check_process()
        raw = stream.response.raw
        fp = plain_chunked(raw) if _EPOLL is not None else None
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        attempt = stream.attempt
        if fp is None or sock is None or not watchable(raw, attempt.handle):
            return None  # the reader ends a body at its deadline through the watchdog only
        silence = body_begins(raw, attempt.deadline, attempt.handle)
        body = _Body(stream, fp, sock, silence if isinstance(silence, Silence) else None)
        with reporting_silence(silence):
            try:
                sock.setblocking(False)
                if self._take_buffered(body, fp.fp, sock):
                    body.end(None)  # all of it came with the head
                else:
                    self._add(body)
                    self._wait(body)
            except BaseException as err:
                self._remove(body)  # before anything touches the connection
                if body.ended.is_set():
                    raise
                if not isinstance(err, Exception):  # Ctrl-C: the caller closes the connection
                    body.withdraw()
                    raise
                body.end(err)
            if body.error is not None:
                raise body.error
            return body.done

    @staticmethod
    def _take_buffered(body: _Body, file: Any, sock: Any) -> bool:
        """Read here what came with the head, which the socket will not signal; True if that was all."""
        try:
            buffered = file.peek()  # the socket file's buffer (or one recv when it is empty)
        except (BlockingIOError, SSLWantReadError):
            buffered = b""
        if buffered:
            file.read1(len(buffered))
        if getattr(sock, "pending", None) is not None and sock.pending():
            buffered += _read_now(sock)
        return bool(buffered) and body.take(buffered)

    def _wait(self, body: _Body) -> None:
        """Sleep until the reader ends ``body``; if its thread stopped meanwhile, fail the body.

        The reader's loop keeps going whatever one body raises, so this only guards against a
        fault in the loop itself: the caller would otherwise sleep for ever, past its deadline.
        """
        while not body.ended.wait(LIVENESS_INTERVAL):
            thread = self._thread
            if thread is None or not thread.is_alive():
                raise APIConnectionError(
                    f"the stream reader thread stopped ({self._stopped_by!r}); the body was not read to its end"
                )

    def _add(self, body: _Body) -> None:
        epoll, thread = self._epoll, self._thread
        if epoll is None or thread is None or not thread.is_alive():
            epoll = self._start()
        self._bodies[body.fd] = body
        epoll.register(body.fd, _READABLE)

    def _remove(self, body: _Body) -> None:
        if self._bodies.get(body.fd) is body:
            del self._bodies[body.fd]
            with contextlib.suppress(OSError, ValueError):  # never added, or already gone
                self._epoll.unregister(body.fd)

    def _start(self) -> Any:
        with self._start_lock:
            if self._epoll is None:
                self._epoll = _EPOLL()  # type: ignore[misc]
            if self._thread is None or not self._thread.is_alive():
                # A new thread serves the same epoll set: bodies the last one left go on.
                self._thread = threading.Thread(target=self._run, name="deepseek-stream-reader", daemon=True)
                self._thread.start()
            return self._epoll

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as err:  # a fault in the loop itself; callers waiting see it (_wait)
            self._stopped_by = err
            log.exception("the stream reader thread stopped; the next stream starts another")

    def _serve(self) -> None:
        epoll, bodies = self._epoll, self._bodies
        while True:
            ready: List[Any] = epoll.poll()
            for fd, _ in ready:
                body = bodies.get(fd)
                if body is None:
                    continue
                error: Optional[BaseException] = None
                try:
                    over = body.context.run(body.step)
                except BaseException as err:  # the caller hears of it; the thread goes on
                    over, error = True, err
                if over:
                    self._remove(body)
                    body.end(error)

    def _after_fork(self) -> None:
        """The thread did not survive a fork, and the epoll set and sockets are the parent's."""
        epoll = self._epoll
        self._bodies = {}
        self._epoll = None
        self._thread = None
        self._start_lock = threading.Lock()
        self._stopped_by = None
        if epoll is not None:
            epoll.close()


#: The process's one stream reader.
READER = StreamReader()
reset_after_fork(READER)
