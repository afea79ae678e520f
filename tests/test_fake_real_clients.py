"""FakeDeepSeek driven by clients nobody here wrote: the openai SDK (sync and async) and litellm.

Our own client is tested against the fake elsewhere; these tests prove that the fake is
DeepSeek-shaped for everyone else's code too: the SDK's models parse every body and chunk, its
exception classes follow our statuses, and DeepSeek's documented examples run as written.
Every client gets a timeout and no retries (a failure is reported at once), and name resolution
is refused for any host but loopback: nothing may leave 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import warnings
from typing import Any, Callable, Dict, Iterator, List, Tuple, Type

import pytest

from deepseek_pool.testing import FakeDeepSeek
from deepseek_pool.testing import _shapes as shapes

openai = pytest.importorskip("openai", reason="the openai SDK is a test dependency: pip install -e '.[test]'")

KEY = "sk-real-client-test"
TIMEOUT = 10.0
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
PROMPT = "9.11 and 9.8, which is greater?"
WEATHER_TOOL: Dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather of a location, the user should supply a location first.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string", "description": "The city and state"}},
            "required": ["location"],
        },
    },
}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[List[str]]:
    """Refuse to resolve any other host, and list the ones a client tried."""
    real = socket.getaddrinfo
    refused: List[str] = []

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in LOOPBACK:
            refused.append(str(name))
            raise OSError(f"real-client test: no traffic beyond loopback (tried {name!r})")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield refused
    assert not refused, f"a client tried to reach {refused}"


@pytest.fixture
def fake(fake_deepseek: FakeDeepSeek) -> FakeDeepSeek:
    return fake_deepseek


@pytest.fixture
def client(fake: FakeDeepSeek) -> Iterator[Any]:
    with openai.OpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0, timeout=TIMEOUT) as sdk:
        yield sdk


@pytest.fixture
def beta(fake: FakeDeepSeek) -> Iterator[Any]:
    with openai.OpenAI(api_key=KEY, base_url=fake.base_url + "/beta", max_retries=0, timeout=TIMEOUT) as sdk:
        yield sdk


def run(coroutine_function: Callable[[Any], Any], fake: FakeDeepSeek) -> Any:
    """Run ``coroutine_function(async_client)`` on a fresh event loop, the client closed after."""

    async def main() -> Any:
        async with openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url, max_retries=0, timeout=TIMEOUT) as sdk:
            return await asyncio.wait_for(coroutine_function(sdk), TIMEOUT)

    return asyncio.run(main())


# -- the openai SDK, sync ------------------------------------------------------------------------


def test_chat_parses_into_the_sdk_models_with_reasoning_and_usage(client: Any) -> None:
    completion = client.chat.completions.create(model="deepseek-flash", messages=[{"role": "user", "content": PROMPT}])
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    openai.types.chat.ChatCompletion.model_validate(completion.model_dump())  # strict, field by field
    message = completion.choices[0].message
    assert message.content == FakeDeepSeek.answer_for(PROMPT)
    assert message.reasoning_content == FakeDeepSeek.reasoning_for(PROMPT)
    assert completion.choices[0].finish_reason == "stop" and completion.choices[0].logprobs is None
    usage = completion.usage
    assert usage.completion_tokens_details.reasoning_tokens > 0
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert completion.model == "deepseek-flash" and completion.system_fingerprint == shapes.SYSTEM_FINGERPRINT


def test_thinking_disabled_through_extra_body(client: Any) -> None:
    completion = client.chat.completions.create(
        model="deepseek-flash",
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"thinking": {"type": "disabled"}},
    )
    assert completion.choices[0].message.content == FakeDeepSeek.answer_for("Hi")
    assert getattr(completion.choices[0].message, "reasoning_content", None) is None
    assert completion.usage.completion_tokens_details is None


def test_streaming_with_include_usage(client: Any) -> None:
    stream = client.chat.completions.create(
        model="deepseek-flash",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    for chunk in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate(chunk.model_dump())
    *answer, last = chunks
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens > 0
    assert all(c.usage is None for c in answer)  # "usage": null on every other chunk
    assert answer[-1].choices[0].finish_reason == "stop"
    reasoning = "".join(c.choices[0].delta.reasoning_content or "" for c in answer)
    content = "".join(c.choices[0].delta.content or "" for c in answer)
    assert reasoning == FakeDeepSeek.reasoning_for(PROMPT) and content == FakeDeepSeek.answer_for(PROMPT)
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_first_thinking_chunk_is_the_apis(client: Any) -> None:
    stream = client.chat.completions.create(
        model="deepseek-flash", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    with stream:
        first = next(iter(stream)).choices[0].delta
    assert first.role == "assistant" and first.content is None and first.reasoning_content == ""


def test_tool_call_not_streamed(client: Any) -> None:
    completion = client.chat.completions.create(
        model="deepseek-flash",
        messages=[{"role": "user", "content": "How's the weather in Hangzhou?"}],
        tools=[WEATHER_TOOL],
        extra_body={"thinking": {"type": "disabled"}},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"location": "How's the weather in Hangzhou?"[:40]}


@pytest.mark.parametrize("thinking", ["enabled", "disabled"])
def test_tool_call_streamed_fragments_rebuild_the_call(client: Any, thinking: str) -> None:
    kwargs: Dict[str, Any] = {
        "model": "deepseek-flash",
        "messages": [{"role": "user", "content": "How's the weather in Hangzhou?"}],
        "tools": [WEATHER_TOOL],
        "extra_body": {"thinking": {"type": thinking}},
    }
    plain = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    calls: Dict[int, Dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        openai.types.chat.ChatCompletionChunk.model_validate(chunk.model_dump())
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for fragment in choice.delta.tool_calls or []:
            call = calls.setdefault(fragment.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += fragment.id or ""
            call["name"] += (fragment.function.name if fragment.function else None) or ""
            call["arguments"] += (fragment.function.arguments if fragment.function else None) or ""
    assert finish == "tool_calls"
    assert calls == {0: {"id": plain.id, "name": "get_weather", "arguments": plain.function.arguments}}


def test_json_mode(client: Any) -> None:
    question = "Which is the longest river in the world? Answer in json."
    completion = client.chat.completions.create(
        model="deepseek-flash",
        messages=[{"role": "user", "content": question}],
        response_format={"type": "json_object"},
    )
    assert json.loads(completion.choices[0].message.content) == {"answer": FakeDeepSeek.answer_for(question)}


def test_logprobs_not_streamed(client: Any) -> None:
    completion = client.chat.completions.create(
        model="deepseek-flash",
        messages=[{"role": "user", "content": "Hi"}],
        logprobs=True,
        top_logprobs=3,
        extra_body={"thinking": {"type": "disabled"}},
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert "".join(t.token for t in logprobs.content) == completion.choices[0].message.content
    for token in logprobs.content:
        assert token.logprob <= 0 and bytes(token.bytes).decode() == token.token
        assert len(token.top_logprobs) == 3 and token.top_logprobs[0].token == token.token
        assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs), reverse=True)
    plain = client.chat.completions.create(model="deepseek-flash", messages=[{"role": "user", "content": "Hi"}])
    assert plain.choices[0].logprobs is None


def test_logprobs_streamed(client: Any) -> None:
    tokens: List[str] = []
    content: List[str] = []
    for chunk in client.chat.completions.create(
        model="deepseek-flash", messages=[{"role": "user", "content": "Hi"}], logprobs=True, stream=True
    ):
        choice = chunk.choices[0]
        if choice.delta.content:
            content.append(choice.delta.content)
            assert choice.logprobs is not None and choice.logprobs.content[0].top_logprobs == []
        if choice.logprobs is not None:
            tokens.extend(t.token for t in choice.logprobs.content)
    assert "".join(tokens) == "".join(content) == FakeDeepSeek.answer_for("Hi")


def test_top_logprobs_out_of_range_is_422(client: Any) -> None:
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(
            model="deepseek-flash", messages=[{"role": "user", "content": "Hi"}], logprobs=True, top_logprobs=21
        )


def test_fim_on_beta(beta: Any) -> None:
    completion = beta.completions.create(model="deepseek-flash", prompt="def fib(a):", suffix="    return fib(a-1)")
    assert isinstance(completion, openai.types.Completion)
    assert completion.choices[0].text == FakeDeepSeek.fim_answer_for("def fib(a):", "    return fib(a-1)")
    assert completion.choices[0].finish_reason == "stop" and completion.usage.prompt_tokens > 0
    text = "".join(
        c.choices[0].text
        for c in beta.completions.create(
            model="deepseek-flash", prompt="def fib(a):", suffix="    return fib(a-1)", stream=True
        )
    )
    assert text == completion.choices[0].text


def test_chat_prefix_completion_on_beta(beta: Any, client: Any) -> None:
    messages = [
        {"role": "user", "content": "Please write quick sort code"},
        {"role": "assistant", "content": "```python\n", "prefix": True},
    ]
    completion = beta.chat.completions.create(model="deepseek-flash", messages=messages, stop=["```"])
    assert completion.choices[0].message.content == FakeDeepSeek.answer_for("Please write quick sort code")
    with pytest.raises(openai.BadRequestError, match="beta"):
        client.chat.completions.create(model="deepseek-flash", messages=messages)  # not on the main base


def test_models_list(client: Any, fake: FakeDeepSeek) -> None:
    models = client.models.list()
    assert [m.id for m in models] == ["deepseek-flash", "deepseek-v4-pro", "deepseek-chat", "deepseek-reasoner"]
    assert all(m.object == "model" and m.owned_by == "deepseek" for m in models)
    assert fake.received[-1].path == "/models"


def _status_cases() -> List[Tuple[int, str, Type[BaseException]]]:
    return [
        (400, "bad model", openai.BadRequestError),
        (401, "wrong key", openai.AuthenticationError),
        (402, "402", openai.APIStatusError),
        (422, "bad temperature", openai.UnprocessableEntityError),
        (429, "429", openai.RateLimitError),
        (500, "500", openai.InternalServerError),
        (503, "503", openai.InternalServerError),
    ]


@pytest.mark.parametrize("status, cause, exception", _status_cases())
def test_every_error_status_maps_to_the_sdks_exception(
    fake: FakeDeepSeek, status: int, cause: str, exception: Type[BaseException]
) -> None:
    body: Dict[str, Any] = {"model": "deepseek-flash", "messages": [{"role": "user", "content": "Hi"}]}
    key = KEY
    if cause == "bad model":
        body["model"] = "gpt-4o"
    elif cause == "wrong key":
        key = "sk-wrong"
    elif cause == "bad temperature":
        body["temperature"] = 5
    else:
        fake.script(cause)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(FakeDeepSeek(api_key=KEY)) if cause == "wrong key" else fake
        sdk = stack.enter_context(openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0, timeout=TIMEOUT))
        caught = stack.enter_context(pytest.raises(exception))
        sdk.chat.completions.create(**body)
    error: Any = caught.value
    assert type(error) is exception  # not a subclass: 402 has no class of its own in the SDK
    assert error.status_code == status
    assert set(error.body) == {"message", "type", "param", "code"} and error.body["message"]
    assert error.request_id and error.response.headers["x-ds-trace-id"] == error.request_id


def test_sdk_retries_a_503_itself(fake: FakeDeepSeek) -> None:
    fake.script("503", "ok")
    with openai.OpenAI(api_key=KEY, base_url=fake.base_url, max_retries=1, timeout=TIMEOUT) as sdk:
        completion = sdk.chat.completions.create(model="deepseek-flash", messages=[{"role": "user", "content": "Hi"}])
    assert completion.choices[0].message.content == FakeDeepSeek.answer_for("Hi")
    assert fake.stats.by_status == {503: 1, 200: 1}


# -- the openai SDK, async -----------------------------------------------------------------------


def test_async_chat_stream_and_models(fake: FakeDeepSeek) -> None:
    async def scenario(sdk: Any) -> Tuple[Any, List[Any], List[str]]:
        completion = await sdk.chat.completions.create(
            model="deepseek-flash", messages=[{"role": "user", "content": PROMPT}]
        )
        stream = await sdk.chat.completions.create(
            model="deepseek-flash",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        models = [m.id async for m in sdk.models.list()]
        return completion, chunks, models

    completion, chunks, models = run(scenario, fake)
    assert completion.choices[0].message.content == FakeDeepSeek.answer_for(PROMPT)
    assert completion.choices[0].message.reasoning_content == FakeDeepSeek.reasoning_for(PROMPT)
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == FakeDeepSeek.answer_for(PROMPT)
    assert models[0] == "deepseek-flash"


def test_async_concurrent_calls_and_tools() -> None:
    async def scenario(sdk: Any) -> List[Any]:
        questions = [
            sdk.chat.completions.create(model="deepseek-flash", messages=[{"role": "user", "content": f"q{i}"}])
            for i in range(8)
        ]
        tool = sdk.chat.completions.create(
            model="deepseek-flash", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL]
        )
        return list(await asyncio.gather(*questions, tool))

    with FakeDeepSeek(latency=0.3) as slow:  # long enough for the calls to overlap
        *answers, tool = run(scenario, slow)
        peak = slow.stats.peak_concurrency
    assert [a.choices[0].message.content for a in answers] == [FakeDeepSeek.answer_for(f"q{i}") for i in range(8)]
    assert tool.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert peak >= 2


@pytest.mark.parametrize("status, cause, exception", [c for c in _status_cases() if c[1] == str(c[0])])
def test_async_error_statuses(fake: FakeDeepSeek, status: int, cause: str, exception: Type[BaseException]) -> None:
    fake.script(cause)

    async def scenario(sdk: Any) -> BaseException:
        try:
            await sdk.chat.completions.create(model="deepseek-flash", messages=[{"role": "user", "content": "Hi"}])
        except openai.APIStatusError as err:
            return err
        raise AssertionError("no error raised")

    error: Any = run(scenario, fake)
    assert type(error) is exception and error.status_code == status


# -- DeepSeek's documented examples, as the docs write them ---------------------------------------
# From api-docs.deepseek.com (thinking-mode guide and its API samples, multi-round conversation,
# function calling).  Only the client's api_key / base_url and the model id differ.


def test_docs_reasoning_streaming_loop_meets_the_same_first_chunk_as_the_api(fake: FakeDeepSeek) -> None:
    """The guide's streaming loop, verbatim: its ``else`` branch adds ``delta.content`` unguarded.

    The API's first thinking-mode chunk is ``{"role": "assistant", "content": null,
    "reasoning_content": ""}`` (captured), so that loop raises ``TypeError`` on chunk 0 against
    the API, and must do the same against a faithful fake.
    """
    client = openai.OpenAI(api_key="<DeepSeek API Key>", base_url=fake.base_url, max_retries=0, timeout=TIMEOUT)
    with client:
        messages = [{"role": "user", "content": "9.11 and 9.8, which is greater?"}]
        response = client.chat.completions.create(
            model="deepseek-v4-pro",
            messages=messages,
            stream=True,
            reasoning_effort="high",
            extra_body={"thinking": {"type": "enabled"}},
        )

        reasoning_content = ""
        content = ""

        seen = 0
        with pytest.raises(TypeError, match="NoneType"):
            for chunk in response:
                seen += 1
                if chunk.choices[0].delta.reasoning_content:
                    reasoning_content += chunk.choices[0].delta.reasoning_content
                else:
                    content += chunk.choices[0].delta.content
        response.close()
    assert seen == 1  # the first chunk, as against the API


def test_docs_reasoning_streaming_and_multi_round(fake: FakeDeepSeek) -> None:
    """The guide's two-turn streaming conversation, with the loop guarded as its users guard it."""
    client = openai.OpenAI(api_key="<DeepSeek API Key>", base_url=fake.base_url, max_retries=0, timeout=TIMEOUT)
    with client:
        # Turn 1
        messages = [{"role": "user", "content": "9.11 and 9.8, which is greater?"}]
        response = client.chat.completions.create(
            model="deepseek-v4-pro",
            messages=messages,
            stream=True,
            reasoning_effort="high",
            extra_body={"thinking": {"type": "enabled"}},
        )

        reasoning_content = ""
        content = ""

        for chunk in response:
            if chunk.choices[0].delta.reasoning_content:
                reasoning_content += chunk.choices[0].delta.reasoning_content
            elif chunk.choices[0].delta.content:
                content += chunk.choices[0].delta.content

        assert reasoning_content == FakeDeepSeek.reasoning_for("9.11 and 9.8, which is greater?")
        assert content == FakeDeepSeek.answer_for("9.11 and 9.8, which is greater?")

        # Turn 2
        # The reasoning_content will be ignored by the API
        messages.append({"role": "assistant", "reasoning_content": reasoning_content, "content": content})
        messages.append({"role": "user", "content": "How many Rs are there in the word 'strawberry'?"})
        response = client.chat.completions.create(
            model="deepseek-v4-pro",
            messages=messages,
            reasoning_effort="high",
            extra_body={"thinking": {"type": "enabled"}},
        )
        assert response.choices[0].message.content == FakeDeepSeek.answer_for(
            "How many Rs are there in the word 'strawberry'?"
        )
    assert len(fake.received) == 2 and fake.received[1].body["messages"][1]["content"] == content
    assert fake.received[1].body["messages"][1]["reasoning_content"] == reasoning_content


