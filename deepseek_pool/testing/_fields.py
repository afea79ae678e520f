"""A request's fields checked as DeepSeek checks them, with its statuses and wording.

Each ``read_*`` function takes the request body, returns the field's value as the plan
needs it, or raises :class:`ApiError` (400 or 422) as the service would.
"""

from __future__ import annotations

import json
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


def text_of(content: Any) -> str:
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


def bad_type(where: str, value: Any, expected: str) -> ApiError:
    return ApiError(422, f"{_DESERIALIZE}{where}invalid type: {_type_name(value)}, expected {expected}")


def missing(where: str, name: str) -> ApiError:
    return ApiError(422, f"{_DESERIALIZE}{where}missing field `{name}`")


def check_number(body: Dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(422, f"Invalid {name} value, the valid range of {name} is [{low:g}, {high:g}]", param=name)


def read_max_tokens(body: Dict[str, Any], high: int) -> Optional[int]:
    value = body.get("max_tokens")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ApiError(
            422, f"Invalid max_tokens value, the valid range of max_tokens is [1, {high}]", param="max_tokens"
        )
    return value


def read_model(body: Dict[str, Any], models: FrozenSet[str], ordered: Sequence[str]) -> str:
    model = body.get("model")
    if model is None:
        raise missing("", "model")
    if not isinstance(model, str):
        raise bad_type("model: ", model, "a string")
    if model not in models:
        raise ApiError(
            400,
            f"Model Not Exist: the model `{model}` does not exist. Valid models: {', '.join(ordered)}",
            param="model",
        )
    return ALIASES.get(model, model)


def read_stream_flags(body: Dict[str, Any]) -> Tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_type("stream: ", stream, "a boolean")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise bad_type("stream_options: ", options, "struct StreamOptions")
        flag = options.get("include_usage", False)
        if not isinstance(flag, bool):
            raise bad_type("stream_options.include_usage: ", flag, "a boolean")
        include_usage = flag
    return bool(stream), include_usage


def read_logprobs(body: Dict[str, Any]) -> Optional[int]:
    """``logprobs`` / ``top_logprobs``: None when off, else the number of alternatives per token."""
    on = body.get("logprobs")
    if on is not None and not isinstance(on, bool):
        raise bad_type("logprobs: ", on, "a boolean")
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


def read_messages(body: Dict[str, Any]) -> List[Dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise missing("", "messages")
    if not isinstance(messages, list):
        raise bad_type("messages: ", messages, "a sequence")
    if not messages:
        raise ApiError(400, "Empty input messages: `messages` must contain at least one message", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]: "
        if not isinstance(message, dict):
            raise bad_type(where, message, "struct Message")
        role = message.get("role")
        if role is None:
            raise missing(where, "role")
        if role not in ROLES:
            raise ApiError(
                422,
                f"{_DESERIALIZE}{where}unknown variant `{role}`, expected one of `system`, `user`, `assistant`, `tool`",
                param="messages",
            )
        content = message.get("content")
        if content is None:
            if role != "assistant" and "content" not in message:
                raise missing(where, "content")
        elif not isinstance(content, (str, list)):
            raise bad_type(where + "content: ", content, "a string or a sequence of parts")
    return messages


def read_tools(body: Dict[str, Any]) -> List[Dict[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad_type("tools: ", tools, "a sequence")
    if len(tools) > MAX_TOOLS:
        raise ApiError(
            400, f"Too many tools: at most {MAX_TOOLS} functions are supported, got {len(tools)}", param="tools"
        )
    for i, tool in enumerate(tools):
        where = f"tools[{i}]: "
        if not isinstance(tool, dict):
            raise bad_type(where, tool, "struct Tool")
        function = tool.get("function")
        if function is None:
            raise missing(where, "function")
        if not isinstance(function, dict):
            raise bad_type(where + "function: ", function, "struct Function")
        if not isinstance(function.get("name"), str):
            raise missing(where + "function: ", "name")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise bad_type(where + "function.parameters: ", parameters, "a JSON schema object")
    return tools


def read_tool_choice(body: Dict[str, Any], tools: List[Dict[str, Any]]) -> Tuple[Optional[Dict[str, Any]], bool]:
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


def read_stop(body: Dict[str, Any]) -> List[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad_type("stop: ", stop, "a string or a sequence of strings")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise ApiError(400, f"Too many stop sequences: at most {MAX_STOP_SEQUENCES} are supported", param="stop")
    return stop


def read_thinking(body: Dict[str, Any], requested_model: str) -> bool:
    thinking = body.get("thinking")
    if thinking is None:
        on = requested_model not in THINKING_OFF_BY_DEFAULT
    elif not isinstance(thinking, dict):
        raise bad_type("thinking: ", thinking, "struct Thinking")
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


def read_json_mode(body: Dict[str, Any], messages: List[Dict[str, Any]]) -> bool:
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
    if not any("json" in text_of(m.get("content")).lower() for m in messages):
        raise ApiError(
            400,
            "Prompt must contain the word 'json' in some form to use 'response_format' of type 'json_object'.",
            param="response_format",
        )
    return True
