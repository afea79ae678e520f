"""Relay a DeepSeek stream to a web client as server-sent events, and stop paying when it leaves.

No web framework is imported: the WSGI half is a plain generator, the ASGI half takes the
ASGI ``receive`` callable (``request.receive`` in Starlette and FastAPI).

* :func:`relay_sse` (WSGI: Flask, Django, gunicorn, waitress, Werkzeug): the events of a
  :class:`~deepseek_pool.ChatStream` as SSE text; a ``: keep-alive`` comment whenever
  DeepSeek sends nothing for ``keepalive`` seconds (its thinking phase can last minutes,
  and proxies and browsers give up on a silent response); closing the generator, which a
  WSGI server does when a write to a client that left fails, aborts the upstream call.
* :func:`arelay_sse`: the same as an async generator (a Starlette ``StreamingResponse``);
  cancelling it, which Starlette does when the client disconnects, aborts the upstream call.
* :func:`await_call` and :func:`open_stream` (ASGI): await a pool call, or open a stream,
  and abort it the moment the client disconnects (or the awaiting task is cancelled).

Aborting breaks the call's connection (``shutdown``, which wakes a thread blocked reading
it): DeepSeek stops generating, and billing, when its connection goes.

A WSGI server learns that a client left only when a write fails: the keep-alive comments
are also what lets it notice during a silence (within about two ``keepalive`` intervals:
the first write after the client left usually still succeeds). Example (Flask)::

    from deepseek_pool.contrib.relay import relay_sse

    @app.get("/stream")
    def stream():
        chunks = client.chat_stream(request.args["prompt"])
        return Response(relay_sse(chunks), mimetype="text/event-stream")
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import json
import queue
import select
import socket
import ssl
import threading
import time
from functools import partial
from typing import Any, AsyncGenerator, Awaitable, Callable, Generator, Iterator, Mapping, Optional, Tuple, TypeVar

from ..client import DeepSeekClient
from ..errors import DeepSeekError
from ..messages import Messages
from ..pool.pool import DeepSeekPool
from ..types import ChatChunk
from ..wire.calls import CallControl
from ..wire.stream import ChatStream

__all__ = [
    "KEEPALIVE_COMMENT",
    "KEEPALIVE_INTERVAL",
    "PEER_POLL",
    "AsyncSSERelay",
    "ClientDisconnected",
    "SSERelay",
    "abort_stream",
    "arelay_sse",
    "await_call",
    "chunk_events",
    "client_socket",
    "open_stream",
    "peer_gone",
    "relay_sse",
    "sse_event",
    "until_disconnected",
]

#: Seconds of silence from DeepSeek after which a relay sends a keep-alive comment.
KEEPALIVE_INTERVAL = 15.0
#: An SSE comment: clients ignore it, proxies and browsers see the response alive.
KEEPALIVE_COMMENT = ": keep-alive\n\n"
#: Most seconds closing a relay waits for its reader thread to let go of the aborted stream.
ABORT_JOIN = 2.0
#: Seconds between a WSGI relay's looks at its client's socket (``peer=``) while DeepSeek is silent.
PEER_POLL = 1.0

T = TypeVar("T")
Receive = Callable[[], Awaitable[Any]]
Render = Callable[[ChatChunk], Iterator[str]]

_CHUNK, _ERROR, _END = 0, 1, 2


class ClientDisconnected(Exception):
    """The web client hung up before the answer was ready; its call was aborted."""


def sse_event(event: str, data: Any) -> str:
    """One server-sent event; JSON keeps a newline inside a token from ending the event."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def chunk_events(chunk: ChatChunk) -> Iterator[str]:
    """The default rendering: ``reasoning`` events, then ``content`` events, their data JSON strings."""
    if chunk.reasoning_content:
        yield sse_event("reasoning", chunk.reasoning_content)
    if chunk.content:
        yield sse_event("content", chunk.content)


def abort_stream(stream: ChatStream) -> None:
    """Break ``stream``'s connection now, from any thread (a thread reading it wakes with an error).

    ``stream.close()`` alone is not enough from another thread: closing a socket that a
    thread is blocked reading neither wakes that thread nor sends the FIN until its read ends.
    """
    stream.attempt.handle.abort()


def _read(stream: ChatStream, put: Callable[[Tuple[int, Any]], None]) -> None:
    """The reader thread: every chunk of ``stream``, then its error or its end."""
    try:
        with stream:
            for chunk in stream:
                put((_CHUNK, chunk))
    except BaseException as err:  # reported to the consumer, who decides what the client sees
        put((_ERROR, err))
    else:
        put((_END, None))


def _start_reader(stream: ChatStream, put: Callable[[Tuple[int, Any]], None]) -> threading.Thread:
    reader = threading.Thread(target=_read, args=(stream, put), name="deepseek-relay", daemon=True)
    reader.start()
    return reader


def _error_event(err: BaseException) -> str:
    return sse_event("error", f"{type(err).__name__}: {err}")


def _check_interval(keepalive: float) -> None:
    if isinstance(keepalive, bool) or not isinstance(keepalive, (int, float)) or not keepalive > 0:
        raise ValueError(f"keepalive must be a number of seconds > 0, got {keepalive!r}")


