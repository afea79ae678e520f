"""Request shaping, configuration and error mapping, with ``responses`` in place of the wire.

Everything that lives on the wire (retries, timeouts, pooling, streaming) is tested
against real local servers in test_client_wire.py.
"""

from __future__ import annotations

import json
import logging
import pickle
from typing import Any, Dict

import pytest
import requests
import responses

import deepseek_pool as dp
from deepseek_pool.models import DEFAULT_MODEL

BASE = "https://api.deepseek.example"
KEY = "sk-unit-test-secret-key-1234"


def completion_body(content: str = "hello", **message: Any) -> Dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "deepseek-flash",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content, **message}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_cache_hit_tokens": 4,
            "prompt_cache_miss_tokens": 6,
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }


@pytest.fixture
def client() -> dp.DeepSeekClient:
    return dp.DeepSeekClient(KEY, base_url=BASE, max_retries=0)


# -- configuration -----------------------------------------------------------------


def test_missing_key_says_how_to_set_it() -> None:
    with pytest.raises(dp.ConfigurationError, match="DEEPSEEK_API_KEY"):
        dp.DeepSeekClient()


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSEEK_API_KEY", KEY)
    monkeypatch.setenv("DEEPSEEK_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("DEEPSEEK_MODEL", "deepseek-v4-pro")
    client = dp.DeepSeekClient()
    assert client.base_url == "http://127.0.0.1:9/v1"
    assert client.model == "deepseek-v4-pro"


def test_defaults_without_environment() -> None:
    client = dp.DeepSeekClient(KEY)
    assert client.base_url == "https://api.deepseek.com"
    assert client.model == DEFAULT_MODEL


@pytest.mark.parametrize("url", [BASE, BASE + "/"])
def test_a_trailing_slash_is_dropped(url: str) -> None:
    assert dp.DeepSeekClient(KEY, base_url=url).base_url == BASE


@pytest.mark.parametrize("path", ["/v1", "/v1/", "/openai/v1", "/api/deployments/x"])
def test_base_url_path_is_kept_as_given(path: str) -> None:
    """Every OpenAI-compatible server lives at its own path; nothing is stripped."""
    client = dp.DeepSeekClient(KEY, base_url=BASE + path)
    assert client.base_url == BASE + path.rstrip("/")


@pytest.mark.parametrize(
    "base, beta",
    [
        ("https://api.deepseek.com", "https://api.deepseek.com/beta"),
        ("https://api.deepseek.com/v1", "https://api.deepseek.com/beta"),
        ("http://127.0.0.1:9/gateway", "http://127.0.0.1:9/gateway/beta"),
    ],
)
def test_beta_url_is_derived_from_the_base(base: str, beta: str) -> None:
    assert dp.DeepSeekClient(KEY, base_url=base).beta_url == beta


def test_beta_url_can_be_given() -> None:
    client = dp.DeepSeekClient(KEY, base_url=BASE + "/v1", beta_url=BASE + "/fim/")
    assert client.beta_url == BASE + "/fim"


@pytest.mark.parametrize("url", ["api.deepseek.com", "ftp://x.example", "http://"])
def test_bad_base_url_is_a_clear_error(url: str) -> None:
    with pytest.raises(dp.ConfigurationError, match="base_url"):
        dp.DeepSeekClient(KEY, base_url=url)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_retries": -1}, "max_retries"),
        ({"pool_maxsize": 0}, "pool_maxsize"),
        ({"call_timeout": 0}, "call_timeout"),
        ({"timeout": "fast"}, "timeout"),
        ({"timeout": -3}, "timeout"),
    ],
)
def test_bad_options_are_clear_errors(kwargs: Dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        dp.DeepSeekClient(KEY, **kwargs)


def test_key_never_in_repr(client: dp.DeepSeekClient) -> None:
    assert KEY not in repr(client)
    assert "hidden" in repr(client)


def test_timeout_value_object() -> None:
    t = dp.Timeout(30)
    assert (t.connect, t.read, t.total) == (10.0, 30.0, 30.0)
    assert dp.Timeout(connect=1, read=2, total=3) == dp.Timeout(3, connect=1, read=2)
    assert "total=3.0" in repr(dp.Timeout(3))
    with pytest.raises(AttributeError):
        t.total = 5  # type: ignore[misc]


# -- request shaping ---------------------------------------------------------------


@responses.activate
def test_chat_sends_the_documented_request(client: dp.DeepSeekClient) -> None:
    responses.post(BASE + "/chat/completions", json=completion_body("hi there"))
    result = client.chat("Hello", temperature=0.5, max_tokens=20)
    request = responses.calls[0].request
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.body) == {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "Hello"}],
        "temperature": 0.5,
        "max_tokens": 20,
    }
    assert result.content == "hi there"
    assert result.finish_reason == "stop"
    assert result.usage == dp.Usage(10, 5, 15, 4, 6, 2)


