"""The client against real local servers: retries, timeouts, pooling, streaming, threads.

FakeDeepSeek (a real HTTP/1.1 server on 127.0.0.1) covers the protocol and faults;
RawServer replays exact byte scripts for malformed and split responses.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List

import pytest

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek

from .rawserver import RawServer, chunk

KEY = "sk-wire-test-key-5678"


@pytest.fixture
def fake(fake_deepseek: FakeDeepSeek) -> FakeDeepSeek:
    return fake_deepseek


def make_client(fake: FakeDeepSeek, **kwargs: Any) -> dp.DeepSeekClient:
    kwargs.setdefault("max_retries", dp.DeepSeekRetry(2, backoff_factor=0.01, backoff_jitter=0.0))
    return dp.DeepSeekClient(KEY, base_url=fake.base_url, **kwargs)


# -- plain calls and retries -----------------------------------------------------------


def test_chat_answers_and_reports_usage(fake: FakeDeepSeek) -> None:
    client = make_client(fake)
    completion = client.chat("What is the answer?")
    assert completion.content == FakeDeepSeek.answer_for("What is the answer?")
    assert completion.reasoning_content  # thinking is on by default for current models
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert (
        completion.usage.prompt_cache_hit_tokens + completion.usage.prompt_cache_miss_tokens
        == completion.usage.prompt_tokens
    )
    assert client.chat("x", thinking=False).reasoning_content is None


@pytest.mark.parametrize("fault", ["429", "500", "502", "503", "reset", "empty", "insufficient"])
def test_transient_failures_are_retried(fake: FakeDeepSeek, fault: str) -> None:
    fake.script(fault, "ok")
    completion = make_client(fake).chat("retry me")
    assert completion.content == FakeDeepSeek.answer_for("retry me")
    assert fake.stats.requests == 2


def test_retries_stop_at_max_retries_and_surface_the_typed_error_with_body(fake: FakeDeepSeek) -> None:
    fake.script("503", "503", "503", "503")
    client = make_client(fake, max_retries=dp.DeepSeekRetry(2, backoff_factor=0.01))
    with pytest.raises(dp.ServiceUnavailableError) as info:
        client.chat("x")
    assert fake.stats.requests == 3
    assert isinstance(info.value.body, dict) and "error" in info.value.body


def test_max_retries_zero_disables_retrying(fake: FakeDeepSeek) -> None:
    fake.script("429", "ok")
    with pytest.raises(dp.RateLimitError):
        make_client(fake, max_retries=0).chat("x")
    assert fake.stats.requests == 1


@pytest.mark.parametrize("model, error", [("no-such-model", dp.BadRequestError)])
def test_client_errors_are_never_retried(fake: FakeDeepSeek, model: str, error: type) -> None:
    with pytest.raises(error, match="deepseek-flash"):  # DeepSeek's message lists the valid ids
        make_client(fake).chat("x", model=model)
    assert fake.stats.requests == 1


def test_wrong_key_is_not_retried_and_never_echoed() -> None:
    with FakeDeepSeek(api_key="sk-the-right-one") as fake:
        client = make_client(fake)
        with pytest.raises(dp.AuthenticationError) as info:
            client.chat("x")
        assert fake.stats.requests == 1
        assert KEY not in str(info.value)


def test_402_is_its_own_error(fake: FakeDeepSeek) -> None:
    fake.script("402")
    with pytest.raises(dp.InsufficientBalanceError, match="top up"):
        make_client(fake).chat("x")
    assert fake.stats.requests == 1


def test_fractional_retry_after_is_honoured(fake: FakeDeepSeek) -> None:
    fake.script("429:0.4", "ok")
    start = time.monotonic()
    make_client(fake).chat("x")
    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 2.0
    assert fake.stats.requests == 2


def test_retry_after_is_capped(fake: FakeDeepSeek) -> None:
    fake.script("429:120", "ok")
    start = time.monotonic()
    make_client(fake, max_retries=dp.DeepSeekRetry(1, max_retry_after=0.2)).chat("x")
    assert time.monotonic() - start < 3.0
    assert fake.stats.requests == 2


def test_retries_are_logged_with_attempt_status_and_delay(fake: FakeDeepSeek, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="deepseek_pool")
    fake.script("503", "ok")
    make_client(fake).chat("x")
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("deepseek_pool")]
    assert any("retry 1" in m and "503" in m and "s" in m for m in messages), messages
    assert all(KEY not in m for m in messages)


def test_on_retry_listener_sees_each_retry_and_can_stop_it(fake: FakeDeepSeek) -> None:
    events: List[dp.RetryEvent] = []
    fake.script("429", "503", "ok")
    make_client(fake).chat("x", on_retry=events.append)
    assert [(e.attempt, e.status, e.kind) for e in events] == [(1, 429, "status"), (2, 503, "status")]

    def refuse(event: dp.RetryEvent) -> None:
        raise dp.RetryBudgetExceeded("budget spent")

    fake.reset()
    fake.script("503", "ok")
    with pytest.raises(dp.ServiceUnavailableError, match="budget spent"):
        make_client(fake).chat("x", on_retry=refuse)
    assert fake.stats.requests == 1


# -- timeouts --------------------------------------------------------------------------


def test_total_deadline_holds_against_an_endless_trickle(fake: FakeDeepSeek) -> None:
    fake.script("trickle_forever")
    client = make_client(fake, max_retries=0, timeout=dp.Timeout(0.6, read=0.5))
    start = time.monotonic()
    with pytest.raises(dp.APITimeoutError):
        client.chat("x")
    assert time.monotonic() - start < 2.0


def test_timeouts_are_retried_unless_switched_off(fake: FakeDeepSeek) -> None:
    fake.script("trickle_forever", "ok")
    completion = make_client(fake, timeout=dp.Timeout(0.4)).chat("x")
    assert completion.content == FakeDeepSeek.answer_for("x")
    assert fake.stats.requests == 2

    fake.reset()
    fake.script("trickle_forever", "ok")
    client = make_client(fake, timeout=dp.Timeout(0.4), retry_timeouts=False)
    with pytest.raises(dp.APITimeoutError):
        client.chat("x")
    assert fake.stats.requests == 1


def test_blank_lines_before_the_body_parse(fake: FakeDeepSeek) -> None:
    fake.script("trickle:5")
    assert make_client(fake).chat("x").content == FakeDeepSeek.answer_for("x")


def test_call_timeout_bounds_retries_and_backoff(fake: FakeDeepSeek) -> None:
    fake.script("429:5", "429:5", "ok")
    client = make_client(fake, call_timeout=0.5, max_retries=dp.DeepSeekRetry(2, max_retry_after=5))
    start = time.monotonic()
    with pytest.raises(dp.RateLimitError, match="deadline"):
        client.chat("x")
    assert time.monotonic() - start < 1.5
    assert fake.stats.requests == 1


def test_unreachable_server_is_a_connection_error() -> None:
    with RawServer(lambda conn, request: None) as (host, port):
        pass  # the port is closed again: nothing listens there now
    client = dp.DeepSeekClient(KEY, base_url=f"http://{host}:{port}", max_retries=0, timeout=2)
    with pytest.raises(dp.APIConnectionError):
        client.chat("x")


# -- connections -----------------------------------------------------------------------


def test_keep_alive_connection_is_reused(fake: FakeDeepSeek) -> None:
    client = make_client(fake)
    for _ in range(10):
        client.chat("x")
    assert fake.stats.connections_opened == 1


def test_error_responses_do_not_cost_a_connection(fake: FakeDeepSeek) -> None:
    fake.script(*["429"] * 10)
    client = make_client(fake, max_retries=0)
    for _ in range(10):
        with pytest.raises(dp.RateLimitError):
            client.chat("x")
    assert fake.stats.connections_opened == 1


def test_retries_reuse_the_connection(fake: FakeDeepSeek) -> None:
    fake.script("503", "429", "ok")
    make_client(fake).chat("x")
    assert fake.stats.connections_opened == 1


def _answer_then_close(conn: Any, request: bytes) -> bool:
    body = json.dumps({"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}]}).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    conn.sendall(head + body)
    return True  # close the connection after answering, without saying so


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    server = RawServer(_answer_then_close)
    with server as (host, port):
        client = dp.DeepSeekClient(KEY, base_url=f"http://{host}:{port}", max_retries=0)
        assert client.chat("one").content == "fine"
        time.sleep(0.05)  # the server's FIN has arrived: the pool sees the connection is dead
        assert client.chat("two").content == "fine"
        assert server.connections == 2


def test_a_connection_closed_under_our_feet_is_retried_transparently() -> None:
    """Back to back, the request often goes out on the socket the server is closing."""
    server = RawServer(_answer_then_close)
    with server as (host, port):
        retry = dp.DeepSeekRetry(2, backoff_factor=0.01, backoff_jitter=0.0)
        client = dp.DeepSeekClient(KEY, base_url=f"http://{host}:{port}", timeout=5, max_retries=retry)
        for i in range(30):
            assert client.chat(f"call {i}").content == "fine"
        assert server.requests >= 30


def test_64_threads_share_one_client(fake: FakeDeepSeek, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    fake_latency = FakeDeepSeek(latency=0.05)
    with fake_latency:
        client = make_client(fake_latency, pool_maxsize=64)
        prompts = [f"question {i}" for i in range(256)]
        with ThreadPoolExecutor(64) as executor:
            answers = list(executor.map(lambda p: client.chat(p).content, prompts))
        assert answers == [FakeDeepSeek.answer_for(p) for p in prompts]
        stats = fake_latency.stats
        assert stats.connections_opened <= 64
        assert stats.peak_concurrency > 8  # the calls really overlapped
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


# -- streaming -------------------------------------------------------------------------


def test_stream_yields_every_event_and_folds_into_a_completion(fake: FakeDeepSeek) -> None:
    client = make_client(fake)
    with client.chat_stream("Stream this please", stream_options={"include_usage": True}) as stream:
        chunks = list(stream)
        completion = stream.completion()
    assert chunks[0].role == "assistant"  # the role-only chunk is kept
    assert chunks[-1].raw["choices"] == [] and chunks[-1].usage is not None  # the usage-only chunk too
    text = "".join(c.content or "" for c in chunks)
    assert text == completion.content == FakeDeepSeek.answer_for("Stream this please")
    assert completion.reasoning_content == "".join(c.reasoning_content or "" for c in chunks)
    assert completion.usage is not None and completion.finish_reason == "stop"


def test_finished_streams_give_their_connection_back(fake: FakeDeepSeek) -> None:
    client = make_client(fake)
    for _ in range(3):
        with client.chat_stream("x") as stream:
            for _ in stream:
                pass
    client.chat("x")
    assert fake.stats.connections_opened == 1


def test_server_holding_the_body_after_done_is_not_waited_for(fake: FakeDeepSeek) -> None:
    fake.script("hold_after_done")
    client = make_client(fake)
    start = time.monotonic()
    with client.chat_stream("x") as stream:
        completion = stream.completion()
    assert time.monotonic() - start < 1.0
    assert completion.content == FakeDeepSeek.answer_for("x")
    assert client.chat("y").content == FakeDeepSeek.answer_for("y")


def test_leaving_a_stream_early_releases_the_connection(fake: FakeDeepSeek) -> None:
    slow = FakeDeepSeek(stream_chunk_delay=0.05)
    with slow:
        client = make_client(slow)
        start = time.monotonic()
        with client.chat_stream("a long answer " * 5) as stream:
            next(stream)
        assert time.monotonic() - start < 1.0
        # The abandoned connection is closed, not handed to the next caller mid-body.
        assert client.chat("next").content == FakeDeepSeek.answer_for("next")
        assert slow.stats.connections_opened == 2


def test_stream_cut_midway_is_a_connection_error(fake: FakeDeepSeek) -> None:
    fake.script("cut:3")
    with pytest.raises(dp.APIConnectionError, match="before any finish_reason"):  # noqa: SIM117
        with make_client(fake).chat_stream("x") as stream:
            list(stream)


def test_stream_keep_alive_comments_are_skipped(fake: FakeDeepSeek) -> None:
    fake.script("trickle:4")
    with make_client(fake).chat_stream("x") as stream:
        assert stream.completion().content == FakeDeepSeek.answer_for("x")


def test_stream_total_deadline_against_endless_keep_alive(fake: FakeDeepSeek) -> None:
    fake.script("trickle_forever")
    client = make_client(fake, max_retries=0, timeout=dp.Timeout(0.5))
    start = time.monotonic()
    with pytest.raises(dp.APITimeoutError), client.chat_stream("x") as stream:
        list(stream)
    assert time.monotonic() - start < 2.0


def test_stream_errors_before_the_body_raise_at_call(fake: FakeDeepSeek) -> None:
    fake.script("402")
    with pytest.raises(dp.InsufficientBalanceError):
        make_client(fake).chat_stream("x")


def test_streamed_tool_call_fragments_accumulate(fake: FakeDeepSeek) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    client = make_client(fake)
    plain = client.chat("weather in Paris?", tools=tools)
    with client.chat_stream("weather in Paris?", tools=tools) as stream:
        streamed = stream.completion()
    assert plain.tool_calls and streamed.tool_calls
    assert streamed.finish_reason == "tool_calls"
    assert streamed.tool_calls[0]["function"] == plain.tool_calls[0]["function"]
    json.loads(streamed.tool_calls[0]["function"]["arguments"])


def test_chat_with_stream_true_aggregates_and_reports_chunks(fake: FakeDeepSeek) -> None:
    seen: List[dp.ChatChunk] = []
    completion = make_client(fake).chat("x", stream=True, on_chunk=seen.append)
    assert completion.content == FakeDeepSeek.answer_for("x")
    assert len(seen) > 2


# -- byte-level streams ------------------------------------------------------------------

SSE_EVENTS = [
    b'data: {"id":"s1","model":"deepseek-flash","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
    b": keep-alive\n\n",
    b'data: {"id":"s1","choices":[{"index":0,"delta":{"reasoning_content":"th\xc3\xa9"}}]}\r\n\r\n',
    b'data: {"id":"s1","choices":[{"index":0,"delta":{"content":'
    b'"h\xc3\xa9llo \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x99\x82"}}]}\r\r',
    b'data: {"id":"s1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b'data: {"id":"s1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n',
    b"data: [DONE]\n\n",
]
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def byte_stream_handler(split: int) -> Any:
    """Send the SSE body in HTTP chunks of ``split`` bytes (1 = every byte apart)."""
    payload = b"".join(SSE_EVENTS)

    def handler(conn: Any, request: bytes) -> None:
        conn.sendall(STREAM_HEAD)
        for i in range(0, len(payload), split):
            conn.sendall(chunk(payload[i : i + split]))
        conn.sendall(b"0\r\n\r\n")

    return handler


@pytest.mark.parametrize("split", [1, 2, 3, 7, 64, 4096])
def test_sse_split_at_any_byte_gives_the_same_stream(split: int) -> None:
    server = RawServer(byte_stream_handler(split))
    with server as (host, port):
        client = dp.DeepSeekClient(KEY, base_url=f"http://{host}:{port}", max_retries=0)
        with client.chat_stream("x") as stream:
            chunks = list(stream)
            completion = stream.completion()
        assert len(chunks) == 5
        assert completion.content == "héllo 你好 🙂"
        assert completion.reasoning_content == "thé"
        assert completion.usage is not None and completion.usage.total_tokens == 7
        # the stream ended cleanly, so the next call reuses the connection
        with client.chat_stream("again") as stream:
            list(stream)
        assert server.connections == 1


def test_in_stream_error_payload_raises_the_typed_error() -> None:
    def handler(conn: Any, request: bytes) -> None:
        conn.sendall(STREAM_HEAD + chunk(SSE_EVENTS[0]))
        conn.sendall(chunk(b'data: {"error":{"message":"overloaded mid-stream","code":503}}\n\n') + b"0\r\n\r\n")

    server = RawServer(handler)
    with server as (host, port):
        client = dp.DeepSeekClient(KEY, base_url=f"http://{host}:{port}", max_retries=0)
        with (
            pytest.raises(dp.ServiceUnavailableError, match="overloaded mid-stream"),
            client.chat_stream("x") as stream,
        ):
            list(stream)


# -- bounds that hold across both retry layers ---------------------------------------------


def test_attempts_stay_within_max_retries_across_body_and_status_retries(fake: FakeDeepSeek) -> None:
    fake.script("503", "empty", "503", "503", "503")
    with pytest.raises(dp.ServiceUnavailableError):
        make_client(fake, max_retries=dp.DeepSeekRetry(2, backoff_factor=0.01)).chat("x")
    assert fake.stats.requests == 3


def test_call_timeout_also_bounds_retries_made_inside_urllib3() -> None:
    with FakeDeepSeek(latency=0.4) as fake:
        fake.script("503", "503")
        client = make_client(fake, call_timeout=0.6, max_retries=dp.DeepSeekRetry(3, backoff_factor=0.01))
        start = time.monotonic()
        with pytest.raises(dp.DeepSeekError):
            client.chat("x")
        assert time.monotonic() - start < 0.75


def test_413_with_retry_after_is_not_retried() -> None:
    def too_large(conn: Any, request: bytes) -> None:
        body = b'{"error": {"message": "too large"}}'
        head = b"HTTP/1.1 413 Payload Too Large\r\nRetry-After: 0\r\nContent-Length: %d\r\n\r\n" % len(body)
        conn.sendall(head + body)

    server = RawServer(too_large)
    with server as (host, port):
        with pytest.raises(dp.APIStatusError) as info:
            dp.DeepSeekClient(KEY, base_url=f"http://{host}:{port}").chat("x")
        assert info.value.status_code == 413
        assert server.requests == 1


def test_a_relayed_stream_that_breaks_is_not_retried_unless_asked(fake: FakeDeepSeek) -> None:
    seen: List[str] = []
    fake.script("cut:4", "ok")
    with pytest.raises(dp.APIConnectionError):
        make_client(fake).chat("x", stream=True, on_chunk=lambda c: seen.append(c.content or ""))
    assert fake.stats.requests == 1

    fake.reset()
    fake.script("cut:4", "ok")
    completion = make_client(fake).chat("x", stream=True, on_chunk=lambda c: None, restart_streams=True)
    assert completion.content == FakeDeepSeek.answer_for("x")
    assert fake.stats.requests == 2


def test_a_streamed_answer_cut_for_lack_of_resources_is_retried(fake: FakeDeepSeek) -> None:
    fake.script("insufficient", "ok")
    completion = make_client(fake).chat("x", stream=True)
    assert completion.content == FakeDeepSeek.answer_for("x")
    assert completion.finish_reason == "stop"
    assert fake.stats.requests == 2


def test_logprobs_reach_the_completion_streamed_and_not(fake: FakeDeepSeek) -> None:
    client = dp.DeepSeekClient("sk-test", base_url=fake.base_url)
    plain = client.chat("Say hi", logprobs=True, top_logprobs=2, thinking=False)
    streamed = client.chat("Say hi", logprobs=True, top_logprobs=2, thinking=False, stream=True)
    assert plain.logprobs is not None and plain.logprobs["content"]
    assert streamed.logprobs is not None
    assert [entry["token"] for entry in streamed.logprobs["content"]] == [
        entry["token"] for entry in plain.logprobs["content"]
    ]
    assert client.chat("Say hi", thinking=False).logprobs is None


# -- one write per request ---------------------------------------------------------------


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> List[bytes]:
    """What each connection write sent (http.client's ``send``, under the client's connections)."""
    import http.client

    sent: List[bytes] = []
    real = http.client.HTTPConnection.send

    def send(self: Any, data: Any) -> None:
        sent.append(bytes(data))
        real(self, data)

    monkeypatch.setattr(http.client.HTTPConnection, "send", send)
    return sent


def test_a_request_and_its_body_leave_in_one_write(fake: FakeDeepSeek, writes: List[bytes]) -> None:
    client = make_client(fake, max_retries=0)
    assert client.chat("one write").content
    assert len(writes) == 1  # the head and the body together: one system call, one packet
    head, _, body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST ") and json.loads(body)["messages"][0]["content"] == "one write"
    writes.clear()
    assert client.models()  # no body: the head alone
    assert len(writes) == 1 and writes[0].startswith(b"GET ") and writes[0].endswith(b"\r\n\r\n")


def test_a_large_body_is_not_copied_into_the_head(fake: FakeDeepSeek, writes: List[bytes]) -> None:
    from deepseek_pool.wire import adapter

    client = make_client(fake, max_retries=0)
    assert client.chat("x" * (adapter._JOIN_BODY_MAX + 1)).content
    assert len(writes) == 2 and writes[0].endswith(b"\r\n\r\n") and writes[1].startswith(b"{")
