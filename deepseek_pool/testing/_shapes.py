"""Every JSON shape FakeDeepSeek answers with, as data, each with the source it follows.

Sources, cited by the short names below:

* **API doc** — DeepSeek's API reference and guides (api-docs.deepseek.com: create chat
  completion, FIM completion, list models, user balance, the thinking-mode and reasoning-model
  guides), as summarised in ``shared/deepseek-api.md``.
* **capture** — streams captured from the real API (deepseek-v4-flash / -pro, 2026), as quoted
  in issue 13 and in several independent clients' fixtures: the first thinking-mode delta is
  ``{"role": "assistant", "content": null, "reasoning_content": ""}``; reasoning pieces carry
  ``"content": null``; answer pieces in thinking mode carry ``"reasoning_content": null``.
* **openai types** — the openai SDK's models (``openai.types.chat.ChatCompletionChunk``,
  ``ChatCompletion``, ``ChatCompletionTokenLogprob``, ``openai.types.Completion``): field names,
  nullability and nesting every OpenAI-compatible client relies on.
* **openai doc** — OpenAI's documented ``stream_options.include_usage`` contract: one last chunk
  with ``choices: []`` and the usage; every other chunk carries ``"usage": null``.

A value :func:`slot` ``(name)`` marks where the renderer puts a value.  :class:`Template`
serializes a shape once and splits it at its slots, so a 1,000-event stream costs one small
string join per event, not one :func:`json.dumps` of the whole chunk.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Tuple

# Compact like the service; one prebuilt encoder (cheaper than json.dumps(**options) per call).
dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def slot(name: str) -> str:
    """A placeholder for ``name`` inside a shape (a string JSON cannot otherwise contain)."""
    return f"\x00{name}\x00"


_SLOT_TEXT = re.compile(r'"\\u0000(\w+)\\u0000"')


class Template:
    """A shape serialized once; :meth:`fill` puts JSON texts in its slots.

    Usage::

        Template({"content": slot("piece")}).fill(piece='"Hi"')  # -> '{"content":"Hi"}'
    """

    __slots__ = ("names", "parts", "shape")

    def __init__(self, shape: Any) -> None:
        self.shape = shape
        pieces = _SLOT_TEXT.split(dumps(shape))
        self.parts: Tuple[str, ...] = tuple(pieces[0::2])
        self.names: Tuple[str, ...] = tuple(pieces[1::2])

    def around(self) -> Tuple[str, str]:
        """The text before and after the one slot of this template (for the hottest paths)."""
        if len(self.names) != 1:
            raise ValueError(f"around() needs exactly one slot, this shape has {self.names}")
        return self.parts[0], self.parts[1]

    def fill(self, **json_texts: str) -> str:
        """The shape's JSON text with each slot replaced by the given (already encoded) JSON."""
        parts, names = self.parts, self.names
        out = [parts[0]]
        for i, name in enumerate(names):
            out.append(json_texts[name])
            out.append(parts[i + 1])
        return "".join(out)


#: ``system_fingerprint`` of every answer (capture: ``fp_<hash>_prod<date>...``).
SYSTEM_FINGERPRINT = "fp_fakedeepseek_prod"

# -- non-streamed answers ---------------------------------------------------------------------

#: ``POST /chat/completions`` (API doc; openai types ``ChatCompletion``).  The message gets
#: ``reasoning_content`` in thinking mode and ``tool_calls`` (each with its ``index``, as the API
#: sends) when the model calls a tool.
CHAT_COMPLETION: Dict[str, Any] = {
    "id": slot("id"),
    "object": "chat.completion",
    "created": slot("created"),
    "model": slot("model"),
    "choices": [
        {"index": 0, "message": slot("message"), "logprobs": slot("logprobs"), "finish_reason": slot("finish")}
    ],
    "usage": slot("usage"),
    "system_fingerprint": SYSTEM_FINGERPRINT,
}

#: ``POST /beta/completions`` (FIM; API doc; openai types ``Completion``).
TEXT_COMPLETION: Dict[str, Any] = {
    "id": slot("id"),
    "object": "text_completion",
    "created": slot("created"),
    "model": slot("model"),
    "system_fingerprint": SYSTEM_FINGERPRINT,
    "choices": [{"text": slot("text"), "index": 0, "logprobs": None, "finish_reason": slot("finish")}],
    "usage": slot("usage"),
}

#: ``logprobs`` of a choice when the request set ``logprobs: true`` (API doc; openai types
#: ``ChoiceLogprobs``): one entry per output token of the answer (not of the reasoning), each
#: with up to ``top_logprobs`` alternatives (``TopLogprob``: token, logprob, bytes).
LOGPROBS: Dict[str, Any] = {"content": slot("tokens")}
TOKEN_LOGPROB: Dict[str, Any] = {
    "token": slot("token"),
    "logprob": slot("logprob"),
    "bytes": slot("bytes"),
    "top_logprobs": slot("top"),
}
TOP_LOGPROB: Dict[str, Any] = {"token": slot("token"), "logprob": slot("logprob"), "bytes": slot("bytes")}

#: ``GET /models`` (API doc; openai types ``Model``: ``id``, ``object``, ``owned_by``; openai's
#: ``created`` is optional and DeepSeek does not send it).
MODEL_LIST: Dict[str, Any] = {"object": "list", "data": slot("models")}
MODEL: Dict[str, Any] = {"id": slot("id"), "object": "model", "owned_by": "deepseek"}

#: ``GET /user/balance`` (API doc): the amounts are strings.
BALANCE: Dict[str, Any] = {
    "is_available": slot("available"),
    "balance_infos": [
        {
            "currency": "USD",
            "total_balance": slot("balance"),
            "granted_balance": "0.00",
            "topped_up_balance": slot("balance"),
        }
    ],
}

