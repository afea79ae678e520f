"""The wire: requests/urllib3 plumbing under :class:`~deepseek_pool.DeepSeekClient`.

* :class:`DeepSeekAdapter` -- requests' ``HTTPAdapter`` whose connections apply the
  calling thread's per-call state (abort handle, call deadline) to every attempt,
  urllib3's own retries included;
* :class:`Route` -- the urllib3 pool the adapter would pick, resolved once, so a call
  skips what ``HTTPAdapter.send`` recomputes every time;
* :func:`raw_pieces` -- the body as it arrives, under the attempt's total deadline;
* :func:`translate_error` -- the one place requests/urllib3 exceptions become ours;
* :class:`ChatStream` -- a streamed answer read off the wire.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from functools import partial
from typing import Any, Dict, Generator, Iterator, Mapping, Optional

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError, ReadTimeoutError
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from .errors import (
    APIConnectionError,
    APITimeoutError,
    ConfigurationError,
    DeepSeekError,
    RetryBudgetExceeded,
    status_error,
)
from .retry import RetryCancelled, call_context
from .streaming import SSEDecoder
from .types import ChatChunk, ChatCompletion, ChatCompletionBuilder

__all__ = [
    "GENUINE_SEND",
    "STREAM_END_GRACE",
    "CallHandle",
    "ChatStream",
    "DeepSeekAdapter",
    "Route",
    "raw_pieces",
    "request_id_of",
    "translate_error",
    "wrap_response",
]

_READ_SIZE = 65536
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


def raw_pieces(raw: Any, deadline: float, read_timeout: float) -> Iterator[bytes]:
    """Yield the decoded body as it arrives, enforcing the attempt's total deadline.

    Every piece (a blank keep-alive line included) resets the socket's read timeout,
    so the deadline is checked between pieces and the socket timeout is shortened
    when the deadline is nearer than a full read timeout.
    """
    if raw.chunked and raw.supports_chunked_reads():
        source: Iterator[bytes] = raw.read_chunked(None, decode_content=True)
    else:
        read = getattr(raw, "read1", None) or raw.read
        source = iter(partial(read, _READ_SIZE, decode_content=True), b"")
    clock = time.monotonic
    remaining = deadline - clock()
    if remaining < read_timeout:
        _set_socket_timeout(raw, remaining)
    for piece in source:
        yield piece
        remaining = deadline - clock()
        if remaining <= 0:
            raise APITimeoutError("the request's total deadline passed while the server was still sending")
        if remaining < read_timeout:
            _set_socket_timeout(raw, remaining)


def _set_socket_timeout(raw: Any, seconds: float) -> None:
    if seconds <= 0:
        raise APITimeoutError("the request's total deadline passed while waiting for the server")
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def translate_error(err: BaseException) -> DeepSeekError:
    """Turn a requests/urllib3 exception into ours (the only place that does)."""
    if isinstance(err, DeepSeekError):
        return err
    if isinstance(err, MaxRetryError):  # raised by urllib3 directly on the direct route
        reason: Any = err.reason
    else:  # wrapped by requests' adapter
        cause = err.args[0] if err.args else None
        reason = getattr(cause, "reason", None) if isinstance(cause, MaxRetryError) else None
    if isinstance(reason, RetryBudgetExceeded):
        return RetryBudgetExceeded(str(reason))
    if isinstance(err, (requests.Timeout, ReadTimeoutError)) or isinstance(reason, ReadTimeoutError):
        return APITimeoutError(f"request timed out: {err}")
    if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
        return APITimeoutError(f"connecting timed out: {err}")  # what requests calls ConnectTimeout
    if isinstance(err, (requests.ConnectionError, Urllib3HTTPError, OSError)):
        return APIConnectionError(f"connection failed: {err}")
    if isinstance(err, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
        return ConfigurationError(f"invalid URL: {err}")
    return APIConnectionError(f"request failed: {err!r}")


class CallHandle:
    """Lets another thread abort the HTTP exchange a call is blocked in.

    A pool that is cancelled (Ctrl-C, ``break`` out of ``as_completed``) must not wait
    minutes for answers nobody will read: it sets the handle into the worker's call
    context, the connection reports itself when it sends, and :meth:`abort` shuts
    the socket down, which ends a blocked read at once.
    """

    __slots__ = ("_connection", "aborted")

    def __init__(self) -> None:
        self._connection: Any = None
        self.aborted = False

    def attach(self, connection: Any) -> None:
        """Called by the connection that is about to send this call's request."""
        if self.aborted:
            raise RetryCancelled("the call was cancelled before it was sent")
        self._connection = connection

    def abort(self) -> None:
        """Break the call's connection (idempotent; safe from any thread)."""
        self.aborted = True
        sock = getattr(self._connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing to break
                sock.shutdown(socket.SHUT_RDWR)


class _CallAwareConnectionMixin:
    """Applies the calling thread's per-call state to every attempt, urllib3's retries included.

    It tells the call's :class:`CallHandle` which connection carries the request, and
    cuts the connect and read timeouts to what is left of the call's deadline, so a
    retry made inside urllib3 cannot outlive ``call_timeout``.
    """

    timeout: Any

    def _cut_timeout(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        timeout = self.timeout
        if not isinstance(timeout, (int, float)) or timeout > remaining:
            self.timeout = max(remaining, 0.001)

    def request(self, *args: Any, **kwargs: Any) -> None:
        context = call_context
        handle = context.handle
        if handle is not None:
            handle.attach(self)
        if context.deadline is not None:
            self._cut_timeout(context.deadline)
        super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        deadline = call_context.deadline
        if deadline is not None:
            self._cut_timeout(deadline)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_CallAwareConnectionMixin, HTTPConnection):
    pass


class _HTTPSConnection(_CallAwareConnectionMixin, HTTPSConnection):
    pass


class _HTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class DeepSeekAdapter(HTTPAdapter):
    """requests' ``HTTPAdapter`` whose connections can be aborted through a :class:`CallHandle`.

    It does not override ``send``, so ``responses`` and other adapter-level mocks still apply.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}


class Route:
    """The urllib3 pool that requests' adapter would pick for the base URL, resolved once.

    Going to it directly skips what ``HTTPAdapter.send`` redoes on every call: proxy
    selection, pool-key normalisation, the CA-bundle check, URL re-parsing, and the
    cookie extraction of ``build_response`` (the client sends no cookies). It is taken
    only for the client's own adapter, when no proxy applies and ``HTTPAdapter.send``
    is not patched; everything else goes through ``adapter.send`` as before.
    """

    __slots__ = ("adapter", "cut", "pool")

    def __init__(self, adapter: HTTPAdapter, pool: Any, cut: int) -> None:
        self.adapter = adapter
        self.pool = pool
        #: characters of the base URL's scheme://host[:port] that the pool's path omits
        self.cut = cut


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


class ChatStream:
    """A streamed chat answer: iterate for :class:`ChatChunk`, one per server event.

    Use it as a context manager: leaving the block early closes the connection at
    once; a stream read to ``data: [DONE]`` gives its connection back to the pool.
    :meth:`completion` folds the (rest of the) stream into a :class:`ChatCompletion`.
    """

    def __init__(self, response: requests.Response, deadline: float, read_timeout: float) -> None:
        self.response = response
        self.request_id = request_id_of(response.headers)
        self._deadline = deadline
        self._read_timeout = read_timeout
        self._builder = ChatCompletionBuilder()
        self._iterator = self._chunks()
        self._closed = False

    def _chunks(self) -> Generator[ChatChunk, None, None]:
        raw = self.response.raw
        decoder = SSEDecoder()
        pieces = raw_pieces(raw, self._deadline, self._read_timeout)
        loads = json.loads
        try:
            for piece in pieces:
                for event in decoder.feed(piece):
                    data = event.data
                    if data == "[DONE]":
                        self._finish(raw, pieces)
                        return
                    if not data:
                        continue
                    try:
                        payload = loads(data)
                    except ValueError as err:
                        raise APIConnectionError(f"the stream sent an event that is not JSON: {data[:200]!r}") from err
                    if "error" in payload and not payload.get("choices"):
                        raise self._stream_error(payload)
                    chunk = ChatChunk(payload)
                    self._builder.add(chunk)
                    yield chunk
        except DeepSeekError:
            self.close()
            raise
        except Exception as err:  # urllib3 read errors, timeouts
            self.close()
            translated = translate_error(err)
            if type(translated) is APIConnectionError:
                translated = APIConnectionError(f"the stream broke before 'data: [DONE]': {err}")
            raise translated from err
        self.close()
        raise APIConnectionError("the stream ended before 'data: [DONE]' (connection closed by the server)")

    def _finish(self, raw: Any, pieces: Iterator[bytes]) -> None:
        """Read the end of the body quickly so the connection can be reused, else close it."""
        self._closed = True
        try:
            _set_socket_timeout(raw, STREAM_END_GRACE)
            grace_end = time.monotonic() + STREAM_END_GRACE
            for _ in pieces:
                if time.monotonic() > grace_end:
                    raise APITimeoutError("data after [DONE]")
        except Exception:
            self.response.close()

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
        for _ in self:
            pass
        return self._builder.build(self.request_id)

    def close(self) -> None:
        """Stop reading; an unfinished body's connection is closed, not reused."""
        if not self._closed:
            self._closed = True
            self.response.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
        self._iterator.close()
