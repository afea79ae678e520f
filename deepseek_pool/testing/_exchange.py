"""One request/response on a connection, and the byte-level ways of answering it.

Faults live here: trickled blank lines, keep-alive comments, cut streams, held streams.
The server decides *what* to answer; an :class:`Exchange` decides *how the bytes go out*,
and tells the server (through ``record``) when the answer counts as sent.
"""

from __future__ import annotations

import selectors
import socket
import threading
from dataclasses import dataclass
from typing import Callable, List, Optional

from deepseek_pool.testing._faults import Fault
from deepseek_pool.testing._fields import error_body
from deepseek_pool.testing._http import BLANK_CHUNK, CHUNK_END, KEEPALIVE_CHUNK, STATUS_LINES, http_date

#: What the connection does after an answer: keep it, close it, or reset it (RST).
KEEP, CLOSE, RESET = 0, 1, 2

_SSE = "text/event-stream; charset=utf-8"
_HOLD_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Wire:
    """Server-wide settings every exchange needs, built once per server.

    :ivar stopping: set by ``stop()``; every wait below returns early on it.
    :ivar record: ``record(status, leaving, generating)`` counts a status and/or leaves in-flight
        (and the account's concurrency count, for an exchange counted there).
    """

    stopping: threading.Event
    record: Callable[[Optional[int], bool, bool], None]
    trickle_interval: float
    chunk_delay: float


