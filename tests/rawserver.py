"""A tiny raw-socket HTTP server that replays exact byte scripts, for client tests.

The package's FakeDeepSeek speaks correct HTTP; this one sends whatever bytes a
test scripts, so tests can cover malformed, split, cut and trickling responses.
Used as::

    server = RawServer(script([respond(200, b'{"ok": true}')], close=False))
    with server as (host, port):
        requests.get(f"http://{host}:{port}/")
    assert server.connections == 1

Each accepted connection gets a daemon thread that reads one request (head, then
the body by Content-Length or chunked encoding), counts it, and calls
``handler(conn, request)`` with the raw request bytes; it loops for keep-alive
until the client closes, the server stops, or the handler returns a true value
(:data:`CLOSE`), which closes the connection.

Leaving the ``with`` block stops promptly: it wakes every waiting thread, shuts
down the client sockets (which breaks a blocked ``sendall``), and joins with a
timeout. Handlers that wait should wait on :func:`stop_event` so they end too;
the script steps below all do.
"""

from __future__ import annotations

import contextlib
import http
import logging
import select
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Type, Union

logger = logging.getLogger(__name__)

#: A handler: ``handler(conn, request) -> close?``, called once per request.
Handler = Callable[[socket.socket, bytes], object]
#: A script step: bytes to send, a ``(verb, *args)`` tuple, or a handler.
Step = Union[bytes, Tuple[Any, ...], Handler]

#: Return this from a handler to close the connection after the response.
CLOSE = True

#: The end of a chunked body.
LAST_CHUNK = b"0\r\n\r\n"

_MAX_HEAD = 64 * 1024
_IO_TIMEOUT = 10.0  # a send that blocks this long means the test is broken
_IDLE_TIMEOUT = 30.0  # a kept-alive connection idle this long is closed

_local = threading.local()
_NEVER = threading.Event()


class _Stopped(Exception):
    """The server is stopping: abandon the current handler."""


def stop_event() -> threading.Event:
    """The stop event of the server running the current handler.

    Custom handlers that wait should use ``stop_event().wait(seconds)`` (true
    when stopping) so that leaving the ``with`` block never waits for them.
    Outside a server it is an event that is never set.
    """
    event: threading.Event = getattr(_local, "stop", _NEVER)
    return event


# --- bytes builders ----------------------------------------------------------------------------------


def chunk(data: bytes) -> bytes:
    """Frame ``data`` as one chunk of a chunked body: ``chunk(b"data") == b"4\\r\\ndata\\r\\n"``."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def head(status: int = 200, headers: Optional[Mapping[str, str]] = None, *, reason: Optional[str] = None) -> bytes:
    """A status line and headers, up to and including the blank line; nothing is added.

    :param reason: the reason phrase; the standard one for ``status`` by default.
    """
    if reason is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def respond(
    status: int = 200,
    body: bytes = b"",
    headers: Optional[Mapping[str, str]] = None,
    *,
    content_type: str = "application/json",
    reason: Optional[str] = None,
) -> bytes:
    """A complete response delimited by Content-Length (so keep-alive works)."""
    all_headers: Dict[str, str] = {"Content-Type": content_type, "Content-Length": str(len(body))}
    all_headers.update(headers or {})
    return head(status, all_headers, reason=reason) + body


def sse_head(status: int = 200, headers: Optional[Mapping[str, str]] = None) -> bytes:
    """The head of a chunked ``text/event-stream`` response; follow it with :func:`chunk` pieces."""
    all_headers = {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"}
    all_headers.update(headers or {})
    return head(status, all_headers)


# --- handlers from scripts ---------------------------------------------------------------------------


def _wait(seconds: float) -> None:
    if stop_event().wait(seconds):
        raise _Stopped


def _wait_close(conn: socket.socket, timeout: float) -> None:
    """Read and discard until the peer closes, the timeout passes, or the server stops."""
    deadline = time.monotonic() + timeout
    wake = getattr(_local, "wake", None)
    watched = [conn] if wake is None else [conn, wake]
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select(watched, [], [], left)
        if wake is not None and wake in ready:
            raise _Stopped
        if ready and not conn.recv(65536):
            return


def _reset(conn: socket.socket) -> None:
    """Make the close send RST instead of FIN (linger on, timeout 0)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def run_step(conn: socket.socket, request: bytes, step: Step) -> bool:
    """Run one script step; return whether the connection must close now.

    Steps:

    * ``bytes`` — sent as they are;
    * ``("sleep", seconds)`` — pause (ends early if the server stops);
    * ``("trickle", data, interval)`` or ``("trickle", data, interval, count)`` —
      send ``data`` every ``interval`` seconds, ``count`` times or until the
      server stops or the client goes away;
    * ``("drip", data, interval)`` — send ``data`` one byte at a time, ``interval``
      seconds apart (a response head trickled byte by byte);
    * ``("wait_close", timeout)`` — read until the client closes the connection;
    * ``("close",)`` — close now (FIN), ending the script;
    * ``("reset",)`` — close now with a TCP RST, ending the script;
    * a callable ``f(conn, request)`` — called; a true result closes.
    """
    if isinstance(step, (bytes, bytearray, memoryview)):
        conn.sendall(step)
        return False
    if callable(step):
        return bool(step(conn, request))
    verb = step[0]
    if verb == "sleep":
        _wait(step[1])
    elif verb == "trickle":
        data, interval = step[1], step[2]
        count: Optional[int] = step[3] if len(step) > 3 else None
        sent = 0
        while count is None or sent < count:
            conn.sendall(data)
            sent += 1
            _wait(interval)
    elif verb == "drip":
        data, interval = bytes(step[1]), step[2]
        for i in range(len(data)):
            conn.sendall(data[i : i + 1])
            _wait(interval)
    elif verb == "wait_close":
        _wait_close(conn, step[1])
    elif verb == "close":
        return True
    elif verb == "reset":
        _reset(conn)
        return True
    else:
        raise ValueError(f"unknown script step {step!r}")
    return False


