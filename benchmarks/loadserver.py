"""A lean DeepSeek-shaped load server for the benchmark, run in its own process.

One asyncio loop, one :class:`asyncio.Protocol` per connection, responses rendered
from byte templates with ``%`` (no JSON encoding, no HTTP library): it must cost the
server far less CPU per request than any client spends, so that on a two-core machine
the client limits the result. Its own CPU is reported so that this can be checked.

Each answer is held back ``latency`` seconds (a timer, not a sleep). Streamed answers
send ``chunks`` SSE events ``gap`` seconds apart after that latency. Faults are drawn
per request from a seeded RNG: 503, 429 (with DeepSeek's documented text for a 429
that is not about the account's cap), or a TCP reset after the request is read. With
``max_concurrency`` N, a request that arrives while N are being answered gets a 429 at
once, naming the number as DeepSeek does ("concurrency limit of N based on your
remaining balance"), like ``FakeDeepSeek(max_concurrency=N)``. ``jitter`` spreads each
latency (of an answer, or of a stream's first event) uniformly over ``latency * (1 +- jitter)``.

Control is a line of JSON per command on stdin, answered by a line of JSON on stdout::

    {"cmd": "reset", "config": {"latency": 0.05, "faults": {"503": 0.1}}}   -> {"ok": true}
    {"cmd": "reset", "config": {"latency": 0.2, "jitter": 0.25, "max_concurrency": 100}}
    {"cmd": "stats"}                                                       -> {"requests": ...}
    {"cmd": "stop"}

Run: ``python -m benchmarks.loadserver [--port 0] [--tls-cert CHAIN --tls-key KEY]``; the
first line printed is ``READY <port>``. It listens on 127.0.0.1 only; with ``--tls-cert`` it
speaks HTTPS (asyncio's TLS transport: every ``write``, so every streamed event, is one TLS
record, as a server that flushes each event sends it).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import contextlib
import json
import os
import random
import resource
import socket
import ssl
import struct
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from benchmarks import protocol

HOST = "127.0.0.1"
BACKLOG = 4096  # 2,500 connections open at once in the DeepSeek-scale cells
MAX_HEAD = 65536
_LINGER_RST = struct.pack("ii", 1, 0)

_COMPLETION = (
    b'{"id":"bench-%d","object":"chat.completion","created":1764288000,"model":"deepseek-flash",'
    b'"system_fingerprint":"fp_bench","choices":[{"index":0,"message":{"role":"assistant","content":"%s"},'
    b'"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":16,"completion_tokens":40,'
    b'"total_tokens":56,"prompt_tokens_details":{"cached_tokens":0},"prompt_cache_hit_tokens":0,'
    b'"prompt_cache_miss_tokens":16}}'
)
_JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nx-request-id: r%d\r\n\r\n"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nx-request-id: r%d\r\n\r\n"
)
_CHUNK_EVENT = (
    b'data: {"id":"bench-%d","object":"chat.completion.chunk","created":1764288000,"model":"deepseek-flash",'
    b'"system_fingerprint":"fp_bench","choices":[{"index":0,"delta":{"content":"%s"},"logprobs":null,'
    b'"finish_reason":null}]}\n\n'
)
_LAST_EVENTS = (
    b'data: {"id":"bench-%d","object":"chat.completion.chunk","created":1764288000,"model":"deepseek-flash",'
    b'"system_fingerprint":"fp_bench","choices":[{"index":0,"delta":{"content":""},"logprobs":null,'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":16,"completion_tokens":40,"total_tokens":56,'
    b'"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":16}}\n\ndata: [DONE]\n\n'
)
_ERROR_BODIES = {
    503: b'{"error":{"message":"Server overloaded, please retry shortly.","type":"service_unavailable_error",'
    b'"param":null,"code":"service_unavailable"}}',
    # DeepSeek's documented text for a 429 that is not about the account's concurrency cap.
    429: b'{"error":{"message":"Rate Limit Reached: you are sending your requests too quickly. Please pace your '
    b'requests reasonably.","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}',
    404: b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}',
    400: b'{"error":{"message":"no #bench- marker in the request","type":"invalid_request_error",'
    b'"param":null,"code":null}}',
}
_REASONS = {503: b"Service Unavailable", 429: b"Too Many Requests", 404: b"Not Found", 400: b"Bad Request"}


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _error_response(status: int) -> bytes:
    body = _ERROR_BODIES[status]
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        _REASONS[status],
        len(body),
        body,
    )


_ERRORS = {status: _error_response(status) for status in _ERROR_BODIES}
_CAP_BODY = (
    b'{"error":{"message":"Rate Limit Reached: concurrency limit of %d based on your remaining balance",'
    b'"type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}'
)


def _cap_response(cap: int) -> bytes:
    """The 429 above the account's concurrency cap, naming it (the wording users reported)."""
    body = _CAP_BODY % cap
    return b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


