"""Typed chat parameters: mypy catches a misspelt or mistyped field; unknown fields still reach the body.

The type checks run the real mypy on snippets of user code; the run-time checks go over the
wire to FakeDeepSeek and look at the bodies it received.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Mapping

import pytest

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek

KEY = "sk-test"
ROOT = Path(dp.__file__).resolve().parents[1]  # the copy under test, not an installed one

# Each line marked ``# E: text`` must draw a mypy error containing ``text``; no other line may.
BAD = """
from typing import Any
import deepseek_pool as dp

client = dp.DeepSeekClient("sk-x")
client.chat("hi", max_token=5)  # E: Unexpected keyword argument "max_token"
client.chat("hi", temperature="hot")  # E: "temperature" to "chat" of "DeepSeekClient" has incompatible type "str"
client.chat("hi", thinking={"type": "off"})  # E: Argument "thinking"
client.chat("hi", reasoning_effort="extreme")  # E: Argument "reasoning_effort"
client.chat("hi", response_format={"type": "json"})  # E: Argument "response_format"
client.chat("hi", tools=[{"function": {"name": "f"}}])  # E: Missing key "type" for TypedDict "ToolParam"
client.chat("hi", tool_choice="always")  # E: Argument "tool_choice"
client.chat("hi", user="u1")  # E: Unexpected keyword argument "user"
client.chat_stream("hi", stream_options={"include_usage": "yes"})  # E: Argument "stream_options"
client.fim("def f(", echo=1, suffixx=")")  # E: Unexpected keyword argument "suffixx"
client.chat("hi", extra_body=[("a", 1)])  # E: Argument "extra_body"
pool = dp.DeepSeekPool(client)
pool.submit("hi", max_tokns=5)  # E: Unexpected keyword argument "max_tokns"
request: dp.ChatRequest = {"messages": "hi", "custom_idd": "a"}  # E: Extra key "custom_idd" for TypedDict "ChatRequest"
history: list[dp.MessageParam] = [{"role": "usr", "content": "hi"}]  # E: Type of TypedDict is ambiguous
"""

GOOD = """
from typing import Any, Dict, List
import deepseek_pool as dp

client = dp.DeepSeekClient("sk-x")
tools: list[dp.ToolParam] = [
    {
        "type": "function",
        "function": {"name": "weather", "description": "...", "parameters": {"type": "object"}, "strict": True},
    }
]
answer = client.chat(
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}],
    model="deepseek-flash",
    thinking=False,
    reasoning_effort="max",
    max_tokens=200,
    temperature=0.3,
    top_p=1,
    frequency_penalty=0.0,
    presence_penalty=None,
    stop=["\\n\\n"],
    response_format={"type": "json_object"},
    tools=tools,
    tool_choice={"type": "function", "function": {"name": "weather"}},
    logprobs=True,
    top_logprobs=3,
    user_id="user-42",
    extra_body={"a_field_deepseek_adds_later": 1},
)
client.chat("hi", thinking={"type": "enabled"}, tool_choice="auto", stream=True)
history: list[dp.MessageParam] = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": None, "reasoning_content": "...", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    ]},
    {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    {"role": "assistant", "content": "It is", "prefix": True},
]
client.chat(history, beta=True)
plain: List[Dict[str, Any]] = [{"role": "user", "content": "hi"}, answer.to_message()]
client.chat(plain)
options: dp.ChatParams = {"max_tokens": 5, "stream_options": {"include_usage": True}}
with client.chat_stream("hi", **options) as stream:
    pass
client.fim("def f(", ")", max_tokens=16, stop="\\n", echo=False, logprobs=2)
pool = dp.DeepSeekPool(client)
pool.submit("hi", model="deepseek-v4-pro", stream=True, timeout=30, max_tokens=5, extra_body={"x": 1})
requests: list[dp.ChatRequest] = [{"messages": "hi", "custom_id": "a", "max_tokens": 5}, {"prompt": "yo"}]
pool.map(requests)
pool.map(["hi", [{"role": "user", "content": "hi"}], {"custom_id": "b", "prompt": "hi", "anything": 1}])
"""


def run_mypy(tmp_path: Path, *snippets: str) -> Dict[str, List[str]]:
    """mypy --strict over the snippets as files; returns each file's error lines."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    names = []
    for index, snippet in enumerate(snippets):
        name = f"snippet_{index}.py"
        (tmp_path / name).write_text(textwrap.dedent(snippet), encoding="utf-8")
        names.append(name)
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    env.pop("PYTHONPATH", None)  # mypy reads MYPYPATH; the snippets are not run
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent",
         "--cache-dir", str(tmp_path / ".mypy_cache"), "--config-file", "", *names],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    errors: Dict[str, List[str]] = {name: [] for name in names}
    for line in proc.stdout.splitlines():
        match = re.match(r"(snippet_\d+\.py):(\d+): error: (.*)", line)
        if match:
            errors[match.group(1)].append(f"{match.group(2)}: {match.group(3)}")
    return errors


def expected_errors(snippet: str) -> Dict[int, str]:
    lines = textwrap.dedent(snippet).splitlines()
    return {number: line.split("# E: ", 1)[1] for number, line in enumerate(lines, 1) if "# E: " in line}


