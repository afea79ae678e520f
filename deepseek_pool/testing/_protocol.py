"""DeepSeek's chat and FIM protocol as the fake speaks it.

Pure functions, no sockets: request validation (with DeepSeek's statuses and wording),
the deterministic answers, response bodies and streamed events.  Keeping this apart from the
HTTP plumbing lets the server stay small and lets the answers be checked without a socket.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

# Old ids are rewritten to the canonical one in the response ``model`` field, as the service does.
from deepseek_pool.models import ALIASES
from deepseek_pool.testing._shapes import ERROR, dumps, fill_shape

#: Roles a chat message may have.
ROLES: Tuple[str, ...] = ("system", "user", "assistant", "tool")
#: Models whose thinking mode is off unless ``thinking`` turns it on.
THINKING_OFF_BY_DEFAULT: FrozenSet[str] = frozenset({"deepseek-chat"})
MAX_TOOLS = 128
MAX_STOP_SEQUENCES = 16
MAX_CONTEXT_TOKENS = 1_000_000
MAX_OUTPUT_TOKENS = 393_216
MAX_FIM_TOKENS = 4096
REASONING_EFFORTS: FrozenSet[str] = frozenset({"low", "medium", "high", "max"})
#: ``top_logprobs`` is "an integer between 0 and 20" (API doc).
MAX_TOP_LOGPROBS = 20
_DESERIALIZE = "Failed to deserialize the JSON body into the target type: "


class ApiError(Exception):
    """A request the service refuses; carries what the error body needs.

    :param status: HTTP status (400, 422, ...).
    :param message: DeepSeek-style human message.
    :param param: the offending field, when there is one.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: Optional[str] = None,
        type_: str = "invalid_request_error",
        code: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_
        self.code = code


def error_body(
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str = "invalid_request_error",
    param: Optional[str] = None,
) -> bytes:
    """Serialize DeepSeek's error shape ``{"error": {"message", "type", "param", "code"}}``."""
    return dumps(fill_shape(ERROR, message=message, type=type_, param=param, code=code)).encode()


def tokens(text: str) -> int:
    """Estimate tokens as ceil(characters / 4): cheap, deterministic, roughly right for English."""
    return (len(text) + 3) // 4


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


def answer_for(prompt: str) -> str:
    """The content the fake answers for a last user message ``prompt``."""
    echo = prompt if len(prompt) <= 80 else prompt[:77] + "..."
    return f"FakeDeepSeek answer {_digest(prompt)}: you said {echo!r}."


def reasoning_for(prompt: str) -> str:
    """The ``reasoning_content`` the fake thinks for ``prompt`` in thinking mode."""
    return (
        f"The user wrote {len(prompt)} characters (digest {_digest(prompt)}). "
        "I will answer with the deterministic fake reply."
    )


def fim_answer_for(prompt: str, suffix: Optional[str] = None) -> str:
    """The text the fake fills in between ``prompt`` and ``suffix`` (FIM)."""
    return f" fill_{_digest(prompt + chr(0) + (suffix or ''))}() "


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, (int, float)):
        return f"number `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    return "sequence" if isinstance(value, list) else "map"


def _bad_type(where: str, value: Any, expected: str) -> ApiError:
    return ApiError(422, f"{_DESERIALIZE}{where}invalid type: {_type_name(value)}, expected {expected}")


def _missing(where: str, name: str) -> ApiError:
    return ApiError(422, f"{_DESERIALIZE}{where}missing field `{name}`")


@dataclass
class Plan:
    """What the fake will answer to one valid request (chat or FIM)."""

    kind: str  # "chat" or "fim"
    model: str  # canonical id for the response
    content: str
    reasoning: Optional[str]  # None: thinking off
    tool_calls: List[Dict[str, Any]]
    finish_reason: str
    prompt_tokens: int
    stream: bool
    include_usage: bool
    cache_keys: List[int] = field(default_factory=list)  # cumulative prefix hashes
    cache_tokens: List[int] = field(default_factory=list)  # tokens up to each prefix
    logprobs: Optional[int] = None  # None: no logprobs; else how many top_logprobs per token

    def completion_tokens(self) -> Tuple[int, int]:
        """Return (completion tokens, reasoning tokens)."""
        reasoning = tokens(self.reasoning) if self.reasoning else 0
        calls = sum(tokens(c["function"]["name"] + c["function"]["arguments"]) for c in self.tool_calls)
        return reasoning + tokens(self.content) + calls, reasoning

    def usage(self, cache_hit: int) -> Dict[str, Any]:
        """Build the ``usage`` object; ``cache_hit`` comes from the server's prefix cache."""
        completion, reasoning = self.completion_tokens()
        usage: Dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cache_hit},
            "prompt_cache_hit_tokens": cache_hit,
            "prompt_cache_miss_tokens": self.prompt_tokens - cache_hit,
        }
        if self.reasoning is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return usage