def test_docs_multi_round_conversation(fake: FakeDeepSeek) -> None:
    client = openai.OpenAI(api_key="<DeepSeek API Key>", base_url=fake.base_url, max_retries=0, timeout=TIMEOUT)
    with client:
        # Round 1
        messages = [{"role": "user", "content": "What's the highest mountain in the world?"}]
        response = client.chat.completions.create(model="deepseek-chat", messages=messages)

        messages.append(response.choices[0].message)
        print(f"Messages Round 1: {messages}")

        # Round 2
        messages.append({"role": "user", "content": "What is the second?"})
        response = client.chat.completions.create(model="deepseek-chat", messages=messages)

        messages.append(response.choices[0].message)
        print(f"Messages Round 2: {messages}")
    assert messages[1].content == FakeDeepSeek.answer_for("What's the highest mountain in the world?")
    assert messages[3].content == FakeDeepSeek.answer_for("What is the second?")
    sent = fake.received[1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"] and sent[1]["content"] == messages[1].content


def _docs_tool_call_example(base_url: str, send_reasoning_back: bool) -> List[Any]:
    """The thinking-mode tool-call sample: turns of sub-turns until the model stops calling tools."""
    from datetime import datetime

    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_date",
                "description": "Get the current date",
                "parameters": {"type": "object", "properties": {}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get weather of a location, the user should supply the location and date.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "location": {"type": "string", "description": "The city name"},
                        "date": {"type": "string", "description": "The date in format YYYY-mm-dd"},
                    },
                    "required": ["location", "date"],
                },
            },
        },
    ]

    # The mocked version of the tool calls
    def get_date_mock() -> str:
        return datetime.now().strftime("%Y-%m-%d")

    def get_weather_mock(location: str, date: str) -> str:
        return "Cloudy 7~13°C"

    TOOL_CALL_MAP = {"get_date": get_date_mock, "get_weather": get_weather_mock}

    def run_turn(turn: int, messages: List[Any]) -> None:
        sub_turn = 1
        while True:
            response = client.chat.completions.create(
                model="deepseek-v4-pro",
                messages=messages,
                tools=tools,
                reasoning_effort="high",
                extra_body={"thinking": {"type": "enabled"}},
            )
            message = response.choices[0].message
            if not send_reasoning_back:  # what a client that drops the field sends
                message = {k: v for k, v in message.model_dump().items() if k != "reasoning_content"}
            messages.append(message)
            reasoning_content = response.choices[0].message.reasoning_content
            content = response.choices[0].message.content
            tool_calls = response.choices[0].message.tool_calls
            print(f"Turn {turn}.{sub_turn}\n{reasoning_content=}\n{content=}\n{tool_calls=}")
            # If there is no tool calls, then the model should get a final answer and we need to stop the loop
            if tool_calls is None:
                break
            for tool in tool_calls:
                tool_function = TOOL_CALL_MAP[tool.function.name]
                tool_result = tool_function(**json.loads(tool.function.arguments))
                print(f"tool result for {tool.function.name}: {tool_result}\n")
                messages.append({"role": "tool", "tool_call_id": tool.id, "content": tool_result})
            sub_turn += 1

    client = openai.OpenAI(api_key=os.environ.get("DEEPSEEK_API_KEY", "sk-docs"), base_url=base_url, max_retries=0)
    with client:
        # The user starts a question
        turn = 1
        messages: List[Any] = [{"role": "user", "content": "How's the weather in Hangzhou Tomorrow"}]
        run_turn(turn, messages)
    return messages


