"""A streamed chat answer read off the wire: :class:`ChatStream`."""

from __future__ import annotations

import json
import time
import weakref
from inspect import GEN_CREATED, getgeneratorstate
from typing import Any, Callable, Dict, Generator, Iterator, Optional, Protocol

import requests

from ..errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    DeepSeekError,
    status_error,
)
from ..telemetry import CallTrace
from ..types import ChatChunk, ChatCompletion, ChatCompletionBuilder
from .adapter import request_id_of
from .body import raw_pieces, set_read_timeout
from .calls import WATCHDOG, Attempt
from .sse import SSEDecoder

__all__ = [
    "DONE",
    "STREAM_END_GRACE",
    "BodyReader",
    "ChatStream",
]

#: After ``data: [DONE]`` a well-behaved server ends the body at once; one that
#: holds it open gets its connection closed after this many seconds.
STREAM_END_GRACE = 0.1


class BodyReader(Protocol):
    """What reads a body nobody iterates while its caller sleeps: the process's
    :class:`~deepseek_pool.wire.reader.StreamReader` (which imports this module, never the
    other way round)."""

    def read(self, stream: ChatStream) -> Optional[bool]: ...


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

    :param reader: a :class:`BodyReader` (the shared stream reader) that :meth:`completion`
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
        reader: Optional[BodyReader] = None,
        on_first_token: Optional[Callable[[float], None]] = None,
    ) -> None:
        self.response = response
        self.request_id = request_id_of(response.headers)
        self._attempt = attempt
        self._builder = ChatCompletionBuilder()
        self._reader = reader
        trace = attempt.trace
        if trace is not None:
            on_first_token = trace.first_chunk_hook(on_first_token)
        self._on_first_token = on_first_token
        self._trace: Any = None
        self._trace_end: Any = None  # a weakref.finalize while a traced stream is open
        self._failure: Optional[BaseException] = None
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
        if self._builder.finish_reason is None:
            if done:
                failure = APIConnectionError(
                    "the stream sent 'data: [DONE]' before any finish_reason (the server cut it short)"
                )
            else:
                failure = APIConnectionError(
                    "the stream ended before any finish_reason (connection closed by the server)"
                )
            self._failure = failure
            self.close()
            raise failure
        self.close()

    def _broke(self, err: Exception) -> None:
        """Reading failed with ``err``: fine if the answer was already whole, else raise what it means."""
        if self._builder.finish_reason is not None and not isinstance(err, APIStatusError):
            self.close()
            return  # the answer was complete; only the end of the body went wrong
        if isinstance(err, DeepSeekError) and not (isinstance(err, APITimeoutError) or self._attempt.expired):
            self._failure = err
            self.close()
            raise err
        translated = self._attempt.translate(err)
        if type(translated) is APIConnectionError:
            translated = APIConnectionError(f"the stream broke before any finish_reason: {err}")
        self._failure = translated
        self.close()
        raise translated from err

    def traced(self, trace: CallTrace) -> None:
        """Hand this stream the span of its call (a ``chat_stream`` the caller reads): it ends the
        span when it ends, is closed, or is garbage collected unclosed -- never leaked."""
        self._trace = trace
        self._trace_end = weakref.finalize(self, trace.stream_abandoned)

    def _elsewhere(self, reader: BodyReader) -> Generator[ChatChunk, None, None]:
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
            set_read_timeout(self.response.raw, STREAM_END_GRACE)
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
            isclosed = getattr(self.response.raw, "isclosed", None)
            if isclosed is None or not isclosed():
                self.response.close()
            finalizer = self._trace_end
            if finalizer is not None:
                self._trace_end = None
                finalizer.detach()
                self._trace.stream_closed(self._failure, self._builder.finish_reason is not None)

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
        self._iterator.close()