def cut_short(plan: Plan) -> Plan:
    """Turn a plan into the ``insufficient_system_resource`` answer: half the text, no tools."""
    return replace(
        plan,
        content=plan.content[: len(plan.content) // 2],
        tool_calls=[],
        finish_reason="insufficient_system_resource",
    )


def _check_number(body: Dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(422, f"Invalid {name} value, the valid range of {name} is [{low:g}, {high:g}]", param=name)


def _max_tokens(body: Dict[str, Any], high: int) -> Optional[int]:
    value = body.get("max_tokens")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ApiError(
            422, f"Invalid max_tokens value, the valid range of max_tokens is [1, {high}]", param="max_tokens"
        )
    return value


def _model(body: Dict[str, Any], models: FrozenSet[str], ordered: Sequence[str]) -> str:
    model = body.get("model")
    if model is None:
        raise _missing("", "model")
    if not isinstance(model, str):
        raise _bad_type("model: ", model, "a string")
    if model not in models:
        raise ApiError(
            400,
            f"Model Not Exist: the model `{model}` does not exist. Valid models: {', '.join(ordered)}",
            param="model",
        )
    return ALIASES.get(model, model)


def _stream_flags(body: Dict[str, Any]) -> Tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad_type("stream: ", stream, "a boolean")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise _bad_type("stream_options: ", options, "struct StreamOptions")
        flag = options.get("include_usage", False)
        if not isinstance(flag, bool):
            raise _bad_type("stream_options.include_usage: ", flag, "a boolean")
        include_usage = flag
    return bool(stream), include_usage


def _logprobs(body: Dict[str, Any]) -> Optional[int]:
    """``logprobs`` / ``top_logprobs``: None when off, else the number of alternatives per token."""
    on = body.get("logprobs")
    if on is not None and not isinstance(on, bool):
        raise _bad_type("logprobs: ", on, "a boolean")
    top = body.get("top_logprobs")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ApiError(
                422,
                f"Invalid top_logprobs value, the valid range of top_logprobs is [0, {MAX_TOP_LOGPROBS}]",
                param="top_logprobs",
            )
        if not on:
            raise ApiError(400, "`logprobs` must be true when `top_logprobs` is set", param="top_logprobs")
    return (top or 0) if on else None


def _messages(body: Dict[str, Any]) -> List[Dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise _missing("", "messages")
    if not isinstance(messages, list):
        raise _bad_type("messages: ", messages, "a sequence")
    if not messages:
        raise ApiError(400, "Empty input messages: `messages` must contain at least one message", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]: "
        if not isinstance(message, dict):
            raise _bad_type(where, message, "struct Message")
        role = message.get("role")
        if role is None:
            raise _missing(where, "role")
        if role not in ROLES:
            raise ApiError(
                422,
                f"{_DESERIALIZE}{where}unknown variant `{role}`, expected one of `system`, `user`, `assistant`, `tool`",
                param="messages",
            )
        content = message.get("content")
        if content is None:
            if role != "assistant" and "content" not in message:
                raise _missing(where, "content")
        elif not isinstance(content, (str, list)):
            raise _bad_type(where + "content: ", content, "a string or a sequence of parts")
    return messages


def _tools(body: Dict[str, Any]) -> List[Dict[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad_type("tools: ", tools, "a sequence")
    if len(tools) > MAX_TOOLS:
        raise ApiError(
            400, f"Too many tools: at most {MAX_TOOLS} functions are supported, got {len(tools)}", param="tools"
        )
    for i, tool in enumerate(tools):
        where = f"tools[{i}]: "
        if not isinstance(tool, dict):
            raise _bad_type(where, tool, "struct Tool")
        function = tool.get("function")
        if function is None:
            raise _missing(where, "function")
        if not isinstance(function, dict):
            raise _bad_type(where + "function: ", function, "struct Function")
        if not isinstance(function.get("name"), str):
            raise _missing(where + "function: ", "name")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _bad_type(where + "function.parameters: ", parameters, "a JSON schema object")
    return tools


def _chosen_tool(body: Dict[str, Any], tools: List[Dict[str, Any]]) -> Tuple[Optional[Dict[str, Any]], bool]:
    """Return (tool to call, whether a call is forced) from ``tool_choice``."""
    choice = body.get("tool_choice")
    if choice is None or choice == "auto":
        return (tools[0] if tools else None), False
    if choice == "none":
        return None, False
    if choice == "required":
        if not tools:
            raise ApiError(400, "tool_choice `required` needs at least one tool", param="tool_choice")
        return tools[0], True
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        for tool in tools:
            if tool["function"]["name"] == name:
                return tool, True
        raise ApiError(400, f"tool_choice names function `{name}`, which is not in `tools`", param="tool_choice")
    raise ApiError(
        422,
        f"{_DESERIALIZE}tool_choice: unknown variant {json.dumps(choice)}, "
        "expected `none`, `auto`, `required` or a named function",
        param="tool_choice",
    )


def _example_value(schema: Any, prompt: str) -> Any:
    if not isinstance(schema, dict):
        return None
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if kind == "string":
        return prompt[:40]
    if kind == "integer":
        return len(prompt)
    if kind == "number":
        return len(prompt) / 2
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return None


def tool_call_for(tool: Dict[str, Any], prompt: str) -> Dict[str, Any]:
    """The deterministic call the fake makes to ``tool`` for ``prompt``: one value per property."""
    function = tool["function"]
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties")
    args = {k: _example_value(v, prompt) for k, v in properties.items()} if isinstance(properties, dict) else {}
    name: str = function["name"]
    return {
        "id": f"call_0_{_digest(name + chr(0) + prompt)}{_digest(prompt)}",
        "type": "function",
        "function": {"name": name, "arguments": dumps(args)},
    }


def _stop(body: Dict[str, Any]) -> List[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _bad_type("stop: ", stop, "a string or a sequence of strings")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise ApiError(400, f"Too many stop sequences: at most {MAX_STOP_SEQUENCES} are supported", param="stop")
    return stop


def _thinking(body: Dict[str, Any], requested_model: str) -> bool:
    thinking = body.get("thinking")
    if thinking is None:
        on = requested_model not in THINKING_OFF_BY_DEFAULT
    elif not isinstance(thinking, dict):
        raise _bad_type("thinking: ", thinking, "struct Thinking")
    else:
        kind = thinking.get("type")
        if kind not in ("enabled", "disabled"):
            raise ApiError(
                422,
                f"{_DESERIALIZE}thinking.type: unknown variant {json.dumps(kind)}, expected `enabled` or `disabled`",
                param="thinking",
            )
        on = kind == "enabled"
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise ApiError(
            422,
            f"{_DESERIALIZE}reasoning_effort: unknown variant {json.dumps(effort)}, "
            "expected one of `low`, `medium`, `high`, `max`",
            param="reasoning_effort",
        )
    return on


def _json_mode(body: Dict[str, Any], messages: List[Dict[str, Any]]) -> bool:
    response_format = body.get("response_format")
    if response_format is None:
        return False
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("text", "json_object"):
        raise ApiError(
            422,
            f'{_DESERIALIZE}response_format: expected `{{"type": "text"}}` or `{{"type": "json_object"}}`',
            param="response_format",
        )
    if kind == "text":
        return False
    if not any("json" in _text(m.get("content")).lower() for m in messages):
        raise ApiError(
            400,
            "Prompt must contain the word 'json' in some form to use 'response_format' of type 'json_object'.",
            param="response_format",
        )
    return True


def _budget(
    plan_content: str, reasoning: Optional[str], max_tokens: Optional[int], stops: List[str]
) -> Tuple[str, Optional[str], str]:
    """Apply ``stop`` then ``max_tokens`` (which covers reasoning and answer together)."""
    content = plan_content
    for stop in stops:
        at = content.find(stop) if stop else -1
        if at >= 0:
            content = content[:at]
    if max_tokens is None:
        return content, reasoning, "stop"
    if reasoning is not None and tokens(reasoning) >= max_tokens:
        return "", reasoning[: max_tokens * 4], "length"
    left = max_tokens - (tokens(reasoning) if reasoning is not None else 0)
    if tokens(content) > left:
        return content[: left * 4], reasoning, "length"
    return content, reasoning, "stop"


def plan_chat(body: Any, models: FrozenSet[str], ordered_models: Sequence[str], *, beta: bool) -> Plan:
    """Validate a chat request like DeepSeek does and decide the answer.

    :raises ApiError: 400 or 422 with DeepSeek-like messages.
    """
    if not isinstance(body, dict):
        raise _bad_type("", body, "struct ChatCompletionRequest")
    model = _model(body, models, ordered_models)
    messages = _messages(body)
    _check_number(body, "temperature", 0, 2)
    _check_number(body, "top_p", 0, 1)
    _check_number(body, "frequency_penalty", -2, 2)
    _check_number(body, "presence_penalty", -2, 2)
    max_tokens = _max_tokens(body, MAX_OUTPUT_TOKENS)
    stream, include_usage = _stream_flags(body)
    stops = _stop(body)
    tools = _tools(body)
    tool, forced = _chosen_tool(body, tools)
    thinking = _thinking(body, body["model"])
    json_mode = _json_mode(body, messages)
    logprobs = _logprobs(body)

    last = messages[-1]
    if last.get("prefix") is True and last["role"] == "assistant" and not beta:
        raise ApiError(
            400,
            "Prefix completion (an assistant message with `prefix: true`) is only "
            "available on the beta endpoint, base_url https://api.deepseek.com/beta",
            param="messages",
        )
    prompt = ""
    prefix_hash = 0
    cache_keys: List[int] = []
    cache_tokens: List[int] = []
    total = 0
    for i, message in enumerate(messages):
        role = message["role"]
        text = _text(message.get("content"))
        if role == "user":
            prompt = text
        calls = message.get("tool_calls")
        if role == "assistant" and calls:
            if thinking and not isinstance(message.get("reasoning_content"), str):
                # The API's own first sentence (as users report it), then where it is missing.
                raise ApiError(
                    400,
                    "The `reasoning_content` in the thinking mode must be passed back to the API. "
                    f"Missing in the assistant message with `tool_calls` at messages[{i}].",
                    param="messages",
                )
            text += dumps(calls)
        total += 4 + tokens(text)
        prefix_hash = hash((prefix_hash, role, text))
        cache_keys.append(prefix_hash)
        cache_tokens.append(total)
    if tools:
        total += tokens(dumps(tools))
    if total > MAX_CONTEXT_TOKENS:
        raise ApiError(
            400,
            f"This model's maximum context length is {MAX_CONTEXT_TOKENS} tokens. "
            f"However, you requested {total} tokens. Please reduce the length of "
            "the messages.",
            param="messages",
        )

    reasoning = reasoning_for(prompt) if thinking else None
    tool_calls: List[Dict[str, Any]] = []
    if tool is not None and (forced or last["role"] == "user"):
        tool_calls = [tool_call_for(tool, prompt)]
        content, reasoning, finish = _budget("", reasoning, max_tokens, [])
        if finish == "stop":
            finish = "tool_calls"
        else:
            tool_calls = []
    else:
        answer = answer_for(prompt)
        if json_mode:
            answer = dumps({"answer": answer})
        content, reasoning, finish = _budget(answer, reasoning, max_tokens, stops)
    return Plan(
        "chat",
        model,
        content,
        reasoning,
        tool_calls,
        finish,
        total,
        stream,
        include_usage,
        cache_keys,
        cache_tokens,
        logprobs,
    )


def plan_fim(body: Any, models: FrozenSet[str], ordered_models: Sequence[str]) -> Plan:
    """Validate a FIM (``/beta/completions``) request and decide the text.

    :raises ApiError: 400 or 422 with DeepSeek-like messages.
    """
    if not isinstance(body, dict):
        raise _bad_type("", body, "struct CompletionRequest")
    model = _model(body, models, ordered_models)
    prompt = body.get("prompt")
    if prompt is None:
        raise _missing("", "prompt")
    if not isinstance(prompt, str):
        raise _bad_type("prompt: ", prompt, "a string")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise _bad_type("suffix: ", suffix, "a string")
    _check_number(body, "temperature", 0, 2)
    _check_number(body, "top_p", 0, 1)
    _check_number(body, "frequency_penalty", -2, 2)
    _check_number(body, "presence_penalty", -2, 2)
    max_tokens = _max_tokens(body, MAX_FIM_TOKENS)
    stream, include_usage = _stream_flags(body)
    stops = _stop(body)
    prompt_tokens = tokens(prompt) + tokens(suffix or "")
    text, _, finish = _budget(fim_answer_for(prompt, suffix), None, max_tokens, stops)
    key = hash(("fim", prompt))
    return Plan("fim", model, text, None, [], finish, prompt_tokens, stream, include_usage, [key], [tokens(prompt)])
