"""Incremental Server-Sent Events decoder: bytes in, events out.

Pure and transport-free, so the client can feed it whatever the socket gives and
the tests can feed it byte by byte. It follows the WHATWG HTML "event stream
interpretation" rules:

* the stream is UTF-8 (invalid bytes become U+FFFD); one leading BOM is skipped;
* lines end with CRLF, LF or CR, and a CR at the end of one chunk followed by an
  LF at the start of the next is a single line ending;
* a blank line dispatches the event, ``:`` starts a comment, ``field: value``
  loses one leading space of its value, a line without a colon is a field name
  with an empty value;
* ``data`` lines are joined with ``\\n``; an event without data is not
  dispatched; ``event`` sets the type (default ``"message"``); ``id`` sets the
  last event id (kept across events) unless it contains NUL; ``retry`` sets the
  reconnection time if it is all ASCII digits; other fields are ignored;
* at end of stream an event that was not terminated by a blank line is
  discarded; :attr:`SSEDecoder.pending` tells such a cut stream apart from a
  clean end.

The decoder works on bytes and decodes only complete values: line terminators,
``:`` and the space are ASCII, so a complete line never splits a UTF-8 character,
and a character split across two chunks simply waits in the line buffer.

Example::

    decoder = SSEDecoder()
    for chunk in response.iter_content(chunk_size=None):
        for event in decoder.feed(chunk):
            if event.data == "[DONE]":
                break
            handle(event.json())
    decoder.close()
"""

from __future__ import annotations

import json
import logging
from typing import Any, Iterable, Iterator, List, NamedTuple, Optional

__all__ = ["SSEDecoder", "ServerSentEvent", "iter_sse"]

logger = logging.getLogger(__name__)

_BOM = b"\xef\xbb\xbf"


class ServerSentEvent(NamedTuple):
    """One dispatched event.

    A named tuple: cheap to create (the decoder makes thousands per answer),
    immutable, comparable and picklable.

    :ivar event: the event type, ``"message"`` unless an ``event`` field set it.
    :ivar data: the ``data`` lines joined with ``"\\n"``.
    :ivar id: the last event id seen in the stream so far (it persists across
        events, as the spec's "last event ID buffer" does), or ``None``.
    :ivar retry: the reconnection time in milliseconds if this event's block
        carried a valid ``retry`` field, else ``None``.
    """

    event: str = "message"
    data: str = ""
    id: Optional[str] = None
    retry: Optional[int] = None

    def json(self) -> Any:
        """Parse :attr:`data` as JSON (DeepSeek sends one chunk object per event).

        :raises json.JSONDecodeError: if the data is not JSON (e.g. ``[DONE]``).
        """
        return json.loads(self.data)


# Building the tuple directly skips NamedTuple's Python-level __new__: about
# half the cost of creating an event, on the hottest path of streaming.
_new_event = tuple.__new__