class Config:
    """What the server does with the next requests (replaced as a whole by ``reset``)."""

    def __init__(self, raw: Optional[Dict[str, Any]] = None) -> None:
        raw = raw or {}
        self.latency = float(raw.get("latency", 0.05))
        self.jitter = float(raw.get("jitter", 0.0))
        self.max_concurrency = int(raw.get("max_concurrency") or 0)
        self.cap_response = _cap_response(self.max_concurrency) if self.max_concurrency else b""
        self.chunks = int(raw.get("chunks", protocol.DEFAULT_CHUNKS))
        self.gap = float(raw.get("gap", 0.002))
        faults = raw.get("faults") or {}
        self.p503 = float(faults.get("503", 0.0))
        self.p429 = float(faults.get("429", 0.0))
        self.preset = float(faults.get("reset", 0.0))
        self.any_fault = self.p503 + self.p429 + self.preset > 0
        # Only the smoke test sets this: every n-th answer is wrong, to prove answers are checked.
        self.wrong_every = int(raw.get("wrong_every", 0))
        self.seed = int(raw.get("seed", 1))


class Stats:
    """Counters since the last ``reset``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.requests = 0
        self.connections_opened = 0
        self.connections_used = 0
        self.open_now = 0
        self.max_open = 0
        self.faults: Dict[str, int] = {"503": 0, "429": 0, "reset": 0, "cap": 0}
        self.max_answering = 0
        self.streams = 0
        self.events = 0
        self.bad = 0
        self.started = time.monotonic()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu0 = usage.ru_utime + usage.ru_stime


class Server:
    """Shared state of all connections: config, counters, RNG, the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.config = Config()
        self.stats = Stats(0)
        self.rng = random.Random(1)
        self.open_now = 0
        #: requests admitted under ``max_concurrency`` and not yet answered
        self.answering = 0

    def reset(self, raw: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        self.config = Config(raw)
        self.rng = random.Random(self.config.seed)
        self.stats = Stats(self.stats.epoch + 1)
        self.stats.open_now = self.stats.max_open = self.open_now
        return {"ok": True}

    def snapshot(self) -> Dict[str, Any]:
        s = self.stats
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "requests": s.requests,
            "connections_opened": s.connections_opened,
            "connections_used": s.connections_used,
            "max_open": s.max_open,
            "max_answering": s.max_answering,
            "faults": dict(s.faults),
            "streams": s.streams,
            "events": s.events,
            "bad": s.bad,
            "cpu": usage.ru_utime + usage.ru_stime - s.cpu0,
            "elapsed": time.monotonic() - s.started,
            "maxrss_kb": usage.ru_maxrss,
        }