@responses.activate
def test_thinking_switch_and_model_override(client: dp.DeepSeekClient) -> None:
    responses.post(BASE + "/chat/completions", json=completion_body())
    client.chat([{"role": "user", "content": "x"}], model="deepseek-v4-pro", thinking=False)
    client.chat("x", thinking=True, reasoning_effort="high")
    first, second = (json.loads(c.request.body) for c in responses.calls)
    assert first["model"] == "deepseek-v4-pro"
    assert first["thinking"] == {"type": "disabled"}
    assert second["thinking"] == {"type": "enabled"}
    assert second["reasoning_effort"] == "high"


@responses.activate
def test_extra_headers_and_rate_limit_group() -> None:
    responses.post(BASE + "/chat/completions", json=completion_body())
    client = dp.DeepSeekClient(KEY, base_url=BASE, headers={"X-Team": "search"}, rate_limit_group="batch")
    client.chat("x")
    headers = responses.calls[0].request.headers
    assert headers["X-Team"] == "search"
    assert headers["X-RateLimit-Group"] == "batch"


@responses.activate
def test_user_session_headers_are_kept() -> None:
    responses.post(BASE + "/chat/completions", json=completion_body())
    session = requests.Session()
    session.headers["X-From-Session"] = "yes"
    dp.DeepSeekClient(KEY, base_url=BASE, session=session).chat("x")
    assert responses.calls[0].request.headers["X-From-Session"] == "yes"


@pytest.mark.parametrize(
    "messages, error, match",
    [
        (42, TypeError, "messages must be a str or a list"),
        ({"role": "user", "content": "x"}, TypeError, "messages must be a str or a list"),
        ([], ValueError, "empty list"),
        ("", ValueError, "empty string"),
        (["hello"], TypeError, r"messages\[0\] must be a dict"),
        ([{"content": "x"}], ValueError, r"messages\[0\] has no 'role'"),
        (
            [{"role": "user", "content": "a"}, {"role": "robot", "content": "x"}],
            ValueError,
            r"messages\[1\] has role 'robot'",
        ),
        ([{"role": "user", "content": 5}], TypeError, r"messages\[0\]\['content'\]"),
        ([{"role": "user"}], ValueError, r"messages\[0\] \(user\) has no 'content'"),
    ],
)
@responses.activate
def test_bad_messages_fail_before_sending(client: dp.DeepSeekClient, messages: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        client.chat(messages)
    with pytest.raises(error, match=match):
        client.chat_stream(messages)
    assert len(responses.calls) == 0


@pytest.mark.parametrize(
    "params, error, match",
    [
        ({"max_tokens": 0}, ValueError, "max_tokens"),
        ({"max_tokens": "10"}, ValueError, "max_tokens"),
        ({"temperature": 3}, ValueError, "temperature"),
        ({"top_p": "x"}, TypeError, "top_p"),
        ({"metadata": object()}, TypeError, "not JSON serializable"),
        ({"model": ""}, TypeError, "model"),
    ],
)
@responses.activate
def test_bad_params_fail_before_sending(
    client: dp.DeepSeekClient, params: Dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        client.chat("x", **params)
    assert len(responses.calls) == 0


@responses.activate
def test_fim_models_balance(client: dp.DeepSeekClient) -> None:
    responses.post(
        BASE + "/beta/completions",
        json={
            "id": "f1",
            "model": "deepseek-flash",
            "choices": [{"text": "    return a + b", "finish_reason": "stop"}],
        },
    )
    responses.get(BASE + "/models", json={"object": "list", "data": [{"id": "deepseek-flash", "object": "model"}]})
    responses.get(
        BASE + "/user/balance",
        json={"is_available": True, "balance_infos": [{"currency": "USD", "total_balance": "12.50"}]},
    )
    fim = client.fim("def add(a, b):\n", suffix="\n", max_tokens=16)
    assert fim.text == "    return a + b"
    assert json.loads(responses.calls[0].request.body) == {
        "model": DEFAULT_MODEL,
        "prompt": "def add(a, b):\n",
        "suffix": "\n",
        "max_tokens": 16,
    }
    assert client.models() == ["deepseek-flash"]
    balance = client.balance()
    assert balance.is_available and balance.balance_infos[0]["total_balance"] == "12.50"


# -- results -------------------------------------------------------------------------


def test_tool_call_turn_keeps_reasoning_content_in_the_next_message() -> None:
    tool_calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    completion = dp.ChatCompletion(completion_body("", reasoning_content="because", tool_calls=tool_calls))
    assert completion.to_message() == {
        "role": "assistant",
        "content": "",
        "tool_calls": tool_calls,
        "reasoning_content": "because",
    }
    plain = dp.ChatCompletion(completion_body("answer", reasoning_content="because"))
    assert plain.to_message() == {"role": "assistant", "content": "answer"}


def test_usage_falls_back_to_openai_fields() -> None:
    usage = dp.Usage.from_dict(
        {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 7}}
    )
    assert usage is not None
    assert (usage.prompt_cache_hit_tokens, usage.prompt_cache_miss_tokens, usage.total_tokens) == (7, 3, 13)
    assert usage + usage == dp.Usage(20, 6, 26, 14, 6, 0)


def test_completion_tolerates_missing_fields() -> None:
    completion = dp.ChatCompletion({"choices": []})
    assert (completion.content, completion.finish_reason, completion.usage, completion.tool_calls) == (
        "",
        None,
        None,
        None,
    )


# -- error mapping -------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, cls, advice",
    [
        (400, dp.BadRequestError, "fix the request"),
        (401, dp.AuthenticationError, "check the API key"),
        (402, dp.InsufficientBalanceError, "top up"),
        (422, dp.UnprocessableEntityError, "parameter"),
        (429, dp.RateLimitError, "max_in_flight"),
        (500, dp.InternalServerError, ""),
        (503, dp.ServiceUnavailableError, ""),
        (502, dp.InternalServerError, ""),
        (418, dp.APIStatusError, ""),
    ],
)
@responses.activate
def test_status_maps_to_typed_error(client: dp.DeepSeekClient, status: int, cls: type, advice: str) -> None:
    body = {"error": {"message": "Something specific went wrong", "type": "x", "param": None, "code": "y"}}
    responses.post(BASE + "/chat/completions", json=body, status=status, headers={"x-request-id": "req-9"})
    with pytest.raises(cls) as info:
        client.chat("x")
    err = info.value
    assert type(err) is cls
    assert err.status_code == status
    assert err.body == body
    assert err.request_id == "req-9"
    assert "Something specific went wrong" in str(err)
    assert advice in str(err)
    assert KEY not in str(err) and KEY not in repr(err)
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is cls and clone.status_code == status and clone.body == body and str(clone) == str(err)