class SSEDecoder:
    """Incremental, thread-unsafe (one per stream) Server-Sent Events decoder.

    Feed it chunks as they arrive with :meth:`feed`, which returns the events
    those chunks completed; call :meth:`close` at end of stream.
    """

    __slots__ = (
        "_closed",
        "_data",
        "_event",
        "_fields",
        "_retry_field",
        "_skip_lf",
        "_started",
        "_tail",
        "last_event_id",
        "retry",
    )

    def __init__(self) -> None:
        #: bytes of an unterminated line (or, before the first line, of a
        #: possible BOM); never contains CR or LF
        self._tail: bytes = b""
        #: the last chunk ended in CR: an LF starting the next chunk belongs to it
        self._skip_lf = False
        self._started = False
        self._closed = False
        self._data: List[bytes] = []
        self._event: str = ""
        self._retry_field: Optional[int] = None
        #: a field line was seen since the last blank line
        self._fields = False
        #: the stream's last event id buffer (``None`` until an ``id`` field)
        self.last_event_id: Optional[str] = None
        #: the stream's reconnection time in milliseconds, from ``retry`` fields
        self.retry: Optional[int] = None

    @property
    def pending(self) -> bool:
        """Whether bytes or fields are buffered that no blank line has dispatched.

        ``True`` after :meth:`close` means the stream was cut in the middle of an
        event (or of a line); comments and blank lines alone leave it ``False``.
        """
        return bool(self._tail) or self._fields

    def feed(self, chunk: bytes) -> List[ServerSentEvent]:
        """Decode one chunk of the byte stream.

        :param chunk: the next bytes, split anywhere (even inside a UTF-8
            character or between CR and LF).
        :returns: the events completed by this chunk, in stream order.
        :raises ValueError: if the decoder was closed.
        """
        if self._closed:
            raise ValueError("feed() after close()")
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 10:  # "\n" completing a CRLF split across chunks
                chunk = chunk[1:]
                if not chunk:
                    return []
        if self._tail:
            chunk = self._tail + chunk
        if not self._started:
            if len(chunk) < 3 and _BOM.startswith(chunk):
                self._tail = chunk  # maybe a BOM: wait for the rest
                return []
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        if b"\r" in chunk:
            if chunk[-1] == 13:
                self._skip_lf = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        # The last piece is what follows the last line break: a partial line.
        self._tail = lines.pop()
        if not lines:
            return []
        return self._lines(lines)

    def _lines(self, lines: List[bytes]) -> List[ServerSentEvent]:
        """Interpret complete lines (without terminators); return dispatched events."""
        events: List[ServerSentEvent] = []
        data = self._data
        fields = self._fields
        for line in lines:
            if not line:
                if data:
                    events.append(
                        _new_event(
                            ServerSentEvent,
                            (
                                self._event or "message",
                                (data[0] if len(data) == 1 else b"\n".join(data)).decode("utf-8", "replace"),
                                self.last_event_id,
                                self._retry_field,
                            ),
                        )
                    )
                    data = []
                self._event = ""
                self._retry_field = None
                fields = False
            elif line[:6] == b"data: ":  # the common case, checked first
                data.append(line[6:])
                fields = True
            elif line[0] == 58:  # ":" comment, e.g. ": keep-alive"
                continue
            else:
                fields = True
                colon = line.find(b":")
                if colon < 0:
                    name, value = line, b""
                else:
                    name = line[:colon]
                    value = line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :]
                if name == b"data":
                    data.append(value)
                elif name == b"event":
                    self._event = value.decode("utf-8", "replace")
                elif name == b"id":
                    if b"\0" not in value:
                        self.last_event_id = value.decode("utf-8", "replace")
                elif name == b"retry":
                    if value.isdigit():  # bytes.isdigit() accepts ASCII digits only
                        self._retry_field = self.retry = int(value)
                else:
                    logger.debug("ignoring SSE field %r", name)
        self._data = data
        self._fields = fields
        return events

    def close(self) -> List[ServerSentEvent]:
        """Signal end of stream.

        Every complete event was already returned by :meth:`feed`; an event not
        terminated by a blank line is discarded, as the spec requires, so this
        returns an empty list. :attr:`pending` keeps telling whether that
        happened. Closing twice is harmless.

        :returns: the events completed by the end of the stream (always none;
            a list for symmetry with :meth:`feed`).
        """
        if not self._closed:
            self._closed = True
            if self.pending:
                logger.debug("SSE stream ended inside an event (%d unterminated bytes)", len(self._tail))
            # Keep _tail and _fields so ``pending`` stays meaningful; drop the data.
            self._data = []
        return []


def iter_sse(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """Decode an iterable of byte chunks into events.

    A convenience over :class:`SSEDecoder` for callers that do not need
    :attr:`SSEDecoder.pending`.

    :param chunks: the byte stream, split anywhere.
    :returns: an iterator of the dispatched events, in order.
    """
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.close()


def _benchmark() -> None:
    """Print the decoder's cost per event on a DeepSeek-like stream.

    Run: ``python -c "from deepseek_pool.wire.sse import _benchmark; _benchmark()"``.
    """
    import time

    piece = (
        b'data: {"id":"3f1c","object":"chat.completion.chunk","created":1764300000,'
        b'"model":"deepseek-flash","system_fingerprint":"fp_1","choices":[{"index":0,'
        b'"delta":{"content":"ab"},"logprobs":null,"finish_reason":null}]}\n\n'
    )
    n = 200_000
    cases = {
        "one event per feed": [piece] * n,
        "16 events per feed": [piece * 16] * (n // 16),
        "CRLF, 16 per feed": [piece.replace(b"\n", b"\r\n") * 16] * (n // 16),
        "4 KiB reads": [b"".join([piece] * n)[i : i + 4096] for i in range(0, len(piece) * n, 4096)],
    }
    for name, chunks in cases.items():
        decoder = SSEDecoder()
        start = time.perf_counter()
        count = 0
        for chunk in chunks:
            count += len(decoder.feed(chunk))
        elapsed = time.perf_counter() - start
        assert count == n, count
        print(f"{name:20s} {elapsed / n * 1e6:.3f} us/event")


if __name__ == "__main__":
    _benchmark()