def client_socket(environ: Mapping[str, Any]) -> Optional[socket.socket]:
    """The client's socket, where the WSGI server shows it (gunicorn, Werkzeug), else None.

    Pass it to :func:`relay_sse` (``peer=``), which then notices a client that left
    without waiting for a write to fail. In Django, ``environ`` is ``request.META``; in
    Flask, ``request.environ``.
    """
    for key in ("gunicorn.socket", "werkzeug.socket"):
        sock = environ.get(key)
        if isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket):  # TLS cannot peek
            return sock
    return None


def peer_gone(sock: socket.socket) -> bool:
    """True once the client has closed (or reset) its side of ``sock``; never blocks or reads data.

    A client that only half-closes (shuts down its sending side and still reads) counts as
    gone too: browsers and HTTP clients do not do that while they wait for a response.
    """
    if not hasattr(select, "poll"):  # Windows: left to the failed writes
        return False
    try:
        # poll(), not select(): select fails past descriptor 1,023, which a busy process
        # reaches. And ask first: recv() on a socket with a timeout waits up to it.
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""  # readable: this does not block
    except OSError:  # reset, or already closed here
        return True


class SSERelay:
    """The SSE text of one stream, as a WSGI response body: iterate it, and close it (servers do).

    Made by :func:`relay_sse`. Closing it aborts the upstream call unless it had ended,
    even when the body was never iterated (a client that left before the first byte).
    With a ``peer`` socket it also looks every :data:`PEER_POLL` seconds, while DeepSeek is
    silent, whether the client closed it, and then aborts the call and ends.
    """

    def __init__(
        self,
        stream: ChatStream,
        keepalive: float,
        render: Render,
        done: Optional[str],
        peer: Optional[socket.socket] = None,
    ) -> None:
        _check_interval(keepalive)
        self.stream = stream
        self.keepalive = keepalive
        self.render = render
        self.done = done
        self.peer = peer
        self.ended = False
        self._reader: Optional[threading.Thread] = None
        self._events = self._generate()

    def __iter__(self) -> SSERelay:
        return self

    def __next__(self) -> str:
        return next(self._events)

    def _generate(self) -> Generator[str, None, None]:
        items: queue.SimpleQueue[Tuple[int, Any]] = queue.SimpleQueue()
        self._reader = _start_reader(self.stream, items.put)
        peer = self.peer
        wait = self.keepalive if peer is None else min(self.keepalive, PEER_POLL)
        last = time.monotonic()  # the last text handed to the server
        while True:
            try:
                kind, value = items.get(timeout=wait)
            except queue.Empty:
                if peer is not None and peer_gone(peer):
                    self._abort()
                    return
                if time.monotonic() - last >= self.keepalive:
                    yield KEEPALIVE_COMMENT
                    last = time.monotonic()
                continue
            if kind == _CHUNK:
                yield from self.render(value)
                last = time.monotonic()
                continue
            self.ended = True
            if kind == _ERROR:
                if not isinstance(value, DeepSeekError):
                    raise value
                yield _error_event(value)
            elif self.done is not None:
                yield self.done
            return

    def close(self) -> None:
        """Abort the upstream call unless it ended, and wait (briefly) until it has let go."""
        self._events.close()
        self._abort()

    def _abort(self) -> None:
        if self.ended:
            return
        self.ended = True
        abort_stream(self.stream)
        reader = self._reader
        if reader is None:
            self.stream.close()  # never iterated: nobody else holds the stream
        else:
            reader.join(ABORT_JOIN)  # it wakes at the abort and closes the stream itself


def relay_sse(
    stream: ChatStream,
    *,
    keepalive: float = KEEPALIVE_INTERVAL,
    render: Render = chunk_events,
    done: Optional[str] = sse_event("done", ""),
    peer: Optional[socket.socket] = None,
) -> SSERelay:
    """SSE text for ``stream``, for a WSGI response body; closing it aborts the call.

    A thread of its own reads the stream, so that the relay can send
    :data:`KEEPALIVE_COMMENT` after each ``keepalive`` seconds without a chunk. A stream
    that breaks midway ends with an ``error`` event (its data ``"ErrorClass: message"``);
    one read to its end with ``done`` (None sends nothing). The WSGI server closes the
    body when the response ends or a write to the client fails (Flask's ``Response`` and
    Django's ``StreamingHttpResponse`` pass that on): the upstream call is then aborted,
    its connection broken, unless it had ended.

    :param render: the SSE text of one chunk (default :func:`chunk_events`).
    :param peer: the client's socket (:func:`client_socket`): a client that closed it is
        noticed within :data:`PEER_POLL` seconds during a silence, without a failed write.
    """
    return SSERelay(stream, keepalive, render, done, peer)