def test_docs_tool_calls_with_reasoning_content_sent_back(fake: FakeDeepSeek) -> None:
    messages = _docs_tool_call_example(fake.base_url, send_reasoning_back=True)
    assistant, tool, final = messages[1], messages[2], messages[3]
    assert assistant.tool_calls[0].function.name == "get_date" and assistant.reasoning_content
    assert tool["role"] == "tool" and tool["tool_call_id"] == assistant.tool_calls[0].id
    assert final.tool_calls is None and final.content == FakeDeepSeek.answer_for(
        "How's the weather in Hangzhou Tomorrow"
    )
    sent_back = fake.received[1].body["messages"][1]
    assert sent_back["reasoning_content"] == assistant.reasoning_content and sent_back["tool_calls"]


def test_docs_tool_calls_without_reasoning_content_get_the_apis_400(fake: FakeDeepSeek) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _docs_tool_call_example(fake.base_url, send_reasoning_back=False)
    assert caught.value.status_code == 400
    assert "`reasoning_content` in the thinking mode must be passed back" in caught.value.body["message"]


# -- every chunk and body kind, against the SDK's types and our shape table ------------------------


def _raw_events(fake: FakeDeepSeek, **body: Any) -> List[Dict[str, Any]]:
    import requests

    body.setdefault("model", "deepseek-flash")
    body.setdefault("messages", [{"role": "user", "content": "Weather?"}])
    with requests.post(
        fake.base_url + "/chat/completions",
        json=dict(body, stream=True),
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=TIMEOUT,
        stream=True,
    ) as response:
        lines = [line[6:] for line in response.iter_lines() if line.startswith(b"data: ")]
    assert lines[-1] == b"[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def _kind(delta: Dict[str, Any], shapes_table: Dict[str, Tuple[Dict[str, Any], str]]) -> str:
    """The name of the shape in the table that ``delta`` has; shapes without slots are tried first."""
    ordered = sorted(shapes_table.items(), key=lambda item: bool(shapes.slot_names(item[1][0])))
    for kind, (shape, _) in ordered:
        if _like(shape, delta):
            return kind
    raise AssertionError(f"no shape in _shapes.DELTAS for {delta}")


