"""The wire: requests/urllib3 plumbing under :class:`~deepseek_pool.DeepSeekClient`.

* :class:`DeepSeekAdapter` -- requests' ``HTTPAdapter`` whose connections report
  themselves to the abort handle of the call they carry, and leave it when the
  connection pool takes them back;
* :func:`raw_pieces` -- the body as it arrives, under the attempt's total deadline;
* :func:`translate_error` -- the one place requests/urllib3 exceptions become ours;
* :class:`ChatStream` -- a streamed answer read off the wire.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import ssl
import time
from functools import partial
from http.client import HTTPException, HTTPResponse
from inspect import GEN_CREATED, getgeneratorstate
from typing import TYPE_CHECKING, Any, Callable, Dict, Generator, Iterator, Mapping, Optional, Union

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.poolmanager import ProxyManager

from ..errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    DeepSeekError,
    ProxyAuthenticationError,
    TLSError,
    status_error,
)
from ..types import ChatChunk, ChatCompletion, ChatCompletionBuilder
from .calls import WATCHDOG, CallHandle, Silence, release_connection, sending
from .chunked import Dechunker
from .sse import SSEDecoder

if TYPE_CHECKING:
    from .reader import StreamReader  # which imports this module

__all__ = [
    "GENUINE_SEND",
    "PROXY_AUTHENTICATION",
    "STREAM_END_GRACE",
    "Attempt",
    "ChatStream",
    "DeepSeekAdapter",
    "final_failure",
    "raw_pieces",
    "request_id_of",
    "translate_error",
    "urllib3_cause",
    "wrap_response",
]

_READ_SIZE = 65536
#: A request body up to this size is sent in one write with the head (copying more costs
#: more than the second system call saves).
_JOIN_BODY_MAX = 65536
#: bytes asked of one read of a chunked body: ``read1`` allocates them while it blocks, so a
#: thread waiting for the next event holds this much (8 KiB, the socket file's own buffer size)
_CHUNKED_READ_SIZE = 8192
#: After ``data: [DONE]`` a well-behaved server ends the body at once; one that
#: holds it open gets its connection closed after this many seconds.
STREAM_END_GRACE = 0.1
_REQUEST_ID_HEADERS = ("x-request-id", "x-ds-trace-id", "request-id")
#: requests' own HTTPAdapter.send, unless a mock library had already replaced it at import
#: (then the direct route is never taken). While ``responses`` or a similar library has it
#: patched, ``type(adapter).send`` is not this function and calls go through the adapter.
GENUINE_SEND: Any = HTTPAdapter.send if getattr(HTTPAdapter.send, "__module__", None) == "requests.adapters" else None


def request_id_of(headers: Mapping[str, str]) -> Optional[str]:
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


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
    if raw.chunked and fp.__class__ is HTTPResponse and fp.fp is not None and not _encoded(raw):
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


def _set_socket_timeout(raw: Any, seconds: float) -> None:
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


def urllib3_cause(err: BaseException) -> BaseException:
    """The urllib3 (or socket) error under a requests wrapper or a ``MaxRetryError``."""
    if isinstance(err, requests.RequestException) and err.args and isinstance(err.args[0], BaseException):
        err = err.args[0]
    if isinstance(err, MaxRetryError) and err.reason is not None:
        err = err.reason
    return err


#: ``scheme://user:password@`` in a message: a proxy's credentials, never repeated.
_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")
#: What a proxy's 407 means, whether it came on a CONNECT or as a forward proxy's answer.
PROXY_AUTHENTICATION = (
    "the proxy wants authentication (407 Proxy Authentication Required): check the user and password "
    "in the proxy URL (HTTPS_PROXY, session.proxies)"
)
#: OpenSSL's names for a server's refusal of the client's certificate (TLS 1.2 and 1.3 alerts).
_REFUSED_CLIENT_CERT = (
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_UNKNOWN_CA",
    "ALERT_ACCESS_DENIED",
)


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err``, what it wraps (requests' and urllib3's ``args[0]`` and ``reason``), and its causes."""
    seen = 0
    pending = [err]
    while pending and seen < 12:
        current = pending.pop()
        seen += 1
        yield current
        for inner in (getattr(current, "reason", None), current.__cause__, current.__context__, *current.args[:2]):
            if isinstance(inner, BaseException):
                pending.append(inner)


