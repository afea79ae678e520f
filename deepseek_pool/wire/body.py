"""Reading a response body under the attempt's deadlines, on every route.

:func:`raw_pieces` yields the body as it arrives; :func:`body_begins` decides how each read
is bounded (the watchdog for a connection the call holds, a socket timeout for any other);
chunked bodies are read straight off the socket (:func:`_dechunk`).
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
from functools import partial
from http.client import HTTPResponse
from typing import Any, Iterator, Optional, Union

from urllib3.exceptions import ReadTimeoutError
from urllib3.response import HTTPResponse as Urllib3Response

from ..errors import APITimeoutError, DeepSeekError
from .calls import CallHandle, Silence
from .chunked import Dechunker

__all__ = [
    "ReadBound",
    "SocketTimeout",
    "body_begins",
    "finish_chunked",
    "plain_chunked",
    "raw_pieces",
    "reporting_silence",
    "set_read_timeout",
    "watchable",
]

_READ_SIZE = 65536


#: bytes asked of one read of a chunked body: ``read1`` allocates them while it blocks, so a
#: thread waiting for the next event holds this much (8 KiB, the socket file's own buffer size)
_CHUNKED_READ_SIZE = 8192


def raw_pieces(raw: Any, deadline: float, handle: Optional[CallHandle] = None) -> Iterator[bytes]:
    """Yield the decoded body as it arrives, under the attempt's total deadline.

    Each piece is everything one read brought (all the events a socket holds, not one
    HTTP chunk at a time), and the deadline is checked between reads. How a read that
    blocks is bounded depends on the route (:func:`body_begins`): a connection the call's
    ``handle`` holds is made blocking (one ``recv`` per read instead of ``poll`` +
    ``recv``: one GIL hand-off instead of two) and the watchdog breaks it at the deadline,
    or after a read timeout of silence (a :class:`~deepseek_pool.wire.calls.Silence`);
    any other keeps a socket timeout, the read timeout or the time left.

    The read timeout measures the server's silence, not the caller's: the time a piece
    spends with the caller (a slow loop body or ``on_chunk``) is not counted.
    """
    clock = time.monotonic
    silence = body_begins(raw, deadline, handle)
    fp = plain_chunked(raw)
    if fp is not None:
        source: Iterator[bytes] = _dechunk(raw, fp)
    elif not isinstance(raw, Urllib3Response):  # a tool's stand-in (vcrpy's): read it as requests would
        stream = getattr(raw, "stream", None)
        if stream is not None:
            source = stream(_READ_SIZE, decode_content=True)
        else:
            source = iter(partial(raw.read, _READ_SIZE), b"")
    elif raw.chunked and raw.supports_chunked_reads():
        source = raw.read_chunked(None, decode_content=True)  # gzip or deflate: urllib3 decodes
    else:
        read = getattr(raw, "read1", None) or raw.read
        source = iter(partial(read, _READ_SIZE, decode_content=True), b"")
    with reporting_silence(silence):
        for piece in source:
            if silence is not None:
                silence.last = math.inf  # the caller has the piece: no read is waiting
            yield piece
            now = clock()
            if silence is not None:
                silence.last = now  # the next read begins: the silence counts from here
            if now >= deadline:
                raise APITimeoutError("the request's total deadline passed while the server was still sending")


def body_begins(raw: Any, deadline: float, handle: Optional[CallHandle]) -> Optional[ReadBound]:
    """The body is about to be read: check the deadline, and bound each read (see :func:`raw_pieces`).

    Returns what keeps the read timeout between reads, if anything must: a
    :class:`~deepseek_pool.wire.calls.Silence` (a watchable connection, a read timeout
    shorter than the time left) or a :class:`SocketTimeout` (a connection the watchdog
    cannot reach); the caller stamps its ``last`` at each read and stops it when the body
    is over.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise APITimeoutError("the request's total deadline passed while waiting for the server")
    return _bound_reads(raw, deadline, remaining, handle) if deadline != math.inf else None


@contextlib.contextmanager
def reporting_silence(silence: Optional[ReadBound]) -> Iterator[None]:
    """Around a body's reads: a read the watchdog broke for silence raises the read timeout it
    is (urllib3's ``ReadTimeoutError``), and the watch stops when the reads do."""
    try:
        yield
    except Exception as err:
        if silence is not None:
            silence.stop()  # waits for an expiry in progress: ``fired`` is final now
        if not isinstance(silence, Silence) or not silence.fired or isinstance(err, DeepSeekError):
            raise
        message = f"Read timed out: nothing for {silence.seconds:g} s (read timeout)"
        raise ReadTimeoutError(None, None, message) from err  # type: ignore[arg-type]
    finally:
        if silence is not None:
            silence.stop()