def _like(shape: Any, value: Any) -> bool:
    if isinstance(shape, str) and shape.startswith("\x00"):
        return True
    if isinstance(shape, dict):
        return isinstance(value, dict) and set(shape) == set(value) and all(_like(shape[k], value[k]) for k in shape)
    if isinstance(shape, list):
        return isinstance(value, list) and len(shape) == len(value) and all(map(_like, shape, value))
    return bool(shape == value)


@pytest.mark.parametrize(
    "thinking, tools, expected",
    [
        (True, False, ["first_thinking", "reasoning", "content_thinking", "finish_thinking"]),
        (False, False, ["first", "content", "finish"]),
        (
            True,
            True,
            ["first_thinking", "reasoning", "tool_call_start_thinking", "tool_call_arguments", "finish_thinking"],
        ),
        (False, True, ["first", "tool_call_start", "tool_call_arguments", "finish"]),
    ],
)
def test_every_chunk_kind_has_its_documented_shape(
    fake: FakeDeepSeek, thinking: bool, tools: bool, expected: List[str]
) -> None:
    body: Dict[str, Any] = {
        "thinking": {"type": "enabled" if thinking else "disabled"},
        "stream_options": {"include_usage": True},
    }
    if tools:
        body["tools"] = [WEATHER_TOOL]
    events = _raw_events(fake, **body)
    *chunks, usage_chunk = events
    for event in events:
        openai.types.chat.ChatCompletionChunk.model_validate(event)
    assert _like(shapes.USAGE_CHUNK, usage_chunk) and usage_chunk["usage"]["completion_tokens"] > 0
    kinds: List[str] = []
    for chunk in chunks:
        assert _like(shapes.CHAT_CHUNK_WITH_USAGE, chunk), chunk
        kind = _kind(chunk["choices"][0]["delta"], shapes.DELTAS)
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
        assert (chunk["choices"][0]["finish_reason"] is not None) == kind.startswith("finish")
    assert kinds == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == ("tool_calls" if tools else "stop")


