"""A read timeout shorter than the attempt's deadline, kept by the watchdog (a blocking socket reads the body).

Over real sockets on 127.0.0.1 (tests/rawserver.py): silence ends the read within its
timeout, keep-alive lines and a slow consumer do not count as silence, and a retry after
a silent attempt runs on a connection nobody breaks.
"""

from __future__ import annotations

import json
import time
from typing import Any, List

import pytest

import deepseek_pool as dp

from .rawserver import RawServer, chunk, respond, script, sequence, sse_head

KEY = "sk-SECRET-0123456789"
READ = 0.4  # the read timeout under test; the total deadline is far away


def event(content: str, finish: Any = None) -> bytes:
    payload = {
        "id": "s1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "deepseek-chat",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    return chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")


DONE = chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def client_for(url: str, retries: int = 0, shared_reader: bool = True) -> dp.DeepSeekClient:
    retry = dp.DeepSeekRetry(retries, backoff_factor=0.01, backoff_jitter=0)
    return dp.DeepSeekClient(
        KEY, base_url=url, timeout=dp.Timeout(30, read=READ), max_retries=retry, shared_stream_reader=shared_reader
    )


#: How a stream is read: iterated by its caller, aggregated by the shared reader, or aggregated in its thread.
READS = ["iterated", "shared-reader", "own-thread"]


def read_stream(url: str, how: str, retries: int = 0) -> str:
    if how == "iterated":
        with client_for(url, retries).chat_stream("x") as stream:
            return "".join(chunk.content or "" for chunk in stream)
    return client_for(url, retries, shared_reader=how == "shared-reader").chat("x", stream=True).content


@pytest.mark.parametrize("how", READS)
def test_a_stream_that_goes_silent_ends_within_its_read_timeout(how: str) -> None:
    server = RawServer(script([sse_head() + event("a") + event("b"), ("sleep", 10)]))
    with server:
        started = time.monotonic()
        with pytest.raises(dp.APITimeoutError, match="read timeout"):
            read_stream(server.url, how)
        took = time.monotonic() - started
    assert READ <= took < READ + 1.0


def test_a_plain_body_that_goes_silent_ends_within_its_read_timeout() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    server = RawServer(script([head + b'{"id": "c1", ', ("sleep", 10)]))
    with server:
        started = time.monotonic()
        with pytest.raises(dp.APITimeoutError):
            client_for(server.url).chat("x")
        took = time.monotonic() - started
    assert READ <= took < READ + 1.0


@pytest.mark.parametrize("how", READS)
def test_keep_alive_lines_and_slow_events_are_not_silence(how: str) -> None:
    # Three times the read timeout in all, never READ without a byte.
    keep_alive = ("trickle", chunk(b": keep-alive\n\n"), READ / 3, 9)
    server = RawServer(script([sse_head() + event("a"), keep_alive, event("b", "stop"), DONE]))
    with server:
        assert read_stream(server.url, how) == "ab"


def test_a_consumer_slower_than_the_read_timeout_is_not_silence() -> None:
    server = RawServer(script([sse_head() + event("a") + event("b") + event("c", "stop") + DONE], close=False))
    seen: List[str] = []
    with server:
        for piece in client_for(server.url).chat_stream("x"):
            seen.append(piece.content or "")
            time.sleep(1.5 * READ)  # the socket holds the rest meanwhile: no read is waiting
    assert "".join(seen) == "abc"


@pytest.mark.parametrize("how", READS[1:])
def test_the_retry_after_a_silent_attempt_runs_undisturbed(how: str) -> None:
    # The first connection goes silent; the second one is slow but alive for longer than
    # the first attempt's silence watch would have lasted: nothing breaks it.
    alive = [sse_head() + event("a"), ("trickle", chunk(b": ping\n\n"), READ / 4, 10), event("b", "stop"), DONE]
    server = RawServer(sequence(script([sse_head(), ("sleep", 10)]), script(alive)))
    retries: List[dp.RetryEvent] = []
    with server:
        client = client_for(server.url, retries=1, shared_reader=how == "shared-reader")
        completion = client.chat("x", stream=True, on_retry=retries.append)
    assert completion.content == "ab"
    assert server.requests == 2 and [event.kind for event in retries] == ["timeout"]


def test_the_watched_read_keeps_the_connection_for_the_next_call() -> None:
    body = json.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "model": "deepseek-chat",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        }
    ).encode()
    server = RawServer(script([respond(200, body)], close=False))
    with server:
        client = client_for(server.url)
        assert [client.chat("x").content for _ in range(3)] == ["hi"] * 3
        time.sleep(2 * READ)  # a watch left behind would fire now, and break nothing
        assert client.chat("y").content == "hi"
    assert server.connections == 1