def test_mypy_flags_misspelt_and_mistyped_parameters_and_passes_correct_code(tmp_path: Path) -> None:
    errors = run_mypy(tmp_path, BAD, GOOD)
    bad, good = errors["snippet_0.py"], errors["snippet_1.py"]
    assert good == [], "\n".join(good)
    expected = expected_errors(BAD)
    assert len(expected) == 14  # the markers were read
    by_line: Dict[int, List[str]] = {}
    for error in bad:
        number, message = error.split(": ", 1)
        by_line.setdefault(int(number), []).append(message)
    missing = {n: text for n, text in expected.items() if not any(text in m for m in by_line.get(n, []))}
    assert missing == {}, "\n".join(bad)
    unexpected = {n: m for n, m in by_line.items() if n not in expected}
    assert unexpected == {}


# -- run time: what reaches the body -------------------------------------------------------


def client_for(fake: FakeDeepSeek) -> dp.DeepSeekClient:
    return dp.DeepSeekClient(KEY, base_url=fake.base_url, max_retries=0, timeout=10)


def last_body(fake: FakeDeepSeek) -> Dict[str, Any]:
    body = fake.received[-1].body
    assert isinstance(body, dict)
    return body


def test_unknown_keywords_and_extra_body_reach_the_body(fake_deepseek: FakeDeepSeek) -> None:
    extra: Dict[str, Any] = {"not_a_known_field": 1}
    with client_for(fake_deepseek) as client:
        client.chat("hi", max_tokens=20, **extra)
        assert last_body(fake_deepseek)["not_a_known_field"] == 1

        client.chat("hi", max_tokens=5, thinking=False, extra_body={"max_tokens": 7, "future_field": {"a": [1]}})
        body = last_body(fake_deepseek)
        assert body["future_field"] == {"a": [1]}
        assert body["max_tokens"] == 7  # extra_body comes last and wins, as in openai-python
        assert body["thinking"] == {"type": "disabled"}  # the typed fields keep their meaning
        assert "extra_body" not in body

        client.chat("hi", extra_body=None)
        assert "extra_body" not in last_body(fake_deepseek)


def test_every_typed_field_is_sent_as_given(fake_deepseek: FakeDeepSeek) -> None:
    params: dp.ChatParams = {
        "thinking": {"type": "enabled"},
        "reasoning_effort": "high",
        "max_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "frequency_penalty": 0.1,
        "presence_penalty": -0.1,
        "stop": ["END"],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "none",
        "logprobs": True,
        "top_logprobs": 2,
        "user_id": "u-1",
    }
    with client_for(fake_deepseek) as client:
        client.chat("Answer in json.", response_format={"type": "json_object"}, **params)
    body = last_body(fake_deepseek)
    assert {key: body[key] for key in params} == params
    assert body["response_format"] == {"type": "json_object"}


def test_extra_body_on_streams_fim_and_the_pool(fake_deepseek: FakeDeepSeek) -> None:
    with client_for(fake_deepseek) as client:
        with client.chat_stream("hi", extra_body={"s": 1}, stream_options={"include_usage": True}) as stream:
            assert stream.completion().content
        body = last_body(fake_deepseek)
        assert body["s"] == 1 and body["stream"] is True and "extra_body" not in body

        client.fim("def f(", ")", max_tokens=8, extra_body={"f": 2})
        body = last_body(fake_deepseek)
        assert body["f"] == 2 and body["suffix"] == ")" and "extra_body" not in body

        with dp.DeepSeekPool(client, max_workers=2) as pool:
            loose: Dict[str, Any] = {"loose": 4}
            pool.submit("hi", extra_body={"p": 3}, **loose).result(timeout=10)
            body = last_body(fake_deepseek)
            assert body["p"] == 3 and body["loose"] == 4 and "extra_body" not in body

            requests: List[dp.ChatRequest] = [{"prompt": "hi", "custom_id": "a", "extra_body": {"q": 5}}]
            [result] = pool.map(requests)
            assert result.ok and result.custom_id == "a"
            body = last_body(fake_deepseek)
            assert body["q"] == 5 and "custom_id" not in body and "extra_body" not in body


def test_bad_extra_body_fails_before_sending(fake_deepseek: FakeDeepSeek) -> None:
    with client_for(fake_deepseek) as client:
        with pytest.raises(TypeError, match="extra_body must be a dict of extra request fields, got list"):
            client.chat("hi", extra_body=[("a", 1)])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="extra_body must be a dict"):
            client.fim("x", extra_body="y")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="temperature must be between 0 and 2"):
            client.chat("hi", temperature=3)
    assert fake_deepseek.received == []


def test_typed_dicts_are_plain_dicts_at_run_time() -> None:
    # Nothing to construct or validate on the request path: the annotation is all there is.
    params: dp.ChatParams = {"max_tokens": 5}
    assert type(params) is dict
    assert dp.ChatParams.__optional_keys__ >= {"thinking", "reasoning_effort", "tools", "user_id", "extra_body"}
    assert dp.AssistantMessageParam.__required_keys__ == {"role"}
    hinted: Mapping[str, Any] = dp.SubmitParams.__annotations__
    assert {"model", "stream", "timeout"} <= hinted.keys()