#: Every error (API doc: "Error Codes"); ``type`` and ``code`` do not follow OpenAI's values.
ERROR: Dict[str, Any] = {
    "error": {"message": slot("message"), "type": slot("type"), "param": slot("param"), "code": slot("code")}
}

# -- streamed answers (SSE) -------------------------------------------------------------------

#: Every streamed chat chunk (API doc; openai types ``ChatCompletionChunk``).  With
#: ``include_usage`` the chunk ends with ``"usage": null`` (openai doc; capture).
CHAT_CHUNK: Dict[str, Any] = {
    "id": slot("id"),
    "object": "chat.completion.chunk",
    "created": slot("created"),
    "model": slot("model"),
    "system_fingerprint": SYSTEM_FINGERPRINT,
    "choices": [{"index": 0, "delta": slot("delta"), "logprobs": slot("logprobs"), "finish_reason": slot("finish")}],
}
CHAT_CHUNK_WITH_USAGE: Dict[str, Any] = dict(CHAT_CHUNK, usage=None)

#: The last chunk before ``data: [DONE]`` with ``include_usage``: no choices, the full usage
#: (API doc: "the last chunk before [DONE] has choices: [] and the full usage"; openai doc).
USAGE_CHUNK: Dict[str, Any] = dict(CHAT_CHUNK, choices=[], usage=slot("usage"))

#: A streamed FIM chunk (API doc; openai types ``Completion`` as a stream event).
FIM_CHUNK: Dict[str, Any] = {
    "id": slot("id"),
    "object": "text_completion",
    "created": slot("created"),
    "model": slot("model"),
    "system_fingerprint": SYSTEM_FINGERPRINT,
    "choices": [{"text": slot("text"), "index": 0, "logprobs": None, "finish_reason": slot("finish")}],
}
FIM_CHUNK_WITH_USAGE: Dict[str, Any] = dict(FIM_CHUNK, usage=None)

#: The ``delta`` of each kind of chat chunk, in thinking mode and not.  Kind -> (shape, source).
DELTAS: Dict[str, Tuple[Dict[str, Any], str]] = {
    # The first chunk of every stream names the role.
    "first": ({"role": "assistant", "content": ""}, "capture (deepseek-chat, thinking off)"),
    "first_thinking": (
        {"role": "assistant", "content": None, "reasoning_content": ""},
        "capture (issue 13): content null, reasoning_content empty",
    ),
    # Thinking mode: reasoning pieces first, then the answer (API doc: thinking-mode guide).
    "reasoning": ({"content": None, "reasoning_content": slot("piece")}, "capture"),
    "content_thinking": ({"content": slot("piece"), "reasoning_content": None}, "capture"),
    "content": ({"content": slot("piece")}, "capture (thinking off)"),
    # Tool calls: fragments keyed by index; the first names id, type and function
    # (API doc: "tool calls arrive as delta.tool_calls[] fragments keyed by index";
    # openai types ChoiceDeltaToolCall: index required, the rest optional).
    "tool_call_start": (
        {
            "content": None,
            "tool_calls": [
                {
                    "index": slot("index"),
                    "id": slot("call_id"),
                    "type": "function",
                    "function": {"name": slot("name"), "arguments": ""},
                }
            ],
        },
        "capture; openai types",
    ),
    "tool_call_start_thinking": (
        {
            "content": None,
            "reasoning_content": None,
            "tool_calls": [
                {
                    "index": slot("index"),
                    "id": slot("call_id"),
                    "type": "function",
                    "function": {"name": slot("name"), "arguments": ""},
                }
            ],
        },
        "capture; openai types",
    ),
    "tool_call_arguments": (
        {"tool_calls": [{"index": slot("index"), "function": {"arguments": slot("piece")}}]},
        "capture; openai types",
    ),
    # The chunk with finish_reason carries an empty content (and, thinking, a null reasoning).
    "finish": ({"content": ""}, "capture (thinking off)"),
    "finish_thinking": ({"content": "", "reasoning_content": None}, "capture"),
}


def _templates(shapes: Dict[str, Tuple[Dict[str, Any], str]]) -> Dict[str, Template]:
    return {kind: Template(shape) for kind, (shape, _) in shapes.items()}


#: Precompiled templates of the shapes above, for the renderer.
DELTA_TEMPLATES: Dict[str, Template] = _templates(DELTAS)
CHAT_CHUNK_TEMPLATES: Tuple[Template, Template] = (Template(CHAT_CHUNK), Template(CHAT_CHUNK_WITH_USAGE))
FIM_CHUNK_TEMPLATES: Tuple[Template, Template] = (Template(FIM_CHUNK), Template(FIM_CHUNK_WITH_USAGE))
USAGE_CHUNK_TEMPLATE = Template(USAGE_CHUNK)
CHAT_COMPLETION_TEMPLATE = Template(CHAT_COMPLETION)
TEXT_COMPLETION_TEMPLATE = Template(TEXT_COMPLETION)


def fill_shape(shape: Any, **values: Any) -> Any:
    """A copy of ``shape`` with each slot replaced by ``values[name]`` (a Python value)."""
    if isinstance(shape, dict):
        return {k: fill_shape(v, **values) for k, v in shape.items()}
    if isinstance(shape, list):
        return [fill_shape(v, **values) for v in shape]
    if isinstance(shape, str) and len(shape) > 2 and shape[0] == shape[-1] == "\x00":
        return values[shape[1:-1]]
    return shape


def slot_names(shape: Any) -> List[str]:
    """The slot names of ``shape``, in document order."""
    return list(Template(shape).names)