class Exchange:
    """The state of one answer: socket, request id, keep-alive, latency still to wait.

    ``head_only`` (a HEAD request): every answer is sent as its status and headers alone, its
    ``Content-Length`` kept, its body and body faults left out.
    """

    __slots__ = ("delay", "ended", "generating", "head_only", "keep_alive", "rid", "sock", "wire")

    def __init__(
        self, wire: Wire, sock: socket.socket, rid: str, keep_alive: bool, delay: float, head_only: bool = False
    ) -> None:
        self.wire = wire
        self.sock = sock
        self.rid = rid
        self.keep_alive = keep_alive
        self.delay = delay
        self.head_only = head_only
        self.ended = False
        #: counted against the account's concurrency cap until it ends
        self.generating = False

    def head(self, status: int, content_type: str, length: Optional[int], extra: str = "") -> bytes:
        """Status line and headers; ``length`` None means chunked transfer encoding."""
        framing = "Transfer-Encoding: chunked\r\n" if length is None else f"Content-Length: {length}\r\n"
        close = "" if self.keep_alive else "Connection: close\r\n"
        return (
            f"{STATUS_LINES[status]}Date: {http_date()}\r\nContent-Type: {content_type}\r\n{framing}"
            f"x-ds-trace-id: {self.rid}\r\nx-request-id: {self.rid}\r\n{extra}{close}\r\n"
        ).encode("latin-1")

    def wait_latency(self) -> bool:
        """Sleep the drawn latency once; False when the server stopped meanwhile."""
        delay, self.delay = self.delay, 0.0
        return not (delay and self.wire.stopping.wait(delay))

    def pause(self, seconds: float) -> bool:
        """Wait without burning CPU; False when the server stopped meanwhile."""
        stopping = self.wire.stopping
        return not stopping.wait(seconds) if seconds > 0 else not stopping.is_set()

    def end(self, status: Optional[int]) -> None:
        """Count the answer and leave in-flight, once, before its last bytes go out.

        Done before the send so that a client that has read the answer always sees it counted,
        and sees its slot of the concurrency cap free again (DeepSeek is done generating).
        """
        if not self.ended:
            self.ended = True
            self.wire.record(status, True, self.generating)

    def _after(self) -> int:
        return KEEP if self.keep_alive else CLOSE

    def send(self, status: int, body: bytes, content_type: str = "application/json", extra: str = "") -> int:
        """Answer with a complete body after the latency: one ``sendall``."""
        if not self.wait_latency():
            return CLOSE
        self.end(status)
        head = self.head(status, content_type, len(body), extra)
        self.sock.sendall(head if self.head_only else head + body)
        return self._after()

    def error(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str = "invalid_request_error",
        param: Optional[str] = None,
        extra: str = "",
    ) -> int:
        """Answer with DeepSeek's error body."""
        return self.send(status, error_body(message, type_=type_, code=code, param=param), extra=extra)

    def plain(self, body: bytes, fault: Optional[Fault]) -> int:
        """A non-streamed 200, with the body faults that apply to it."""
        kind = fault.kind if fault is not None and not self.head_only else "ok"
        count = fault.count if fault is not None else 0
        if kind == "empty":
            return self.send(200, b" \n\n  \n")
        if kind == "cut":
            if not self.wait_latency():
                return CLOSE
            self.end(200)
            self.sock.sendall(self.head(200, "application/json", len(body)) + body[:count])
            return CLOSE
        if kind not in ("trickle", "trickle_forever"):
            return self.send(200, body)
        # Blank lines before the JSON: the length is unknown once headers are out, so chunked.
        self.wire.record(200, False, False)
        self.sock.sendall(self.head(200, "application/json", None))
        if kind == "trickle_forever":
            return self._trickle_forever(BLANK_CHUNK)
        for _ in range(count):
            if not self.pause(self.wire.trickle_interval):
                return CLOSE
            self.sock.sendall(BLANK_CHUNK)
        if not self.wait_latency():
            return CLOSE
        self.end(None)
        self.sock.sendall(b"%x\r\n%s\r\n%s" % (len(body), body, CHUNK_END))
        return self._after()

    def stream(self, events: List[bytes], fault: Optional[Fault]) -> int:
        """A streamed 200: SSE events in chunked encoding, with the stream faults."""
        kind = fault.kind if fault is not None else "ok"
        if kind == "empty":
            return self.send(200, b"\n", _SSE)
        sock = self.sock
        if kind == "hold_after_done_close":
            return self._close_delimited_hold(events)
        head = self.head(200, _SSE, None, "Cache-Control: no-cache\r\n")
        if kind == "cut" and fault is not None:
            events = events[: min(fault.count, len(events) - 1)]
        trickle = fault.count if fault is not None and kind == "trickle" else 0
        # A cut or held stream never gets its terminating chunk, so it stays in flight until
        # the connection goes; every other stream is counted done just before its last bytes.
        finishing = kind not in ("cut", "hold_after_done")
        ending = CHUNK_END if finishing else b""
        framed = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
        if not trickle and kind != "trickle_forever" and not self.wire.chunk_delay:
            if not self.wait_latency():
                return CLOSE
            if finishing:
                self.end(200)
            else:
                self.wire.record(200, False, False)
            sock.sendall(head + b"".join(framed) + ending)  # nothing to wait between: one write
        else:
            self.wire.record(200, False, False)
            sock.sendall(head)
            if kind == "trickle_forever":
                return self._trickle_forever(KEEPALIVE_CHUNK)
            for _ in range(trickle):
                if not self.pause(self.wire.trickle_interval):
                    return CLOSE
                sock.sendall(KEEPALIVE_CHUNK)
            if not self.wait_latency():
                return CLOSE
            last = len(framed) - 1
            for i, chunk in enumerate(framed):
                if i and not self.pause(self.wire.chunk_delay):
                    return CLOSE
                if i == last and finishing:
                    self.end(None)
                    sock.sendall(chunk + ending)
                else:
                    sock.sendall(chunk)
        if kind == "hold_after_done":
            self._hold()
            return CLOSE
        return self._after() if finishing else CLOSE

    def _close_delimited_hold(self, events: List[bytes]) -> int:
        """Every event and ``[DONE]`` in a body that only the close would end (``Connection: close``,
        neither length nor chunks, as RFC 9112 section 6.3 allows), then the connection held open."""
        if not self.wait_latency():
            return CLOSE
        self.wire.record(200, False, False)  # never finished: in flight until the connection goes
        head = (
            f"{STATUS_LINES[200]}Date: {http_date()}\r\nContent-Type: {_SSE}\r\nCache-Control: no-cache\r\n"
            f"x-ds-trace-id: {self.rid}\r\nx-request-id: {self.rid}\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        self.sock.sendall(head + b"".join(events))
        self._hold()
        return CLOSE

    def _trickle_forever(self, line: bytes) -> int:
        while self.pause(self.wire.trickle_interval):
            self.sock.sendall(line)  # raises once the client has gone
        return CLOSE

    def _hold(self) -> None:
        """Keep a finished stream open until the client closes it or the server stops."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            while not self.wire.stopping.is_set():
                if selector.select(_HOLD_POLL_SECONDS):
                    return  # EOF (or unexpected bytes): the client is done with this stream
