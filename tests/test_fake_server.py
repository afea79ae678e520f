"""FakeDeepSeek on the wire: endpoints, validation, streaming, faults, counters, lifecycle.

Plain ``requests`` for what a client sees, raw sockets where the bytes themselves matter.
Every wait is bounded by a socket timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List, Optional

import pytest
import requests

from deepseek_pool.testing import FakeDeepSeek, main, parse_fault

KEY = "sk-test-0000abcd"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT = 5.0
USER: List[Dict[str, Any]] = [{"role": "user", "content": "What is 2+2?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}


@pytest.fixture
def fake(fake_deepseek: FakeDeepSeek) -> FakeDeepSeek:
    return fake_deepseek


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers.update(AUTH)
        yield session


def post(http: requests.Session, fake: FakeDeepSeek, path: str = "/chat/completions", **body: Any) -> requests.Response:
    body.setdefault("model", "deepseek-flash")
    body.setdefault("messages", USER)
    return http.post(fake.base_url + path, json=body, timeout=TIMEOUT, stream=bool(body.get("stream")))


def sse(response: requests.Response) -> List[Any]:
    """Parse an SSE body into its data payloads (JSON, or the string "[DONE]"); comments dropped."""
    out: List[Any] = []
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            data = line[6:].decode()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def raw(fake: FakeDeepSeek, request: bytes) -> socket.socket:
    port = int(fake.base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(request)
    return sock


def raw_chat(body: Dict[str, Any], extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST /chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
    ).encode() + data


def read_all(sock: socket.socket) -> bytes:
    parts: List[bytes] = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(parts)
        parts.append(data)


# -- endpoints and shapes --------------------------------------------------------------------


def test_chat_completion_shape_thinking_on_by_default(fake: FakeDeepSeek, http: requests.Session) -> None:
    r = post(http, fake)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert r.headers["x-ds-trace-id"] == r.headers["x-request-id"] == r.json()["id"]
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "deepseek-flash"
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    message = choice["message"]
    assert message["role"] == "assistant"
    assert message["content"] == FakeDeepSeek.answer_for("What is 2+2?")
    assert message["reasoning_content"] == FakeDeepSeek.reasoning_for("What is 2+2?")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"] == usage["prompt_tokens"]
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert 0 < reasoning < usage["completion_tokens"]


def test_deepseek_chat_alias_thinks_only_when_asked_and_is_rewritten(
    fake: FakeDeepSeek, http: requests.Session
) -> None:
    body = post(http, fake, model="deepseek-chat").json()
    assert body["model"] == "deepseek-flash"
    assert "reasoning_content" not in body["choices"][0]["message"]
    assert "completion_tokens_details" not in body["usage"]
    on = post(http, fake, model="deepseek-chat", thinking={"type": "enabled"}).json()
    assert on["choices"][0]["message"]["reasoning_content"]
    off = post(http, fake, model="deepseek-v4-pro", thinking={"type": "disabled"}).json()
    assert off["model"] == "deepseek-v4-pro" and "reasoning_content" not in off["choices"][0]["message"]
    reasoner = post(http, fake, model="deepseek-reasoner").json()
    assert reasoner["model"] == "deepseek-flash" and reasoner["choices"][0]["message"]["reasoning_content"]


def test_answers_are_deterministic_and_follow_the_last_user_message(http: requests.Session) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "sec"}, {"type": "text", "text": "ond"}]},
    ]
    contents = []
    for _ in range(2):
        with FakeDeepSeek(seed=1) as fake:
            contents.append(post(http, fake, messages=messages).json()["choices"][0]["message"]["content"])
    assert contents[0] == contents[1] == FakeDeepSeek.answer_for("second")
    assert FakeDeepSeek.answer_for("a") != FakeDeepSeek.answer_for("b")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/beta/chat/completions", "/v1/beta/chat/completions"])
def test_chat_answers_under_every_prefix(fake: FakeDeepSeek, http: requests.Session, path: str) -> None:
    assert post(http, fake, path).json()["object"] == "chat.completion"


def test_prefix_completion_only_on_beta(fake: FakeDeepSeek, http: requests.Session) -> None:
    messages = [*USER, {"role": "assistant", "content": "```python\n", "prefix": True}]
    assert post(http, fake, "/beta/chat/completions", messages=messages).status_code == 200
    r = post(http, fake, messages=messages)
    assert r.status_code == 400 and "beta" in r.json()["error"]["message"]


def test_models_and_balance(http: requests.Session) -> None:
    with FakeDeepSeek(models=["deepseek-flash", "deepseek-v4-pro"], balance="12.50") as fake:
        for prefix in ("", "/v1"):
            models = http.get(fake.base_url + prefix + "/models", timeout=TIMEOUT).json()
            assert models == {
                "object": "list",
                "data": [
                    {"id": "deepseek-flash", "object": "model", "owned_by": "deepseek"},
                    {"id": "deepseek-v4-pro", "object": "model", "owned_by": "deepseek"},
                ],
            }
            balance = http.get(fake.base_url + prefix + "/user/balance", timeout=TIMEOUT).json()
            assert balance == {
                "is_available": True,
                "balance_infos": [
                    {
                        "currency": "USD",
                        "total_balance": "12.50",
                        "granted_balance": "0.00",
                        "topped_up_balance": "12.50",
                    }
                ],
            }


def test_empty_balance_answers_402(http: requests.Session) -> None:
    with FakeDeepSeek(balance="0.00") as fake:
        assert http.get(fake.base_url + "/user/balance", timeout=TIMEOUT).json()["is_available"] is False
        r = post(http, fake)
        assert r.status_code == 402 and r.json()["error"]["message"] == "Insufficient Balance"


def test_fim_completion_plain_and_streamed(fake: FakeDeepSeek, http: requests.Session) -> None:
    r = post(http, fake, "/beta/completions", messages=None, prompt="def f(", suffix="    return x")
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion"
    assert body["choices"] == [
        {
            "text": FakeDeepSeek.fim_answer_for("def f(", "    return x"),
            "index": 0,
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"]["prompt_tokens"] > 0
    events = sse(
        post(
            http,
            fake,
            "/beta/completions",
            messages=None,
            prompt="def f(",
            suffix="    return x",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and "usage" in events[-2]
    text = "".join(e["choices"][0]["text"] for e in events[:-2])
    assert text == body["choices"][0]["text"]
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert post(http, fake, "/beta/completions", messages=None).status_code == 422  # no prompt


def test_unknown_path_and_wrong_method(fake: FakeDeepSeek, http: requests.Session) -> None:
    assert http.get(fake.base_url + "/nope", timeout=TIMEOUT).status_code == 404
    r = http.get(fake.base_url + "/chat/completions", timeout=TIMEOUT)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"


# -- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer ", "Basic abc", "bearer"])
def test_any_bearer_key_is_accepted_but_a_missing_one_is_not(fake: FakeDeepSeek, header: Optional[str]) -> None:
    headers = {} if header is None else {"Authorization": header}
    for path in ("/chat/completions", "/models", "/user/balance", "/beta/completions"):
        method = "GET" if path in ("/models", "/user/balance") else "POST"
        r = requests.request(method, fake.base_url + path, headers=headers, json={}, timeout=TIMEOUT)
        assert r.status_code == 401, path
        error = r.json()["error"]
        assert error["message"].startswith("Authentication Fails") and error["type"] == "authentication_error"
    assert (
        requests.get(
            fake.base_url + "/models", headers={"Authorization": "bearer anything"}, timeout=TIMEOUT
        ).status_code
        == 200
    )


def test_configured_key_must_match(http: requests.Session) -> None:
    with FakeDeepSeek(api_key="sk-right-key-9876") as fake:
        r = post(http, fake)
        assert r.status_code == 401
        assert r.json()["error"]["message"] == "Authentication Fails, Your api key: ****abcd is invalid"
        ok = requests.get(
            fake.base_url + "/models", headers={"Authorization": "Bearer sk-right-key-9876"}, timeout=TIMEOUT
        )
        assert ok.status_code == 200
        fake.script("503")
        post(http, fake)  # unauthenticated requests leave the script alone
        assert fake.stats.faults_injected == {}


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"messages": USER}, 422, "missing field `model`"),
        ({"model": "gpt-4", "messages": USER}, 400, "deepseek-flash, deepseek-v4-pro"),
        ({"model": "deepseek-flash"}, 422, "missing field `messages`"),
        ({"model": "deepseek-flash", "messages": []}, 400, "Empty input messages"),
        ({"model": "deepseek-flash", "messages": "hi"}, 422, "invalid type"),
        ({"model": "deepseek-flash", "messages": [{"role": "robot", "content": "x"}]}, 422, "unknown variant `robot`"),
        ({"model": "deepseek-flash", "messages": [{"content": "x"}]}, 422, "missing field `role`"),
        ({"model": "deepseek-flash", "messages": [{"role": "user"}]}, 422, "missing field `content`"),
        ({"model": "deepseek-flash", "messages": USER, "temperature": 2.5}, 422, "temperature"),
        ({"model": "deepseek-flash", "messages": USER, "top_p": 1.5}, 422, "top_p"),
        ({"model": "deepseek-flash", "messages": USER, "frequency_penalty": -3}, 422, "frequency_penalty"),
        ({"model": "deepseek-flash", "messages": USER, "presence_penalty": "high"}, 422, "presence_penalty"),
        ({"model": "deepseek-flash", "messages": USER, "max_tokens": 0}, 422, "max_tokens"),
        ({"model": "deepseek-flash", "messages": USER, "max_tokens": True}, 422, "max_tokens"),
        ({"model": "deepseek-flash", "messages": USER, "thinking": {"type": "maybe"}}, 422, "thinking"),
        ({"model": "deepseek-flash", "messages": USER, "response_format": {"type": "json_object"}}, 400, "json"),
        (
            {"model": "deepseek-flash", "messages": USER, "tools": [{"type": "function"}]},
            422,
            "missing field `function`",
        ),
        ({"model": "deepseek-flash", "messages": USER, "stop": ["a"] * 17}, 400, "stop sequences"),
        (
            {
                "model": "deepseek-flash",
                "messages": [
                    *USER,
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "42"},
                ],
            },
            400,
            "reasoning_content",
        ),
        ([1, 2], 422, "invalid type"),
    ],
)
def test_validation_errors(fake: FakeDeepSeek, http: requests.Session, body: Any, status: int, words: str) -> None:
    r = http.post(fake.base_url + "/chat/completions", json=body, timeout=TIMEOUT)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"]


def test_bad_json_is_400_and_keeps_the_connection(fake: FakeDeepSeek, http: requests.Session) -> None:
    r = http.post(
        fake.base_url + "/chat/completions",
        data=b"{not json",
        timeout=TIMEOUT,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("Failed to deserialize the JSON body")
    assert http.post(fake.base_url + "/chat/completions", timeout=TIMEOUT).status_code == 400  # no body
    assert post(http, fake).status_code == 200
    assert fake.stats.connections_opened == 1


def test_thinking_tool_history_with_reasoning_content_and_unknown_fields_are_accepted(
    fake: FakeDeepSeek, http: requests.Session
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages: List[Dict[str, Any]] = [
        *USER,
        {"role": "assistant", "content": "", "reasoning_content": "think", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    r = post(http, fake, messages=messages, tools=[WEATHER_TOOL], some_future_field={"x": 1}, user_id="u1")
    assert r.status_code == 200
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"  # after a tool message: a normal answer
    assert choice["message"]["content"] == FakeDeepSeek.answer_for("What is 2+2?")
    without = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
    no_thinking = post(http, fake, messages=without, thinking={"type": "disabled"})
    assert no_thinking.status_code == 200


def test_max_tokens_truncates_with_length(fake: FakeDeepSeek, http: requests.Session) -> None:
    full = FakeDeepSeek.answer_for("What is 2+2?")
    body = post(http, fake, model="deepseek-chat", max_tokens=3).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == full[:12]
    assert body["usage"]["completion_tokens"] == 3
    # In thinking mode max_tokens covers the reasoning too.
    thinking = post(http, fake, max_tokens=2).json()
    assert thinking["choices"][0]["finish_reason"] == "length"
    assert thinking["choices"][0]["message"]["content"] == ""
    assert thinking["usage"]["completion_tokens_details"]["reasoning_tokens"] == 2


def test_stop_sequence_cuts_the_answer(fake: FakeDeepSeek, http: requests.Session) -> None:
    full = FakeDeepSeek.answer_for("What is 2+2?")
    body = post(http, fake, stop=["you said"]).json()
    assert body["choices"][0]["message"]["content"] == full[: full.index("you said")]


def test_prefix_cache_hits_on_repeated_prefixes(http: requests.Session) -> None:
    # Every token counts and units build at once, so the tiny prompts here can hit
    # (the V4 rules themselves are tested in test_cache_model.py).
    with FakeDeepSeek(cache_build_delay=0, cache_unit_tokens=1, cache_min_tokens=0) as fake:
        check_repeated_prefixes_hit(fake, http)


def check_repeated_prefixes_hit(fake: FakeDeepSeek, http: requests.Session) -> None:
    first = post(http, fake).json()["usage"]
    assert first["prompt_cache_hit_tokens"] == 0
    again = post(http, fake).json()["usage"]
    assert again["prompt_cache_hit_tokens"] == again["prompt_tokens"] == first["prompt_tokens"]
    assert again["prompt_tokens_details"]["cached_tokens"] == again["prompt_cache_hit_tokens"]
    longer = post(
        http, fake, messages=[*USER, {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]
    ).json()["usage"]
    assert 0 < longer["prompt_cache_hit_tokens"] < longer["prompt_tokens"]
    assert longer["prompt_cache_hit_tokens"] + longer["prompt_cache_miss_tokens"] == longer["prompt_tokens"]
    fake.reset()
    assert post(http, fake).json()["usage"]["prompt_cache_hit_tokens"] == 0


# -- tools and JSON mode ---------------------------------------------------------------------


def test_tool_call_answer(fake: FakeDeepSeek, http: requests.Session) -> None:
    body = post(http, fake, tools=[WEATHER_TOOL]).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] in ("", None)
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "What is 2+2?", "unit": "celsius", "days": 12}
    assert post(http, fake, tools=[WEATHER_TOOL], tool_choice="none").json()["choices"][0]["finish_reason"] == "stop"


def test_streamed_tool_call_fragments_rebuild_the_call(fake: FakeDeepSeek, http: requests.Session) -> None:
    plain = post(http, fake, tools=[WEATHER_TOOL]).json()["choices"][0]["message"]["tool_calls"][0]
    events = sse(post(http, fake, tools=[WEATHER_TOOL], stream=True))
    fragments = [
        e["choices"][0]["delta"]["tool_calls"]
        for e in events[:-1]
        if e["choices"] and e["choices"][0]["delta"].get("tool_calls")
    ]
    assert len(fragments) > 2
    first = fragments[0][0]
    assert first["index"] == 0 and first["id"] == plain["id"] and first["function"]["name"] == "get_weather"
    assert all("id" not in f[0] and f[0]["index"] == 0 for f in fragments[1:])
    arguments = "".join(f[0]["function"]["arguments"] for f in fragments)
    assert arguments == plain["function"]["arguments"]
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_json_mode_returns_a_json_object(fake: FakeDeepSeek, http: requests.Session) -> None:
    messages = [{"role": "user", "content": "Answer in JSON: what is 2+2?"}]
    content = post(http, fake, messages=messages, response_format={"type": "json_object"}).json()
    parsed = json.loads(content["choices"][0]["message"]["content"])
    assert parsed == {"answer": FakeDeepSeek.answer_for("Answer in JSON: what is 2+2?")}


# -- streaming -------------------------------------------------------------------------------


def test_stream_event_sequence(fake: FakeDeepSeek, http: requests.Session) -> None:
    r = post(http, fake, stream=True, stream_options={"include_usage": True})
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Transfer-Encoding"] == "chunked" and r.headers["x-ds-trace-id"]
    events = sse(r)
    assert events[-1] == "[DONE]"
    usage_event, final = events[-2], events[-3]
    assert usage_event["choices"] == [] and usage_event["usage"]["completion_tokens"] > 0
    assert final["choices"][0]["finish_reason"] == "stop"
    for event in events[:-1]:
        assert event["object"] == "chat.completion.chunk" and event["model"] == "deepseek-flash"
        assert event["id"] == r.headers["x-ds-trace-id"] and isinstance(event["created"], int)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": None, "reasoning_content": ""}
    deltas = [e["choices"][0]["delta"] for e in events[1:-3]]
    kinds = ["r" if d.get("reasoning_content") else "c" for d in deltas]
    assert kinds == sorted(kinds, reverse=True) and "r" in kinds and "c" in kinds  # reasoning first
    pieces = [d.get("content") or d.get("reasoning_content") for d in deltas]
    assert all(1 <= len(p) <= 4 for p in pieces)
    assert "".join(d["reasoning_content"] for d in deltas if d.get("reasoning_content")) == FakeDeepSeek.reasoning_for(
        "What is 2+2?"
    )
    assert "".join(d["content"] for d in deltas if d.get("content")) == FakeDeepSeek.answer_for("What is 2+2?")
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-3])


def test_stream_without_include_usage_has_no_usage_chunk(fake: FakeDeepSeek, http: requests.Session) -> None:
    events = sse(post(http, fake, stream=True, model="deepseek-chat"))
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(e["choices"] for e in events[:-1])
    assert all("reasoning_content" not in e["choices"][0]["delta"] for e in events[:-1])


def test_chunks_per_answer_gives_exactly_that_many_content_events(http: requests.Session) -> None:
    with FakeDeepSeek(chunks_per_answer=50) as fake:
        events = sse(post(http, fake, stream=True, model="deepseek-chat"))
        content = [e for e in events[1:-2]]
        assert len(content) == 50
        assert "".join(e["choices"][0]["delta"]["content"] for e in content) == FakeDeepSeek.answer_for("What is 2+2?")


def test_stream_is_chunked_and_terminated_on_the_wire(fake: FakeDeepSeek) -> None:
    sock = raw(fake, raw_chat({"model": "deepseek-chat", "messages": USER, "stream": True}, "Connection: close\r\n"))
    with sock:
        data = read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Connection: close" in head
    assert body.endswith(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")


def test_stream_chunk_delay_spaces_events(http: requests.Session) -> None:
    with FakeDeepSeek(stream_chunk_delay=0.01, chunks_per_answer=5) as fake:
        start = time.monotonic()
        events = sse(post(http, fake, stream=True, model="deepseek-chat"))
        assert len(events) == 8 and time.monotonic() - start >= 0.06


# -- faults ----------------------------------------------------------------------------------


def test_script_is_taken_in_order(fake: FakeDeepSeek, http: requests.Session) -> None:
    fake.script("429", "500", "ok", "503", "402", "502")
    statuses = [post(http, fake).status_code for _ in range(7)]
    assert statuses == [429, 500, 200, 503, 402, 502, 200]
    stats = fake.stats
    assert stats.faults_injected == {"429": 1, "500": 1, "503": 1, "402": 1, "502": 1}
    assert stats.by_status == {200: 2, 429: 1, 500: 1, 503: 1, 402: 1, 502: 1}
    assert stats.connections_opened == 1  # error answers keep the connection alive


def test_storm_gives_one_fault_to_every_request_for_a_while(fake: FakeDeepSeek, http: requests.Session) -> None:
    fake.storm(0.3, "503")
    fake.script("ok")
    statuses = [post(http, fake).status_code for _ in range(3)]
    assert statuses == [200, 503, 503]  # the script comes first
    time.sleep(0.3)
    assert post(http, fake).status_code == 200
    fake.storm(10, "429")
    fake.reset()
    assert post(http, fake).status_code == 200
    with pytest.raises(ValueError):
        fake.storm(1, "nope")


def test_error_bodies_and_retry_after(http: requests.Session) -> None:
    with FakeDeepSeek(retry_after=2) as fake:
        fake.script("429", "429:0.25", "503", "500")
        r429 = post(http, fake)
        assert r429.headers["Retry-After"] == "2"
        assert r429.json()["error"]["message"].startswith("Rate Limit Reached")
        assert post(http, fake).headers["Retry-After"] == "0.25"
        assert post(http, fake).headers["Retry-After"] == "2"
        r500 = post(http, fake)
        assert "Retry-After" not in r500.headers and set(r500.json()["error"]) == {"message", "type", "param", "code"}
    with FakeDeepSeek() as fake:
        fake.script("429")
        assert "Retry-After" not in post(http, fake).headers


def test_unknown_fault_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        FakeDeepSeek(faults={"404": 0.1})
    with pytest.raises(ValueError, match="more than 1"):
        FakeDeepSeek(faults={"429": 0.6, "503": 0.6})
    with pytest.raises(ValueError):
        parse_fault("cut")
    assert parse_fault("trickle:3").count == 3 and parse_fault("429:1.5").retry_after == 1.5


def test_reset_fault_sends_rst_before_any_byte(fake: FakeDeepSeek) -> None:
    fake.script("reset")
    sock = raw(fake, raw_chat({"model": "deepseek-flash", "messages": USER}))
    with sock, pytest.raises(ConnectionResetError):
        sock.recv(1024)
    assert fake.stats.faults_injected == {"reset": 1} and fake.stats.by_status == {}


def test_reset_fault_is_a_connection_error_for_requests(fake: FakeDeepSeek, http: requests.Session) -> None:
    fake.script("reset")
    with pytest.raises(requests.ConnectionError):
        post(http, fake)
    assert post(http, fake).status_code == 200


def test_trickle_sends_blank_lines_then_the_json(http: requests.Session) -> None:
    with FakeDeepSeek(trickle_interval=0.02) as fake:
        fake.script("trickle:3")
        sock = raw(fake, raw_chat({"model": "deepseek-flash", "messages": USER}, "Connection: close\r\n"))
        with sock:
            data = read_all(sock)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding: chunked" in head
        assert body.startswith(b"1\r\n\n\r\n" * 3)
        fake.script("trickle:3")
        start = time.monotonic()
        r = post(http, fake)
        assert time.monotonic() - start >= 0.06
        assert r.text.startswith("\n\n\n{") and r.json()["choices"][0]["message"]["content"]
        assert post(http, fake).status_code == 200 and fake.stats.connections_opened == 2


def test_streamed_trickle_sends_keep_alive_comments_first(http: requests.Session) -> None:
    with FakeDeepSeek(trickle_interval=0.01) as fake:
        fake.script("trickle:4")
        r = post(http, fake, stream=True)
        lines = [line for line in r.iter_lines() if line]
        assert lines[:4] == [b": keep-alive"] * 4 and lines[4].startswith(b"data: {")
        assert lines[-1] == b"data: [DONE]"


def test_cut_closes_the_stream_after_k_events(fake: FakeDeepSeek, http: requests.Session) -> None:
    fake.script("cut:3")
    r = post(http, fake, stream=True)
    received: List[bytes] = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for line in r.iter_lines():
            if line:
                received.append(line)
    assert len(received) == 3 and b"[DONE]" not in b"".join(received)


def test_cut_without_streaming_sends_k_body_bytes_then_closes(fake: FakeDeepSeek) -> None:
    fake.script("cut:10")
    sock = raw(fake, raw_chat({"model": "deepseek-flash", "messages": USER}))
    with sock:
        data = read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) > 10
    assert len(body) == 10 and body.startswith(b'{"id":"')


def test_streamed_trickle_forever_sends_keep_alive_until_the_client_leaves(fake: FakeDeepSeek) -> None:
    fake.script("trickle_forever")
    sock = raw(fake, raw_chat({"model": "deepseek-flash", "messages": USER, "stream": True}))
    with sock:
        data = b""
        while data.count(b": keep-alive\n\n") < 3:
            chunk = sock.recv(65536)
            assert chunk, "closed while trickling"
            data += chunk
        assert b"data:" not in data
    deadline = time.monotonic() + TIMEOUT
    while fake.stats.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.stats.in_flight == 0  # the handler noticed the client left


def test_insufficient_and_empty(fake: FakeDeepSeek, http: requests.Session) -> None:
    full = FakeDeepSeek.answer_for("What is 2+2?")
    fake.script("insufficient", "empty", "insufficient")
    body = post(http, fake).json()
    assert body["choices"][0]["finish_reason"] == "insufficient_system_resource"
    assert body["choices"][0]["message"]["content"] == full[: len(full) // 2]
    empty = post(http, fake)
    assert empty.status_code == 200 and empty.content and not empty.content.strip()
    events = sse(post(http, fake, stream=True))
    assert events[-2]["choices"][0]["finish_reason"] == "insufficient_system_resource"


def test_hold_after_done_keeps_the_stream_open(fake: FakeDeepSeek) -> None:
    fake.script("hold_after_done")
    sock = raw(fake, raw_chat({"model": "deepseek-flash", "messages": USER, "stream": True}))
    with sock:
        data = b""
        while b"data: [DONE]\n\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "closed before [DONE]"
            data += chunk
        sock.settimeout(0.2)
        with pytest.raises(socket.timeout):  # no terminating chunk and no close
            sock.recv(1)
        assert fake.stats.in_flight == 1
    deadline = time.monotonic() + TIMEOUT
    while fake.stats.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.stats.in_flight == 0 and fake.stats.by_status == {200: 1}


def test_fault_rates_are_deterministic_per_seed(http: requests.Session) -> None:
    def run(seed: int) -> List[int]:
        with FakeDeepSeek(faults={"429": 0.2, "503": 0.2}, seed=seed) as fake:
            statuses = [post(http, fake).status_code for _ in range(60)]
            stats = fake.stats
            assert stats.faults_injected.get("429", 0) == statuses.count(429)
            assert stats.faults_injected.get("503", 0) == statuses.count(503)
            fake.reset()  # reseeds: the same sequence again
            assert [post(http, fake).status_code for _ in range(60)] == statuses
            return statuses

    first = run(7)
    assert run(7) == first and run(8) != first
    assert 10 < first.count(200) < 50 and first.count(429) and first.count(503)


def test_latency_range_is_drawn_from_the_seed(http: requests.Session) -> None:
    with FakeDeepSeek(latency=(0.01, 0.03), seed=3) as fake:
        start = time.monotonic()
        assert post(http, fake).status_code == 200
        assert 0.01 <= time.monotonic() - start < 1.0
    with FakeDeepSeek(latency=lambda rng: 0.02) as fake:
        start = time.monotonic()
        post(http, fake)
        assert time.monotonic() - start >= 0.02


# -- connections and counters ----------------------------------------------------------------


def test_keep_alive_reuses_one_connection(fake: FakeDeepSeek, http: requests.Session) -> None:
    for _ in range(3):
        assert post(http, fake).status_code == 200
    for _ in range(2):
        assert sse(post(http, fake, stream=True))[-1] == "[DONE]"
    assert fake.stats.connections_opened == 1 and fake.stats.requests == 5


def test_connection_close_is_honoured(fake: FakeDeepSeek) -> None:
    sock = raw(fake, raw_chat({"model": "deepseek-flash", "messages": USER}, "Connection: close\r\n"))
    with sock:
        data = read_all(sock)  # returns only because the server closed
    assert data.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in data


def test_pipelined_requests_on_one_socket(fake: FakeDeepSeek) -> None:
    request = raw_chat({"model": "deepseek-flash", "messages": USER})
    models = b"GET /models HTTP/1.1\r\nAuthorization: Bearer k\r\nConnection: close\r\n\r\n"
    sock = raw(fake, request + request + models)
    with sock:
        data = read_all(sock)
    assert data.count(b"HTTP/1.1 200 OK") == 3 and fake.stats.requests == 3


def test_malformed_request_line_gets_400(fake: FakeDeepSeek) -> None:
    sock = raw(fake, b"NONSENSE\r\n\r\n")
    with sock:
        assert read_all(sock).startswith(b"HTTP/1.1 400 ")


def test_peak_concurrency_counts_parallel_requests() -> None:
    with FakeDeepSeek(latency=0.2) as fake:
        barrier = threading.Barrier(8, timeout=TIMEOUT)

        def call(_: int) -> int:
            with requests.Session() as session:
                barrier.wait()
                return session.post(
                    fake.base_url + "/chat/completions",
                    headers=AUTH,
                    timeout=TIMEOUT,
                    json={"model": "deepseek-flash", "messages": USER},
                ).status_code

        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(call, range(8))) == [200] * 8
        assert time.monotonic() - start < 1.0  # they waited together, not one after another
        stats = fake.stats
        assert stats.peak_concurrency == 8 and stats.in_flight == 0
        assert stats.connections_opened == 8 and stats.requests == 8


def test_received_log_and_reset(fake: FakeDeepSeek, http: requests.Session) -> None:
    post(http, fake, temperature=0.5)
    http.get(fake.base_url + "/models?x=1", timeout=TIMEOUT)
    [chat, models] = fake.received
    assert chat.method == "POST" and chat.path == "/chat/completions"
    assert chat.headers["authorization"] == f"Bearer {KEY}"
    assert chat.body == {"model": "deepseek-flash", "messages": USER, "temperature": 0.5}
    assert models == ("GET", "/models?x=1", models.headers, None)
    fake.script("503")
    fake.reset()
    assert fake.received == [] and fake.stats.requests == 0 and fake.stats.connections_opened == 0
    assert post(http, fake).status_code == 200  # the script was cleared too


def test_request_ids_are_unique_and_deterministic(http: requests.Session) -> None:
    runs = []
    for _ in range(2):
        with FakeDeepSeek(seed=5) as fake:
            ids = [post(http, fake).headers["x-request-id"] for _ in range(3)]
            fake.reset()
            ids.append(post(http, fake).headers["x-request-id"])
            runs.append(ids)
    assert runs[0] == runs[1] and len(set(runs[0])) == 4


# -- lifecycle -------------------------------------------------------------------------------


def test_stop_is_prompt_with_a_trickle_forever_request_open() -> None:
    fake = FakeDeepSeek(trickle_interval=0.01, latency=30.0).start()
    fake.script("trickle_forever")
    sock = raw(fake, raw_chat({"model": "deepseek-flash", "messages": USER}))
    assert sock.recv(1024).startswith(b"HTTP/1.1 200 OK")  # trickling: headers come at once
    held = raw(fake, raw_chat({"model": "deepseek-flash", "messages": USER}))  # in its 30 s latency
    idle = raw(fake, b"")  # a keep-alive connection waiting for its next request
    with sock, held, idle:
        deadline = time.monotonic() + TIMEOUT
        while (fake.stats.in_flight, fake.stats.connections_opened) != (2, 3) and time.monotonic() < deadline:
            time.sleep(0.01)
        start = time.monotonic()
        fake.stop()
        assert time.monotonic() - start < 1.0
        fake.stop()  # idempotent
        sock.settimeout(TIMEOUT)
        while sock.recv(65536):  # the server closed it: recv ends instead of blocking
            pass
        assert held.recv(1024) == b""
        assert idle.recv(1024) == b""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(fake.base_url.rsplit(":", 1)[1])), timeout=1).close()
    assert fake.stats.in_flight == 0


def test_base_url_needs_a_started_server() -> None:
    fake = FakeDeepSeek()
    with pytest.raises(RuntimeError):
        _ = fake.base_url
    fake.stop()  # stopping a server that never started is fine


def test_plugin_fixtures(deepseek_env: FakeDeepSeek) -> None:
    assert os.environ["DEEPSEEK_BASE_URL"] == deepseek_env.base_url
    assert os.environ["DEEPSEEK_API_KEY"]
    assert deepseek_env.stats.requests == 0  # reset for this test


def test_main_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--fault", "bogus=0.1"]) == 2
    assert "unknown fault 'bogus'" in capsys.readouterr().err
    assert main(["--fault", "503"]) == 2
    assert "NAME=RATE" in capsys.readouterr().err
    assert main(["--latency", "-1"]) == 2


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGINT delivery to a child process")
def test_serve_fake_command_serves_until_ctrl_c(tmp_path: Any) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    code = "import sys; from deepseek_pool.testing import main; sys.exit(main(sys.argv[1:]))"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "--fault",
            "503=1",
            "--seed",
            "1",
            "--api-key-file",
            str(key_file),
            "--latency",
            "0-0.01",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=root,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        r = requests.get(base_url + "/models", headers={"Authorization": "Bearer sk-from-file"}, timeout=TIMEOUT)
        assert r.status_code == 503
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()


# -- HTTP details any client may rely on ------------------------------------------------------


def test_head_answers_headers_only_and_the_connection_stays_usable(fake: FakeDeepSeek) -> None:
    get_length = len(requests.get(fake.base_url + "/models", headers=AUTH, timeout=TIMEOUT).content)
    request = f"HEAD /models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    follow = f"GET /user/balance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"
    with raw(fake, (request + follow).encode()) as sock:
        data = read_all(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and f"Content-Length: {get_length}".encode() in head
    assert rest.startswith(b"HTTP/1.1 200 "), "the HEAD answer carried a body"
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["is_available"] is True
    assert [r.method for r in fake.received] == ["GET", "HEAD", "GET"]


@pytest.mark.parametrize("path, status", [("/chat/completions", 405), ("/nope", 404), ("/v1/models", 200)])
def test_head_never_has_a_body_whatever_the_status(fake: FakeDeepSeek, path: str, status: int) -> None:
    with raw(
        fake, f"HEAD {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n".encode()
    ) as sock:
        data = read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()) and body == b""
    assert requests.head(fake.base_url + path, headers=AUTH, timeout=TIMEOUT).status_code == status


def test_head_ignores_body_faults(fake: FakeDeepSeek) -> None:
    fake.script("trickle:3")
    r = requests.head(fake.base_url + "/models", headers=AUTH, timeout=TIMEOUT)
    assert r.status_code == 200 and r.content == b"" and int(r.headers["Content-Length"]) > 0


def test_every_answer_has_a_date_header(fake: FakeDeepSeek, http: requests.Session) -> None:
    from email.utils import parsedate_to_datetime

    answers = [
        post(http, fake),
        post(http, fake, stream=True),
        http.get(fake.base_url + "/nope", timeout=TIMEOUT),
        requests.post(fake.base_url + "/chat/completions", json={}, timeout=TIMEOUT),  # 401
    ]
    for r in answers:
        when = parsedate_to_datetime(r.headers["Date"])
        assert r.headers["Date"].endswith(" GMT") and abs(when.timestamp() - time.time()) < 5, r.headers
    with raw(fake, b"NONSENSE\r\n\r\n") as sock:  # a malformed request still gets a dated 400
        assert b"\r\nDate: " in read_all(sock).partition(b"\r\n\r\n")[0]


def test_absolute_form_targets_are_served(fake: FakeDeepSeek) -> None:
    host = fake.base_url.split("//", 1)[1]
    request = (
        f"GET http://{host}/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n\r\n"
        f"GET http://api.deepseek.example/v1/user/balance?x=1 HTTP/1.1\r\nHost: api.deepseek.example\r\n"
        f"Authorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"
    )
    with raw(fake, request.encode()) as sock:
        data = read_all(sock)
    first, second = data.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and b'"object":"list"' in first
    assert second.startswith(b"200 ") and b'"is_available"' in second
    assert [r.path for r in fake.received] == ["/models", "/v1/user/balance?x=1"]


def test_a_client_using_the_fake_as_its_http_proxy_sends_absolute_form(fake: FakeDeepSeek) -> None:
    # requests, told the fake is its proxy, sends "POST http://<fake>/chat/completions": only
    # loopback is ever connected to, as the target is the fake itself.
    r = requests.post(
        fake.base_url + "/chat/completions",
        json={"model": "deepseek-flash", "messages": USER},
        headers=AUTH,
        proxies={"http": fake.base_url},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == FakeDeepSeek.answer_for(
        "What is 2+2?"
    )
    assert fake.received[-1].path == "/chat/completions"


# -- logprobs -----------------------------------------------------------------------------------


def test_logprobs_in_the_apis_shape(fake: FakeDeepSeek, http: requests.Session) -> None:
    body = post(http, fake, model="deepseek-chat", logprobs=True, top_logprobs=2).json()
    choice = body["choices"][0]
    tokens = choice["logprobs"]["content"]
    assert set(choice["logprobs"]) == {"content"}
    assert "".join(t["token"] for t in tokens) == choice["message"]["content"]
    for t in tokens:
        assert set(t) == {"token", "logprob", "bytes", "top_logprobs"} and bytes(t["bytes"]).decode() == t["token"]
        assert t["top_logprobs"][0]["token"] == t["token"] and len(t["top_logprobs"]) == 2
        assert all(set(a) == {"token", "logprob", "bytes"} for a in t["top_logprobs"])
    again = post(http, fake, model="deepseek-chat", logprobs=True, top_logprobs=2).json()
    assert again["choices"][0]["logprobs"] == choice["logprobs"]  # deterministic
    assert post(http, fake, logprobs=False).json()["choices"][0]["logprobs"] is None


def test_streamed_logprobs_follow_the_content_pieces(fake: FakeDeepSeek, http: requests.Session) -> None:
    events = sse(post(http, fake, stream=True, logprobs=True, top_logprobs=1))
    pieces = []
    for event in events[:-1]:
        choice = event["choices"][0]
        if choice["delta"].get("content"):
            [entry] = choice["logprobs"]["content"]
            assert entry["token"] == choice["delta"]["content"] and len(entry["top_logprobs"]) == 1
            pieces.append(entry["token"])
        else:
            assert choice["logprobs"] is None  # role, reasoning and finish chunks
    assert "".join(pieces) == FakeDeepSeek.answer_for("What is 2+2?")


@pytest.mark.parametrize(
    "params, status",
    [({"logprobs": "yes"}, 422), ({"logprobs": True, "top_logprobs": 21}, 422), ({"top_logprobs": 2}, 400)],
)
def test_logprobs_validation(fake: FakeDeepSeek, http: requests.Session, params: Dict[str, Any], status: int) -> None:
    r = post(http, fake, **params)
    assert r.status_code == status and "logprobs" in r.json()["error"]["message"]


class _RecordingSocket:
    """Stands in for a connection: notes each write in the shared event list."""

    def __init__(self, events: List[str]) -> None:
        self.events = events

    def sendall(self, data: bytes) -> None:
        self.events.append("sent")


@pytest.mark.parametrize("answer", ["plain", "stream", "stream_paced", "error"])
def test_an_answer_frees_its_concurrency_slot_before_its_last_bytes_go_out(answer: str) -> None:
    # A client that has read a whole answer may send its next request at once: the fake must
    # not still count the first against max_concurrency then, or it answers 429 to a client
    # that never passed the cap (seen as rare RateLimitErrors under load).
    from deepseek_pool.testing._exchange import Exchange, Wire

    events: List[str] = []

    def record(status: Optional[int], leaving: bool, generating: bool) -> None:
        if generating:
            events.append("slot freed")

    wire = Wire(threading.Event(), record, trickle_interval=0.0, chunk_delay=0.01 if answer == "stream_paced" else 0.0)
    ex = Exchange(wire, _RecordingSocket(events), "rid", keep_alive=True, delay=0.0)  # type: ignore[arg-type]
    ex.generating = True
    if answer == "plain":
        ex.plain(b"{}", None)
    elif answer == "error":
        ex.error(400, "bad")
    else:
        ex.stream([b"data: {}\n\n", b"data: [DONE]\n\n"], None)
    ex.end(None)  # what the server's finally does: never a second count
    assert events.count("slot freed") == 1, events
    assert events[-1] == "sent", events