def final_failure(err: BaseException) -> Optional[DeepSeekError]:
    """The error a retry cannot fix under ``err``, if it is one: a TLS failure, or a proxy's 407."""
    for inner in _chain(err):
        if isinstance(inner, ssl.SSLCertVerificationError):
            why = getattr(inner, "verify_message", None) or inner
            return TLSError(f"the server's certificate is not trusted ({why}); check verify= or REQUESTS_CA_BUNDLE")
        reason = getattr(inner, "reason", None)
        if isinstance(inner, ssl.SSLError) and isinstance(reason, str) and reason.endswith(_REFUSED_CLIENT_CERT):
            return TLSError(f"the server refused the client certificate ({reason}); check cert=")
        if isinstance(inner, OSError) and str(inner).startswith("Tunnel connection failed: 407"):  # http.client
            return ProxyAuthenticationError(PROXY_AUTHENTICATION)
    return None


def translate_error(err: BaseException) -> DeepSeekError:
    """Turn a requests/urllib3 exception into ours (the only place that does).

    A proxy's credentials in the exception's text are masked.
    """
    if isinstance(err, DeepSeekError):
        return err
    cause = urllib3_cause(err)
    if isinstance(cause, DeepSeekError):
        return cause
    final = final_failure(err)
    if final is not None:
        return final
    translated = _translated(err, cause)
    message = str(translated)
    masked = _CREDENTIALS.sub(r"\1***@", message)
    return type(translated)(masked) if masked != message else translated


def _translated(err: BaseException, cause: BaseException) -> DeepSeekError:
    if isinstance(err, requests.Timeout) or isinstance(cause, ReadTimeoutError):
        return APITimeoutError(f"request timed out: {err}")
    if isinstance(cause, ConnectTimeoutError) and not isinstance(cause, NewConnectionError):
        return APITimeoutError(f"connecting timed out: {err}")  # what requests calls ConnectTimeout
    if isinstance(err, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
        return ConfigurationError(f"invalid URL: {err}")
    if isinstance(err, (requests.ConnectionError, Urllib3HTTPError, OSError, HTTPException)):
        return APIConnectionError(f"connection failed: {err}")
    return APIConnectionError(f"request failed: {type(err).__name__}: {err}")


class Attempt:
    """One attempt's total deadline, watched by the watchdog; ended exactly once.

    The watchdog breaks the attempt's connection when the deadline passes, so a read
    that blocks (a trickled head, a stalled body) fails, and :meth:`translate` then
    reports it as the timeout it is.
    """

    __slots__ = ("_watch", "deadline", "handle")

    def __init__(self, deadline: float, handle: CallHandle) -> None:
        self.deadline = deadline
        self.handle = handle
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


class _CallAwareConnectionMixin:
    """Reports the connection to the :class:`~deepseek_pool.wire.calls.CallHandle` of the call it carries.

    It attaches before connecting and before sending (a handle aborted meanwhile stops
    the attempt there, before any byte of the request leaves), and checks again once a
    new connection is open, since an abort cannot break a socket that does not exist yet.
    """

    def connect(self) -> None:
        handle = sending.handle
        if handle is not None:
            handle.attach(self)
        super().connect()  # type: ignore[misc]
        if handle is not None:
            try:
                handle.attach(self)
            except BaseException:
                self.close()  # type: ignore[attr-defined]
                raise

    #: a request's head, held back to leave with its body in one write
    _held_head: Optional[bytes] = None
    _hold_head = False

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        """Send the request; a small bytes body leaves with the head in one ``sendall``.

        http.client writes the head and the body separately: two system calls, two GIL
        hand-offs and two packets per call, where one does.
        """
        handle = sending.handle
        if handle is not None:
            handle.attach(self)
        self._hold_head = isinstance(body, bytes) and 0 < len(body) <= _JOIN_BODY_MAX
        try:
            super().request(method, url, body=body, headers=headers, **kwargs)  # type: ignore[misc]
        except BaseException:
            self._held_head = None
            raise
        finally:
            self._hold_head = False
        held = self._held_head
        if held is not None:  # no body write followed after all
            self._held_head = None
            super().send(held)  # type: ignore[misc]

    def send(self, data: Any) -> None:
        if self._hold_head:
            self._hold_head = False
            self._held_head = data  # the head: it waits for the body
            return
        held = self._held_head
        if held is not None:
            self._held_head = None
            data = held + data
        super().send(data)  # type: ignore[misc]


class _HTTPConnection(_CallAwareConnectionMixin, HTTPConnection):
    pass


class _HTTPSConnection(_CallAwareConnectionMixin, HTTPSConnection):
    pass


class _ConnectionClass:
    """A pool's ``ConnectionCls``: ours, unless a tool (vcrpy) replaced urllib3's own; then the tool's.

    Looked up at each new connection, so a tool installed after the pool was made applies too.
    """

    def __init__(self, pool_class: Any, genuine: Any, ours: Any) -> None:
        self._pool_class, self._genuine, self._ours = pool_class, genuine, ours

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        installed = self._pool_class.__dict__.get("ConnectionCls", self._genuine)
        return self._ours if installed is self._genuine else installed


class _HTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _ConnectionClass(HTTPConnectionPool, HTTPConnection, _HTTPConnection)

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            release_connection(conn)  # back in the pool: no handle may touch it now
        super()._put_conn(conn)


class _HTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _ConnectionClass(HTTPSConnectionPool, HTTPSConnection, _HTTPSConnection)

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            release_connection(conn)
        super()._put_conn(conn)


_POOL_CLASSES = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}