def plain_chunked(raw: Any) -> Optional[HTTPResponse]:
    """The http.client response under ``raw`` when its body is chunked and not encoded, else None.

    Such a body is read straight off the socket file, its framing stripped by
    :class:`~deepseek_pool.wire.chunked.Dechunker`; others go through urllib3.
    """
    fp = getattr(raw, "_fp", None)
    if getattr(raw, "chunked", False) and fp.__class__ is HTTPResponse and fp.fp is not None and not _encoded(raw):
        return fp
    return None


def _encoded(raw: Any) -> bool:
    encoding = raw.headers.get("content-encoding")
    return bool(encoding) and encoding.strip().lower() != "identity"


def watchable(raw: Any, handle: Optional[CallHandle]) -> bool:
    """Whether the watchdog can break ``raw``'s connection: ``handle`` holds it.

    True for the connections of a :class:`DeepSeekAdapter`'s pools, direct or through a
    proxy; false for a mock's body, a pool of another adapter, or a tool's connection class.
    """
    return handle is not None and handle.holds(getattr(raw, "connection", None))


def _bound_reads(raw: Any, deadline: float, remaining: float, handle: Optional[CallHandle]) -> Optional[ReadBound]:
    """Bound the body's reads: a watchable socket blocks, a read timeout shorter than ``remaining``
    moves to the watchdog; any other socket keeps a timeout, set again before each read.

    Returns the :class:`~deepseek_pool.wire.calls.Silence` or :class:`SocketTimeout` that
    keeps the read timeout, or None when nothing needs to (no timeout, none that could fire
    before the deadline on a watchable socket, or no socket at all).
    """
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if not isinstance(sock, socket.socket):  # a mock's body, or a tool's stand-in socket
        return None
    timeout = sock.gettimeout()
    if handle is None or not handle.holds(connection):
        return SocketTimeout(sock, timeout, deadline)
    if timeout is None:
        return None
    if timeout >= remaining:
        sock.settimeout(None)
        return None
    silence = Silence(handle, connection, timeout)
    sock.settimeout(None)
    return silence


class SocketTimeout:
    """The read timeout of a socket the watchdog cannot reach, kept on the socket itself.

    Each read may wait the read timeout or the time left to the deadline, whichever is
    shorter: set before the first read, and again as each read begins (``last = now``).
    Duck-types :class:`~deepseek_pool.wire.calls.Silence` (``last``, ``fired``, ``stop``).
    """

    __slots__ = ("_deadline", "_read", "_sock")

    fired = False

    def __init__(self, sock: socket.socket, read: Optional[float], deadline: float) -> None:
        self._sock = sock
        self._read = math.inf if read is None else read
        self._deadline = deadline
        self.last = time.monotonic()

    @property
    def last(self) -> float:
        return math.nan

    @last.setter
    def last(self, now: float) -> None:
        if now != math.inf:  # not while the caller has the piece: no read is waiting then
            with contextlib.suppress(OSError):  # closed at the end of the body
                self._sock.settimeout(max(min(self._read, self._deadline - now), 0.001))

    def stop(self) -> None:
        """Nothing to stop: the socket's own timeout goes with the connection."""


#: What keeps a body's read timeout between reads.
ReadBound = Union[Silence, SocketTimeout]


def _dechunk(raw: Any, fp: HTTPResponse) -> Iterator[bytes]:
    """The payload of a ``Transfer-Encoding: chunked`` body, one piece per read of the socket.

    urllib3's ``read_chunked`` makes a generator step, a ``readline`` and two
    ``_safe_read`` calls per HTTP chunk, and servers stream one event per chunk. This
    reads whatever the socket holds (``read1``: the buffered bytes, else one ``recv``)
    and strips the framing of every chunk in it (:class:`~deepseek_pool.wire.chunked.Dechunker`).
    At the terminating chunk it reads the trailers, closes the response and gives the
    connection back to urllib3's pool, as ``read_chunked`` does; any bytes past the body
    close the connection instead.
    """
    read1 = fp.fp.read1
    framing = Dechunker(raw)
    finished = False  # the connection went back to the pool (or was closed): hands off
    try:
        while not finished:
            try:
                data = read1(_CHUNKED_READ_SIZE)
            except TimeoutError as err:
                raise ReadTimeoutError(None, None, f"Read timed out. ({err})") from err  # type: ignore[arg-type]
            payload = framing.feed(data) if data else framing.end()
            if framing.done:
                finished = finish_chunked(raw, fp, reuse=framing.clean)
            if payload:
                yield payload
    except BaseException:
        if not finished:
            raw.close()  # a body not read to its end: the connection is not reused
        raise


def finish_chunked(raw: Any, fp: HTTPResponse, *, reuse: bool) -> bool:
    """The chunked body was read to its end: close it and give the connection back (or close it)."""
    if reuse:
        fp.close()
        raw.release_conn()
    else:
        raw.close()
    return True


def set_read_timeout(raw: Any, seconds: float) -> None:
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))
