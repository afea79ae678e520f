"""Chat messages and request bodies: checked before anything is sent.

Bad input fails here with a TypeError or ValueError that names the problem, so a
batch item with broken messages never reaches the network.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional

from .params import Messages, merge_extra_body

__all__ = ["Messages", "build_chat_body", "encode_body", "header_problem", "normalize_messages"]

_ROLES = frozenset({"system", "user", "assistant", "tool"})


def normalize_messages(messages: Messages) -> List[Mapping[str, Any]]:
    """Check ``messages`` and return them as a list of message dicts.

    A str becomes one user message. Raises TypeError/ValueError naming the problem,
    so bad input fails before anything is sent.
    """
    if isinstance(messages, str):
        if not messages:
            raise ValueError("messages is an empty string; give the prompt text")
        return [{"role": "user", "content": messages}]
    if isinstance(messages, Mapping) or not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages must be a str or a list of message dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is an empty list; give at least one message")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{index}] must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if role is None:
            raise ValueError(f"messages[{index}] has no 'role' (one of {', '.join(sorted(_ROLES))})")
        if role not in _ROLES:
            raise ValueError(f"messages[{index}] has role {role!r}; expected one of {', '.join(sorted(_ROLES))}")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise TypeError(f"messages[{index}]['content'] must be a str, got {type(content).__name__}")
        if content is None and role != "assistant":
            raise ValueError(f"messages[{index}] ({role}) has no 'content'")
    return list(messages)


def _check_number(params: Mapping[str, Any], name: str, low: float, high: float) -> None:
    value = params.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value!r}")


def build_chat_body(messages: Messages, model: str, params: Mapping[str, Any]) -> Dict[str, Any]:
    """The JSON body of a chat request, checked; ``thinking=True/False`` becomes DeepSeek's switch.

    ``extra_body``'s fields are merged in last, unchecked (see :mod:`deepseek_pool.params`).
    """
    if not isinstance(model, str) or not model:
        raise TypeError(f"model must be a non-empty str, got {model!r}")
    body: Dict[str, Any] = {"model": model, "messages": normalize_messages(messages)}
    if params:
        body.update(params)
        thinking = params.get("thinking")
        if isinstance(thinking, bool):
            body["thinking"] = {"type": "enabled" if thinking else "disabled"}
        elif thinking is None and "thinking" in params:
            del body["thinking"]
        max_tokens = params.get("max_tokens")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0
        ):
            raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
        _check_number(params, "temperature", 0, 2)
        _check_number(params, "top_p", 0, 1)
        _check_number(params, "frequency_penalty", -2, 2)
        _check_number(params, "presence_penalty", -2, 2)
        if "extra_body" in params:
            merge_extra_body(body)
    return body


def encode_body(body: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise TypeError(f"the request is not JSON serializable: {err}") from None


def header_problem(value: str, *, token: bool = False) -> Optional[str]:
    """What keeps ``value`` from being sent as an HTTP header value, or None.

    http.client encodes header values as Latin-1 and refuses CR/LF; an error from deep
    inside it would quote the whole value (an API key included), so values are checked
    once, up front, and the message names the problem and its position, never the value.
    With ``token`` (an API key) only visible ASCII is allowed.
    """
    if token and not value:
        return "is empty"
    for position, char in enumerate(value):
        code = ord(char)
        if token and not 0x21 <= code <= 0x7E:
            kind = (
                "a space"
                if char == " "
                else "a control character"
                if code < 0x20 or code == 0x7F
                else "a non-ASCII character"
            )
            return f"contains {kind} (U+{code:04X}) at position {position}"
        if code > 0xFF:
            return f"contains a character that is not Latin-1 (U+{code:04X}) at position {position}"
        if (code < 0x20 and char != "\t") or code == 0x7F:
            return f"contains a control character (U+{code:04X}) at position {position}"
    return None
