"""What a call's span and metrics say, as plain values: no OpenTelemetry here.

Names follow OpenTelemetry's GenAI semantic conventions (still marked development).
The conventions renamed the client metrics in 2026; like the official instrumentations,
the previous names stay the default and the new ones are used when the user sets
``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental``. Message content is recorded
only when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` asks for it on spans.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

__all__ = [
    "CAPTURE_CONTENT_ENV",
    "PROVIDER",
    "STABILITY_ENV",
    "capture_content_from_env",
    "input_content",
    "latest_from_env",
    "output_content",
    "request_attributes",
    "response_attributes",
    "server_of",
]

#: ``gen_ai.provider.name`` (a well-known value of the conventions).
PROVIDER = "deepseek"
#: OpenTelemetry's switch between previous and new semantic convention names.
STABILITY_ENV = "OTEL_SEMCONV_STABILITY_OPT_IN"
#: The value of :data:`STABILITY_ENV` that selects the new GenAI names.
LATEST = "gen_ai_latest_experimental"
#: OpenTelemetry's own switch for recording prompts and answers (off unless set).
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
#: Values of :data:`CAPTURE_CONTENT_ENV` that put content on spans (``true`` is the older spelling).
_CAPTURE_ON_SPANS = frozenset({"span_only", "span_and_event", "true"})

#: Request fields -> their span attributes, copied as sent when they are plain values.
_REQUEST_FIELDS = (
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("reasoning_effort", "gen_ai.request.reasoning.level"),
)

_servers: Dict[str, Tuple[str, int]] = {}


def latest_from_env() -> bool:
    """Whether the user opted in to the 2026 GenAI names (a comma-separated list may hold others)."""
    values = os.environ.get(STABILITY_ENV, "")
    return LATEST in (value.strip() for value in values.split(","))


def capture_content_from_env() -> bool:
    """Whether OpenTelemetry's content switch asks for prompts and answers on spans."""
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() in _CAPTURE_ON_SPANS


def server_of(url: str) -> Tuple[str, int]:
    """``server.address`` and ``server.port`` of ``url`` (remembered: a client has few URLs)."""
    known = _servers.get(url)
    if known is None:
        parts = urlsplit(url)
        known = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        if len(_servers) < 256:
            _servers[url] = known
    return known


def request_attributes(payload: Mapping[str, Any], stream: bool) -> Dict[str, Any]:
    """The request's ``gen_ai.request.*`` attributes (no content: see :func:`input_content`)."""
    attributes: Dict[str, Any] = {}
    for field, name in _REQUEST_FIELDS:
        value = payload.get(field)
        if value is not None and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            attributes[name] = value
    stop = payload.get("stop")
    if isinstance(stop, str):
        attributes["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, (list, tuple)) and all(isinstance(item, str) for item in stop):
        attributes["gen_ai.request.stop_sequences"] = list(stop)
    if stream:
        attributes["gen_ai.request.stream"] = True
    response_format = payload.get("response_format")
    if isinstance(response_format, Mapping):
        kind = response_format.get("type")
        attributes["gen_ai.output.type"] = "json" if kind in ("json_object", "json_schema") else "text"
    return attributes


def response_attributes(answer: Any) -> Dict[str, Any]:
    """A finished answer's ``gen_ai.response.*`` and ``gen_ai.usage.*`` attributes."""
    attributes: Dict[str, Any] = {}
    answer_id = getattr(answer, "id", None)
    if answer_id:
        attributes["gen_ai.response.id"] = answer_id
    model = getattr(answer, "model", None)
    if model:
        attributes["gen_ai.response.model"] = model
    reasons = finish_reasons(answer)
    if reasons:
        attributes["gen_ai.response.finish_reasons"] = reasons
    usage = getattr(answer, "usage", None)
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.prompt_cache_hit_tokens
        if usage.reasoning_tokens:
            attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
    return attributes


def finish_reasons(answer: Any) -> List[str]:
    """Every choice's finish reason (DeepSeek answers one choice); ``error`` for one cut short."""
    raw = getattr(answer, "raw", None)
    choices = raw.get("choices") if isinstance(raw, dict) else None
    if isinstance(choices, list) and choices:
        return [str(choice.get("finish_reason") or "error") for choice in choices if isinstance(choice, dict)]
    reason = getattr(answer, "finish_reason", None)
    return [str(reason)] if reason else []


def _parts(message: Mapping[str, Any]) -> List[Dict[str, Any]]:
    parts: List[Dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, str) and content:
        parts.append({"type": "text", "content": content})
    elif isinstance(content, list):
        parts.extend({"type": "text", "content": item.get("text", "")} for item in content if isinstance(item, dict))
    reasoning = message.get("reasoning_content")
    if reasoning:
        parts.append({"type": "reasoning", "content": reasoning})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        name, arguments = function.get("name"), function.get("arguments")
        parts.append({"type": "tool_call", "id": call.get("id"), "name": name, "arguments": arguments})
    if message.get("role") == "tool":
        return [{"type": "tool_call_response", "id": message.get("tool_call_id"), "response": content}]
    return parts


def input_content(payload: Mapping[str, Any]) -> Dict[str, str]:
    """``gen_ai.input.messages`` and ``gen_ai.system_instructions`` (JSON), only under the switch."""
    messages = payload.get("messages")
    attributes: Dict[str, str] = {}
    if isinstance(messages, list):
        system = [part for m in messages if isinstance(m, dict) and m.get("role") == "system" for part in _parts(m)]
        others = [
            {"role": m.get("role"), "parts": _parts(m)}
            for m in messages
            if isinstance(m, dict) and m.get("role") != "system"
        ]
        if system:
            attributes["gen_ai.system_instructions"] = json.dumps(system, ensure_ascii=False)
        attributes["gen_ai.input.messages"] = json.dumps(others, ensure_ascii=False)
    elif isinstance(payload.get("prompt"), str):  # FIM
        parts = [{"type": "text", "content": payload["prompt"]}]
        attributes["gen_ai.input.messages"] = json.dumps([{"role": "user", "parts": parts}], ensure_ascii=False)
    tools = payload.get("tools")
    if isinstance(tools, list):
        attributes["gen_ai.tool.definitions"] = json.dumps(tools, ensure_ascii=False)
    return attributes


def output_content(answer: Any) -> Optional[str]:
    """``gen_ai.output.messages`` (JSON) of an answer, only under the switch."""
    if hasattr(answer, "text"):  # a FIMCompletion
        message: Dict[str, Any] = {"content": answer.text}
    else:
        message = {
            "content": getattr(answer, "content", None),
            "reasoning_content": getattr(answer, "reasoning_content", None),
            "tool_calls": getattr(answer, "tool_calls", None),
        }
    reasons = finish_reasons(answer)
    output = {"role": "assistant", "parts": _parts(message), "finish_reason": reasons[0] if reasons else "error"}
    return json.dumps([output], ensure_ascii=False)