class DeepSeekAdapter(HTTPAdapter):
    """requests' ``HTTPAdapter`` whose connections can be aborted through a call's handle.

    Its pools, direct and through a proxy (forward or CONNECT tunnel), hand out
    connections that report to the handle of the call they carry, so the watchdog can
    break a stalled head or body on every route. It does not override ``send``, so
    ``responses`` and other adapter-level mocks still apply; a connection class that a
    tool installed in urllib3 (vcrpy's) is used as installed. Mount one sized to your
    threads on a session you give the client::

        session.mount("https://api.deepseek.com", dp.DeepSeekAdapter(pool_maxsize=64))
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):  # not SOCKS, whose pools are its own
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager


def wrap_response(raw: Any, url: str, adapter: HTTPAdapter) -> requests.Response:
    """A ``requests.Response`` around a urllib3 response, as ``build_response`` makes it, minus cookies."""
    response = requests.Response()
    response.status_code = raw.status
    headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(raw.headers)
    response.headers = headers
    response.encoding = get_encoding_from_headers(headers)
    response.raw = raw
    response.reason = raw.reason
    response.url = url
    response.connection = adapter
    return response


#: What :meth:`ChatStream._chunk` returns for ``data: [DONE]``.
DONE: Any = object()


class ChatStream:
    """A streamed chat answer: iterate for :class:`ChatChunk`, one per server event.

    Use it as a context manager: leaving the block early closes the connection at
    once; a stream read to its end gives its connection back to the pool.
    :meth:`completion` folds the (rest of the) stream into a :class:`ChatCompletion`.

    When a stream is complete: a chunk with a ``finish_reason`` makes the answer whole;
    ``data: [DONE]`` then ends the iteration at once (a body held open afterwards is
    closed after :data:`STREAM_END_GRACE`, not waited for), and so does the end of the
    body, clean or broken. A body that ends, breaks or sends ``[DONE]`` before any
    ``finish_reason`` (a server cutting the answer short) raises :class:`APIConnectionError`.

    :param reader: a :class:`~deepseek_pool.wire.reader.StreamReader` that :meth:`completion`
        hands a body nobody iterated to, so the calling thread sleeps until the end
        instead of waking for every event. Iterating reads in the calling thread.
    :param on_first_token: called once, with ``time.monotonic()``, when the first chunk
        with content (or reasoning) arrives.
    """

    def __init__(
        self,
        response: requests.Response,
        attempt: Attempt,
        *,
        reader: Optional[StreamReader] = None,
        on_first_token: Optional[Callable[[float], None]] = None,
    ) -> None:
        self.response = response
        self.request_id = request_id_of(response.headers)
        self._attempt = attempt
        self._builder = ChatCompletionBuilder()
        self._reader = reader
        self._on_first_token = on_first_token
        self._iterator = self._chunks()
        self._closed = False
        self._decoder = SSEDecoder()

    @property
    def attempt(self) -> Attempt:
        return self._attempt

    def _chunks(self) -> Generator[ChatChunk, None, None]:
        decoder = self._decoder
        pieces = raw_pieces(self.response.raw, self._attempt.deadline, self._attempt.handle)
        convert = self._chunk
        done = False
        try:
            for piece in pieces:
                for event in decoder.feed(piece):
                    chunk = convert(event.data)
                    if chunk is None:
                        continue
                    if chunk is DONE:
                        done = True
                        break
                    yield chunk
                if done:
                    self._drain(pieces)
                    break
        except Exception as err:
            self._broke(err)
            return
        self._ended(done)

    def feed(self, payload: bytes) -> bool:
        """Add the events in ``payload`` (body bytes) to the answer; True at ``[DONE]`` (the rest is ignored).

        For a reader that reads the body elsewhere (:mod:`deepseek_pool.wire.reader`); raises what
        iterating would have raised.
        """
        convert = self._chunk
        for event in self._decoder.feed(payload):  # noqa: SIM110 -- a loop makes no generator per read
            if convert(event.data) is DONE:
                return True
        return False

    def _chunk(self, data: str) -> Optional[ChatChunk]:
        """One event's data as a chunk added to the answer; :data:`DONE`, or None for an empty event."""
        if data == "[DONE]":
            return DONE  # type: ignore[no-any-return]
        if not data:
            return None
        try:
            payload = json.loads(data)
        except ValueError as err:
            raise APIConnectionError(f"the stream sent an event that is not JSON: {data[:200]!r}") from err
        if payload.__class__ is dict and "error" in payload and not payload.get("choices"):
            raise self._stream_error(payload)
        try:
            chunk = ChatChunk(payload)
            self._builder.add(chunk)
        except (ValueError, TypeError, AttributeError) as err:
            raise APIResponseValidationError(
                f"the stream sent an event that is not a chat chunk: {data[:200]!r}",
                status_code=self.response.status_code,
                body=payload,
                request_id=self.request_id,
            ) from err
        if self._on_first_token is not None and (chunk.content or chunk.reasoning_content):
            self._on_first_token(time.monotonic())
            self._on_first_token = None
        return chunk

    def _ended(self, done: bool) -> None:
        """The body was read (to ``[DONE]`` when ``done``): the answer must be whole."""
        self.close()
        if self._builder.finish_reason is None:
            if done:
                raise APIConnectionError(
                    "the stream sent 'data: [DONE]' before any finish_reason (the server cut it short)"
                )
            raise APIConnectionError("the stream ended before any finish_reason (connection closed by the server)")

    def _broke(self, err: Exception) -> None:
        """Reading failed with ``err``: fine if the answer was already whole, else raise what it means."""
        self.close()
        if self._builder.finish_reason is not None and not isinstance(err, APIStatusError):
            return  # the answer was complete; only the end of the body went wrong
        if isinstance(err, DeepSeekError) and not (isinstance(err, APITimeoutError) or self._attempt.expired):
            raise err
        translated = self._attempt.translate(err)
        if type(translated) is APIConnectionError:
            translated = APIConnectionError(f"the stream broke before any finish_reason: {err}")
        raise translated from err

    def _elsewhere(self, reader: StreamReader) -> Generator[ChatChunk, None, None]:
        """Have ``reader`` read the whole body while this thread sleeps; read it here if it cannot."""
        try:
            done = reader.read(self)
        except Exception as err:
            self._broke(err)
            return
        if done is None:
            yield from self._chunks()  # not a body the reader takes
            return
        self._ended(done)

    def _drain(self, pieces: Iterator[bytes]) -> None:
        """Read the end of the body quickly so the connection can be reused, else close it.

        A connection that closes after this body (``Connection: close``, or a body that
        runs to the end of the connection) cannot be reused: it is closed at once.
        """
        if getattr(getattr(self.response.raw, "_fp", None), "will_close", False):
            self.response.close()
            self.close()
            return
        grace_end = time.monotonic() + STREAM_END_GRACE
        watch = WATCHDOG.watch(grace_end, self._attempt.handle)
        try:
            _set_socket_timeout(self.response.raw, STREAM_END_GRACE)
            for _ in pieces:
                if time.monotonic() > grace_end:
                    raise APITimeoutError("data after [DONE]")
        except Exception:
            self.response.close()
        finally:
            WATCHDOG.cancel(watch)
        self.close()

    def _stream_error(self, payload: Dict[str, Any]) -> DeepSeekError:
        error = payload.get("error")
        message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) and 400 <= code < 600 else 500
        return status_error(status, f"error inside the stream: {message}", body=payload, request_id=self.request_id)

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> ChatChunk:
        return next(self._iterator)

    def completion(self) -> ChatCompletion:
        """Consume what is left and return the whole answer as one :class:`ChatCompletion`."""
        reader = self._reader
        if reader is not None and not self._closed and getgeneratorstate(self._iterator) == GEN_CREATED:
            self._iterator = self._elsewhere(reader)
        for _ in self:
            pass
        return self._builder.build(self.request_id)

    def close(self) -> None:
        """Stop reading; an unfinished body's connection is closed, not reused."""
        if not self._closed:
            self._closed = True
            self._attempt.end()
            if not self.response.raw.isclosed():
                self.response.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
        self._iterator.close()