class Connection(asyncio.Protocol):
    """One client connection: parse a request, answer it after the latency, repeat."""

    __slots__ = ("buffer", "busy", "closed", "epoch", "holding", "server", "timers", "transport")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = bytearray()
        self.busy = False
        self.epoch = -1
        self.timers: List[asyncio.TimerHandle] = []
        self.closed = False
        #: this connection's request holds one of the ``max_concurrency`` slots
        self.holding = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        server.open_now += 1
        stats = server.stats
        stats.connections_opened += 1
        stats.max_open = max(stats.max_open, server.open_now)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed = True
        self.server.open_now -= 1
        self._free()
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next_request()

    def _next_request(self) -> None:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self._abort()
            return
        head = bytes(buffer[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        elif b"\r\ntransfer-encoding:" in head:
            self._abort()  # no benchmark client sends a chunked request body
            return
        if len(buffer) < end + 4 + length:
            return
        body = bytes(buffer[end + 4 : end + 4 + length])
        del buffer[: end + 4 + length]
        self.busy = True
        self._handle(head, body)

    def _handle(self, head: bytes, body: bytes) -> None:
        server = self.server
        stats = server.stats
        config = server.config
        stats.requests += 1
        if self.epoch != stats.epoch:
            self.epoch = stats.epoch
            stats.connections_used += 1
        line_end = head.find(b"\r\n")
        request_line = head[: line_end if line_end >= 0 else len(head)]
        if b"/chat/completions" not in request_line:
            stats.bad += 1
            self._later(config.latency, self._send_last, _ERRORS[404])
            return
        at = body.find(protocol.MARKER)
        if at < 0:
            stats.bad += 1
            self._later(config.latency, self._send_last, _ERRORS[400])
            return
        start = at + len(protocol.MARKER)
        stop = start
        while stop < len(body) and 48 <= body[stop] <= 57:
            stop += 1
        index = int(body[start:stop] or b"0")
        if config.max_concurrency:
            if server.answering >= config.max_concurrency:
                stats.faults["cap"] += 1
                self._send_last(config.cap_response)  # at once, as DeepSeek answers above the cap
                return
            server.answering += 1
            self.holding = True
            if server.answering > stats.max_answering:
                stats.max_answering = server.answering
        if config.any_fault:
            draw = server.rng.random()
            if draw < config.p503:
                stats.faults["503"] += 1
                self._later(config.latency, self._send_last, _ERRORS[503])
                return
            draw -= config.p503
            if draw < config.p429:
                stats.faults["429"] += 1
                self._later(config.latency, self._send_last, _ERRORS[429])
                return
            draw -= config.p429
            if draw < config.preset:
                stats.faults["reset"] += 1
                self._later(config.latency, self._reset)
                return
        answer_index = index
        if config.wrong_every and stats.requests % config.wrong_every == 0:
            answer_index = index + 1
        stream_at = body.find(b'"stream":')
        if stream_at >= 0 and body[stream_at + 9 : stream_at + 14].lstrip().startswith(b"true"):
            self._stream(index, answer_index, config)
            return
        content = protocol.answer_for(answer_index).encode()
        payload = _COMPLETION % (index, content)
        latency = config.latency
        if config.jitter:
            latency *= 1.0 + config.jitter * (2.0 * server.rng.random() - 1.0)
        self._later(latency, self._send_last, (_JSON_HEAD % (len(payload), index)) + payload)

    def _stream(self, index: int, answer_index: int, config: Config) -> None:
        self.server.stats.streams += 1
        pieces = protocol.pieces_of(protocol.answer_for(answer_index), config.chunks)
        events = [_chunked(_CHUNK_EVENT % (index, piece.encode())) for piece in pieces]
        events[0] = (_SSE_HEAD % index) + events[0]
        events[-1] += _chunked(_LAST_EVENTS % index) + b"0\r\n\r\n"
        latency = config.latency
        if config.jitter:
            latency *= 1.0 + config.jitter * (2.0 * self.server.rng.random() - 1.0)
        self._later(latency, self._send_event, events, 0, config.gap)

    def _send_event(self, events: List[bytes], position: int, gap: float) -> None:
        self.timers.clear()
        if self.closed or self.transport is None:
            return
        self.transport.write(events[position])
        self.server.stats.events += 1
        position += 1
        if position < len(events):
            self._later(gap, self._send_event, events, position, gap)
        else:
            self._done()

    def _later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        self.timers.append(self.server.loop.call_later(delay, callback, *args))

    def _send_last(self, data: bytes) -> None:
        self.timers.clear()
        if self.closed or self.transport is None:
            return
        self.transport.write(data)
        self._done()

    def _free(self) -> None:
        if self.holding:
            self.holding = False
            self.server.answering -= 1

    def _done(self) -> None:
        self._free()
        self.busy = False
        if self.buffer:
            self._next_request()

    def _reset(self) -> None:
        self.timers.clear()
        self._free()
        self._abort()

    def _abort(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as a crashed or overloaded server would."""
        transport = self.transport
        if transport is None or self.closed:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: abort() is enough
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        transport.abort()


def _control(server: Server, stop: asyncio.Future[None]) -> None:
    """Read commands from stdin in a thread; run them on the loop; answer on stdout."""
    loop = server.loop
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            command = json.loads(line)
        except ValueError:
            print(json.dumps({"error": "not JSON"}), flush=True)
            continue
        name = command.get("cmd")
        if name == "stop":
            break
        answer: cf.Future[Dict[str, Any]] = cf.Future()

        def run(
            name: str = name, command: Dict[str, Any] = command, answer: cf.Future[Dict[str, Any]] = answer
        ) -> None:
            try:
                if name == "reset":
                    answer.set_result(server.reset(command.get("config")))
                elif name == "stats":
                    answer.set_result(server.snapshot())
                else:
                    answer.set_result({"error": f"unknown command {name!r}"})
            except Exception as err:  # report, never kill the server
                answer.set_result({"error": repr(err)})

        loop.call_soon_threadsafe(run)
        try:
            print(json.dumps(answer.result(timeout=30)), flush=True)
        except cf.TimeoutError:
            print(json.dumps({"error": "the loop did not answer in 30 s"}), flush=True)

    def finish() -> None:
        if not stop.done():
            stop.set_result(None)

    loop.call_soon_threadsafe(finish)


async def serve(port: int, tls: Optional[ssl.SSLContext] = None) -> None:
    loop = asyncio.get_running_loop()
    server = Server(loop)
    listener = await loop.create_server(
        lambda: Connection(server), HOST, port, backlog=BACKLOG, reuse_address=True, ssl=tls
    )
    bound: Tuple[str, int] = listener.sockets[0].getsockname()[:2]
    stop: asyncio.Future[None] = loop.create_future()
    print(f"READY {bound[1]} pid={os.getpid()}", flush=True)
    threading.Thread(target=_control, args=(server, stop), name="control", daemon=True).start()
    try:
        await stop
    finally:
        listener.close()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", help="the private key of --tls-cert")
    args = parser.parse_args(argv)
    tls: Optional[ssl.SSLContext] = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    asyncio.run(serve(args.port, tls))


if __name__ == "__main__":
    main()