def test_non_streamed_bodies_have_their_documented_shapes(client: Any, beta: Any) -> None:
    chat = client.chat.completions.with_raw_response.create(
        model="deepseek-flash", messages=[{"role": "user", "content": "Hi"}]
    ).http_response.json()
    assert _like(shapes.CHAT_COMPLETION, chat)
    fim = beta.completions.with_raw_response.create(model="deepseek-flash", prompt="x").http_response.json()
    assert _like(shapes.TEXT_COMPLETION, fim)
    openai.types.Completion.model_validate(fim)
    models = client.models.with_raw_response.list().http_response.json()
    assert _like(shapes.MODEL_LIST, models) and all(_like(shapes.MODEL, m) for m in models["data"])


# -- litellm, through its DeepSeek provider ---------------------------------------------------------


#: Warnings litellm's own code raises while it runs (its models, on first use); not ours to fix.
litellm_warnings = pytest.mark.filterwarnings(
    "ignore:Item.* the `ReadOnly` qualifier:UserWarning",
    "ignore:Accessing the 'model_(computed_)?fields' attribute on the instance is deprecated:DeprecationWarning",
)


@pytest.fixture(scope="module")
def litellm() -> Any:
    """litellm, imported offline: its model-cost map is read from the package, not fetched."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before the import, which reads it
    # Its logging runs on a pool of non-daemon threads (100 by default), started as calls come:
    # one thread, started here, keeps every test's thread count as it was.
    os.environ["LOGGING_EXECUTOR_MAX_THREADS"] = "1"
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    real = socket.getaddrinfo
    tried: List[str] = []

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in LOOPBACK:
            tried.append(str(host))
            raise OSError(f"litellm import: no traffic beyond loopback (tried {host!r})")
        return real(host, *args, **kwargs)

    socket.getaddrinfo = guarded
    try:
        with warnings.catch_warnings():  # its import-time warnings are its own, not this suite's
            warnings.simplefilter("ignore")
            module = pytest.importorskip("litellm", reason="litellm is a test dependency: pip install -e '.[test]'")
    except Exception as err:  # a broken install must not fail the suite: say so and skip
        pytest.skip(f"litellm cannot be imported here: {err!r}")
    finally:
        socket.getaddrinfo = real
    assert not tried, f"importing litellm tried to reach {tried}"
    module.telemetry = False
    from litellm.litellm_core_utils.thread_pool_executor import executor

    executor.submit(lambda: None).result(timeout=TIMEOUT)
    return module


@litellm_warnings
def test_litellm_completion(litellm: Any, fake: FakeDeepSeek) -> None:
    response = litellm.completion(
        model="deepseek/deepseek-chat",
        messages=[{"role": "user", "content": PROMPT}],
        api_base=fake.base_url,
        api_key=KEY,
        timeout=TIMEOUT,
        num_retries=0,
    )
    assert response.choices[0].message.content == FakeDeepSeek.answer_for(PROMPT)
    assert response.usage.total_tokens > 0
    assert fake.received[-1].path in ("/chat/completions", "/v1/chat/completions")


@litellm_warnings
def test_litellm_reasoning(litellm: Any, fake: FakeDeepSeek) -> None:
    response = litellm.completion(
        model="deepseek/deepseek-reasoner",
        messages=[{"role": "user", "content": PROMPT}],
        api_base=fake.base_url,
        api_key=KEY,
        timeout=TIMEOUT,
        num_retries=0,
    )
    assert response.choices[0].message.reasoning_content == FakeDeepSeek.reasoning_for(PROMPT)
    assert response.choices[0].message.content == FakeDeepSeek.answer_for(PROMPT)


@litellm_warnings
def test_litellm_streaming(litellm: Any, fake: FakeDeepSeek) -> None:
    stream = litellm.completion(
        model="deepseek/deepseek-reasoner",
        messages=[{"role": "user", "content": PROMPT}],
        api_base=fake.base_url,
        api_key=KEY,
        stream=True,
        stream_options={"include_usage": True},
        timeout=TIMEOUT,
        num_retries=0,
    )
    content: List[str] = []
    reasoning: List[str] = []
    usage = None
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            content.append(delta.content or "")
            reasoning.append(getattr(delta, "reasoning_content", None) or "")
        usage = getattr(chunk, "usage", None) or usage
    assert "".join(content) == FakeDeepSeek.answer_for(PROMPT)
    assert "".join(reasoning) == FakeDeepSeek.reasoning_for(PROMPT)
    assert usage is not None and usage.completion_tokens > 0


@litellm_warnings
def test_litellm_maps_a_429(litellm: Any, fake: FakeDeepSeek) -> None:
    fake.script("429")
    with pytest.raises(litellm.RateLimitError):
        litellm.completion(
            model="deepseek/deepseek-chat",
            messages=[{"role": "user", "content": "Hi"}],
            api_base=fake.base_url,
            api_key=KEY,
            timeout=TIMEOUT,
            num_retries=0,
            max_retries=0,
        )
    assert fake.stats.by_status == {429: 1}


# -- curl ------------------------------------------------------------------------------------------


def test_curl_head_then_get_on_one_connection_and_through_a_proxy(fake: FakeDeepSeek) -> None:
    """curl: a HEAD then a GET on one kept-alive connection, and, told the fake is its proxy,
    absolute-form targets (``GET http://host/v1/models``), which must be served, not 404.

    (curl tolerates a body after a HEAD; the raw-socket tests in test_fake_server.py catch that.)
    """
    import shutil
    import subprocess

    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    auth = ["-H", f"Authorization: Bearer {KEY}"]
    both = subprocess.run(
        [
            curl,
            "-sS",
            "--max-time",
            "10",
            "-I",
            *auth,
            fake.base_url + "/models",
            "--next",
            "-sS",
            "--max-time",
            "10",
            *auth,
            fake.base_url + "/user/balance",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert both.returncode == 0, both.stderr
    head, _, body = both.stdout.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 200") and "Date: " in head
    assert json.loads(body)["is_available"] is True
    assert fake.stats.connections_opened == 1
    proxied = subprocess.run(
        [curl, "-sS", "--max-time", "10", "--proxy", fake.base_url, *auth, fake.base_url + "/v1/models"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert proxied.returncode == 0 and json.loads(proxied.stdout)["data"][0]["id"] == "deepseek-flash"
    assert [r.path for r in fake.received] == ["/models", "/user/balance", "/v1/models"]