@responses.activate
def test_non_json_error_body_is_kept_as_text(client: dp.DeepSeekClient) -> None:
    responses.post(BASE + "/chat/completions", body="<html>bad gateway</html>", status=502)
    with pytest.raises(dp.InternalServerError) as info:
        client.chat("x")
    assert info.value.body == "<html>bad gateway</html>"


@responses.activate
def test_connection_error_is_typed_and_pickles(client: dp.DeepSeekClient) -> None:
    responses.post(BASE + "/chat/completions", body=requests.ConnectionError("refused"))
    with pytest.raises(dp.APIConnectionError) as info:
        client.chat("x")
    assert isinstance(pickle.loads(pickle.dumps(info.value)), dp.APIConnectionError)


@responses.activate
def test_timeout_error_is_typed(client: dp.DeepSeekClient) -> None:
    responses.post(BASE + "/chat/completions", body=requests.ReadTimeout("slow"))
    with pytest.raises(dp.APITimeoutError):
        client.chat("x")


@responses.activate
def test_insufficient_system_resource_is_an_error_not_an_answer(client: dp.DeepSeekClient) -> None:
    body = completion_body("partial")
    body["choices"][0]["finish_reason"] = "insufficient_system_resource"
    responses.post(BASE + "/chat/completions", json=body)
    with pytest.raises(dp.IncompleteResponseError, match="insufficient_system_resource"):
        client.chat("x")


@responses.activate
def test_blank_lines_before_json_parse(client: dp.DeepSeekClient) -> None:
    responses.post(BASE + "/chat/completions", body="\n\n\n" + json.dumps(completion_body("ok")))
    assert client.chat("x").content == "ok"


@responses.activate
def test_whitespace_only_body_is_a_transient_error(client: dp.DeepSeekClient) -> None:
    responses.post(BASE + "/chat/completions", body="\n \n")
    with pytest.raises(dp.IncompleteResponseError, match="empty body"):
        client.chat("x")


@responses.activate
def test_logs_never_contain_the_key(client: dp.DeepSeekClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    responses.post(BASE + "/chat/completions", json={"error": {"message": "no"}}, status=401)
    with pytest.raises(dp.AuthenticationError):
        client.chat("x")
    assert KEY not in caplog.text


def test_error_tree() -> None:
    assert issubclass(dp.APITimeoutError, dp.APIConnectionError)
    assert issubclass(dp.RateLimitError, dp.APIStatusError)
    for cls in (dp.APIConnectionError, dp.APIStatusError, dp.RetryBudgetExceeded, dp.ConfigurationError):
        assert issubclass(cls, dp.DeepSeekError)