def script(steps: Sequence[Step], *, close: bool = True) -> Handler:
    """A handler that runs ``steps`` for every request.

    :param close: close the connection after the script (the default, since
        most scripts send responses that are malformed or not length-delimited);
        pass ``False`` to keep it alive for the next request. A complete
        response followed by a close should say ``Connection: close``, or a
        client that pools the connection races the FIN on its next request
        (which is what a stale-connection test wants, and other tests do not).
    """
    steps = list(steps)

    def handler(conn: socket.socket, request: bytes) -> bool:
        for step in steps:
            if run_step(conn, request, step):
                return True
        return close

    return handler


def sequence(*handlers: Handler) -> Handler:
    """A handler that gives the n-th request (server-wide) the n-th handler; the last one repeats.

    For "fail twice, then answer" retry tests.
    """
    if not handlers:
        raise ValueError("sequence() needs at least one handler")
    lock = threading.Lock()
    count = [0]

    def handler(conn: socket.socket, request: bytes) -> object:
        with lock:
            index = min(count[0], len(handlers) - 1)
            count[0] += 1
        return handlers[index](conn, request)

    return handler


# --- the server --------------------------------------------------------------------------------------


class RawServer:
    """Serve ``handler`` on 127.0.0.1 (an ephemeral port) from daemon threads.

    Counters, safe to read from the test thread at any time:

    :ivar connections: connections accepted.
    :ivar closed: connections finished (closed by either side).
    :ivar requests: requests read.
    :ivar bodies: the request bodies, in arrival order (dechunked).
    :ivar raw_requests: the raw request bytes passed to the handler.
    :ivar errors: unexpected exceptions raised by handlers; re-raised by
        ``__exit__`` (as an AssertionError) unless ``raise_errors=False``.
    """

    def __init__(self, handler: Handler, *, raise_errors: bool = True, join_timeout: float = 2.0) -> None:
        self.handler = handler
        self.raise_errors = raise_errors
        self.join_timeout = join_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.connections = 0
        self.closed = 0
        self.requests = 0
        self.bodies: List[bytes] = []
        self.raw_requests: List[bytes] = []
        self.errors: List[BaseException] = []
        self.stop = threading.Event()
        self._changed = threading.Condition()
        self._clients: Set[socket.socket] = set()
        self._threads: List[threading.Thread] = []
        self._listener: Optional[socket.socket] = None
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Tuple[str, int]:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(64)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._start(self._accept_loop, "rawserver-accept")
        return self.host, self.port

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()
        if self.errors and self.raise_errors and exc_type is None:
            raise AssertionError(f"a RawServer handler failed: {self.errors[0]!r}") from self.errors[0]

    def close(self) -> None:
        """Stop serving: wake every thread, break client sockets, join (bounded)."""
        if self.stop.is_set():
            return
        self.stop.set()
        if self._wake_w is not None:
            self._wake_w.send(b"x")  # never read: stays readable, wakes every select()
        with self._changed:
            clients = list(self._clients)
        for conn in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + self.join_timeout
        # The accept thread first: once it has ended, no new connection thread can appear.
        if self._threads:
            self._threads[0].join(self.join_timeout)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("RawServer thread %s did not stop", thread.name)
        with self._changed:
            leftovers = list(self._clients)
            self._clients.clear()
        for sock in [*leftovers, self._listener, self._wake_r, self._wake_w]:
            if sock is not None:
                sock.close()

    def wait_until(self, predicate: Callable[[RawServer], bool], timeout: float = 2.0) -> bool:
        """Wait until ``predicate(server)`` is true (checked at every counter change).

        :returns: whether it became true before ``timeout`` seconds.
        """
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    # -- threads

    def _start(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        while not self.stop.is_set():
            ready, _, _ = select.select([self._listener, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            conn.settimeout(_IO_TIMEOUT)
            with self._changed:
                if self.stop.is_set():
                    conn.close()
                    return
                self.connections += 1
                self._clients.add(conn)
                number = self.connections
                self._changed.notify_all()
            self._start(self._serve, f"rawserver-conn-{number}", conn)

    def _serve(self, conn: socket.socket) -> None:
        _local.stop = self.stop
        _local.wake = self._wake_r
        reader = _RequestReader(conn, self._wake_r)
        try:
            while not self.stop.is_set():
                got = reader.read_request()
                if got is None:
                    break
                raw, body = got
                with self._changed:
                    self.requests += 1
                    self.bodies.append(body)
                    self.raw_requests.append(raw)
                    self._changed.notify_all()
                if self.handler(conn, raw):
                    break
        except _Stopped:
            pass
        except OSError as err:  # the client went away, or close() broke the socket
            logger.debug("RawServer connection ended: %r", err)
        except Exception as err:  # a bug in a test's handler: report it, do not hide it
            logger.debug("RawServer handler failed", exc_info=True)
            with self._changed:
                self.errors.append(err)
        finally:
            with self._changed:
                owned = conn in self._clients
                self._clients.discard(conn)
                self.closed += 1
                self._changed.notify_all()
            if owned:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()


class _RequestReader:
    """Reads requests off one connection, keeping bytes that arrive early."""

    def __init__(self, conn: socket.socket, wake: Optional[socket.socket]) -> None:
        self.conn = conn
        self.wake = wake
        self.buf = b""

    def _more(self) -> bool:
        """Receive into the buffer; false on EOF, stop or idle timeout."""
        watched = [self.conn] if self.wake is None else [self.conn, self.wake]
        ready, _, _ = select.select(watched, [], [], _IDLE_TIMEOUT)
        if not ready or (self.wake is not None and self.wake in ready):
            return False
        data = self.conn.recv(65536)
        self.buf += data
        return bool(data)

    def _until(self, marker: bytes, start: int = 0) -> int:
        """Index of ``marker`` in the buffer at or after ``start``, reading as needed; -1 if none comes."""
        while True:
            index = self.buf.find(marker, start)
            if index >= 0:
                return index
            if len(self.buf) > _MAX_HEAD or not self._more():
                return -1

    def _exactly(self, n: int) -> bool:
        while len(self.buf) < n:
            if not self._more():
                return False
        return True

    def read_request(self) -> Optional[Tuple[bytes, bytes]]:
        """The next request as ``(raw bytes, body)``, or ``None`` if the client closed."""
        end = self._until(b"\r\n\r\n")
        if end < 0:
            return None
        head_end = end + 4
        head = self.buf[:head_end]
        headers: Dict[bytes, bytes] = {}
        for line in head.split(b"\r\n")[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            pos = head_end
            parts: List[bytes] = []
            while True:
                line_end = self._until(b"\r\n", pos)
                if line_end < 0:
                    return None
                size = int(self.buf[pos:line_end].split(b";")[0], 16)
                pos = line_end + 2
                if size == 0:
                    trailer_end = self._until(b"\r\n\r\n", pos - 2)
                    if trailer_end < 0:
                        return None
                    pos = trailer_end + 4
                    break
                if not self._exactly(pos + size + 2):
                    return None
                parts.append(self.buf[pos : pos + size])
                pos += size + 2
            body = b"".join(parts)
            total = pos
        else:
            length = int(headers.get(b"content-length", b"0"))
            total = head_end + length
            if not self._exactly(total):
                return None
            body = self.buf[head_end:total]
        raw = self.buf[:total]
        self.buf = self.buf[total:]
        return raw, body