class AsyncSSERelay:
    """The SSE text of one stream, as an ASGI response body: ``async for`` it. Made by :func:`arelay_sse`.

    Cancelling the task that iterates it (Starlette does when the client disconnects) or
    closing it (``aclose``) aborts the upstream call unless it had ended; so does dropping
    it unread (a response cancelled before its body began).
    """

    def __init__(self, stream: ChatStream, keepalive: float, render: Render, done: Optional[str]) -> None:
        _check_interval(keepalive)
        self.stream = stream
        self.keepalive = keepalive
        self.render = render
        self.done = done
        self.ended = False
        self._events: Optional[AsyncGenerator[str, None]] = None

    def __aiter__(self) -> AsyncSSERelay:
        return self

    async def __anext__(self) -> str:
        if self._events is None:
            self._events = self._generate()
        return await self._events.__anext__()

    async def _generate(self) -> AsyncGenerator[str, None]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Tuple[int, Any]] = asyncio.Queue()

        def put(item: Tuple[int, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
                loop.call_soon_threadsafe(items.put_nowait, item)

        _start_reader(self.stream, put)
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(items.get(), self.keepalive)
                except TimeoutError:
                    yield KEEPALIVE_COMMENT
                    continue
                if kind == _CHUNK:
                    for text in self.render(value):
                        yield text
                    continue
                self.ended = True
                if kind == _ERROR:
                    if not isinstance(value, DeepSeekError):
                        raise value
                    yield _error_event(value)
                elif self.done is not None:
                    yield self.done
                return
        finally:
            if not self.ended:
                abort_stream(self.stream)  # the reader thread wakes, closes the stream and ends

    async def aclose(self) -> None:
        """Abort the upstream call unless it ended."""
        if self._events is not None:
            await self._events.aclose()
        else:
            self._abandon()

    def _abandon(self) -> None:
        if self._events is None and not self.ended:
            self.ended = True
            abort_stream(self.stream)
            self.stream.close()  # never iterated: nobody else holds the stream

    def __del__(self) -> None:
        self._abandon()


def arelay_sse(
    stream: ChatStream,
    *,
    keepalive: float = KEEPALIVE_INTERVAL,
    render: Render = chunk_events,
    done: Optional[str] = sse_event("done", ""),
) -> AsyncSSERelay:
    """:func:`relay_sse` for an ASGI streaming response (``async for``), read on a thread of its own.

    The stream is never read on the event loop. Cancelling the task that iterates the
    relay (Starlette does when the client disconnects) or closing it aborts the upstream
    call at once, without waiting on the loop.
    """
    return AsyncSSERelay(stream, keepalive, render, done)


async def until_disconnected(receive: Receive) -> None:
    """Return when the ASGI client has disconnected (reads ``receive`` until ``http.disconnect``).

    Use it only where nothing else reads the request body: the body of a request is
    consumed by it (FastAPI has read it already when the endpoint runs).
    """
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


async def _unless_disconnected(receive: Optional[Receive], work: Awaitable[T], abort: Callable[[], Any]) -> T:
    """``work``'s result; ``abort()`` if the client disconnects first or this task is cancelled."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(receive)) if receive is not None else None
    try:
        if watcher is None:
            return await task
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        abort()
        task.cancel()
        raise ClientDisconnected("the client disconnected; its DeepSeek call was aborted")
    except asyncio.CancelledError:
        abort()
        task.cancel()
        raise
    finally:
        if watcher is not None:
            watcher.cancel()


async def await_call(pool: DeepSeekPool, future: cf.Future[T], receive: Optional[Receive] = None) -> T:
    """Await a future of ``pool.submit``; abort its call if the client leaves first.

    ``asyncio.wrap_future`` alone cancels only a call that has not started, and an ASGI
    server does not cancel an endpoint when its client disconnects. So the call is aborted
    (:meth:`~deepseek_pool.DeepSeekPool.abort`: its connection broken, no more attempts)
    when the ASGI ``receive`` reports ``http.disconnect`` (:class:`ClientDisconnected` is
    raised) or when the awaiting task is cancelled (``asyncio.wait_for``, a task group).

    :param receive: the request's ASGI ``receive`` (``request.receive``); None watches only
        for cancellation.
    """
    return await _unless_disconnected(receive, asyncio.wrap_future(future), partial(pool.abort, future))


async def open_stream(
    client: DeepSeekClient, messages: Messages, *, receive: Optional[Receive] = None, **params: Any
) -> ChatStream:
    """``client.chat_stream(messages, **params)`` opened on a thread; aborted if the client leaves first.

    Opening waits for DeepSeek's response head (and its retries): that wait runs on a
    thread of its own and ends at once, the call aborted, on disconnect or cancellation;
    errors it raises (401, 429 after retries ...) are raised here.
    """
    control = CallControl()
    opened: cf.Future[ChatStream] = cf.Future()

    def run() -> None:
        try:
            opened.set_result(client.chat_stream(messages, control=control, **params))
        except BaseException as err:
            opened.set_exception(err)

    threading.Thread(target=run, name="deepseek-relay-open", daemon=True).start()

    def abort() -> None:
        control.handle.abort()
        opened.add_done_callback(_close_opened)

    return await _unless_disconnected(receive, asyncio.wrap_future(opened), abort)


def _close_opened(opened: cf.Future[ChatStream]) -> None:
    """A stream that opened after its client left is closed unread."""
    if opened.exception() is None:
        opened.result().close()
