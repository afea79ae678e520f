"""Typed views of DeepSeek's answers: completions, stream chunks, usage, balance.

Each object keeps the server's JSON as ``raw`` so nothing the API sends is lost,
and exposes the fields callers use as attributes. Parsing is done once, with
``dict.get`` throughout: DeepSeek leaves fields out or sends ``null`` freely.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

__all__ = [
    "Balance",
    "ChatChunk",
    "ChatCompletion",
    "ChatCompletionBuilder",
    "FIMCompletion",
    "Usage",
    "completion_problem",
    "model_list_problem",
    "object_problem",
]

_EMPTY: Dict[str, Any] = {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


class Usage:
    """Token counts of one call (or a sum of calls: ``usage_a + usage_b``).

    ``prompt_cache_hit_tokens + prompt_cache_miss_tokens == prompt_tokens``;
    ``reasoning_tokens`` are part of ``completion_tokens`` and billed as output.
    """

    __slots__ = (
        "completion_tokens",
        "prompt_cache_hit_tokens",
        "prompt_cache_miss_tokens",
        "prompt_tokens",
        "reasoning_tokens",
        "total_tokens",
    )

    def __init__(
        self,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        total_tokens: int = 0,
        prompt_cache_hit_tokens: int = 0,
        prompt_cache_miss_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.total_tokens = total_tokens
        self.prompt_cache_hit_tokens = prompt_cache_hit_tokens
        self.prompt_cache_miss_tokens = prompt_cache_miss_tokens
        self.reasoning_tokens = reasoning_tokens

    @classmethod
    def from_dict(cls, data: Optional[Dict[str, Any]]) -> Optional[Usage]:
        """Parse the API's ``usage`` object; None when the server sent none."""
        if not data:
            return None
        prompt = _int(data.get("prompt_tokens"))
        hit = data.get("prompt_cache_hit_tokens")
        if not isinstance(hit, int):
            hit = _int((data.get("prompt_tokens_details") or _EMPTY).get("cached_tokens"))
        miss = data.get("prompt_cache_miss_tokens")
        if not isinstance(miss, int):
            miss = prompt - hit
        completion = _int(data.get("completion_tokens"))
        return cls(
            prompt,
            completion,
            _int(data.get("total_tokens")) or prompt + completion,
            hit,
            miss,
            _int((data.get("completion_tokens_details") or _EMPTY).get("reasoning_tokens")),
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{name: getattr(self, name) + getattr(other, name) for name in _USAGE_FIELDS})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Usage):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _USAGE_FIELDS)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)}" for name in _USAGE_FIELDS)
        return f"Usage({fields})"


_USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_cache_hit_tokens",
    "prompt_cache_miss_tokens",
    "reasoning_tokens",
)


def completion_problem(raw: Any) -> Optional[str]:
    """What makes ``raw`` not a chat completion, or None when it is one.

    Checked once, before :class:`ChatCompletion` reads it, so a server that answers
    200 in another shape gets an error that says so rather than an AttributeError.
    """
    if not isinstance(raw, dict):
        return f"expected a JSON object, got {type(raw).__name__}"
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices:
        return "it has no 'choices' list"
    for index, choice in enumerate(choices):
        if not isinstance(choice, dict):
            return f"choices[{index}] is not an object"
        message = choice.get("message")
        if message is not None and not isinstance(message, dict):
            return f"choices[{index}].message is not an object"
        if message and not isinstance(message.get("content", ""), (str, type(None))):
            return f"choices[{index}].message.content is not a string"
        if not isinstance(choice.get("text", ""), (str, type(None))):  # FIM's choices carry text
            return f"choices[{index}].text is not a string"
    usage = raw.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return "'usage' is not an object"
    return None


def object_problem(raw: Any) -> Optional[str]:
    """What makes ``raw`` not a JSON object (``/user/balance``), or None."""
    return None if isinstance(raw, dict) else f"expected a JSON object, got {type(raw).__name__}"


def model_list_problem(raw: Any) -> Optional[str]:
    """What makes ``raw`` not a ``/models`` list, or None."""
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        return "expected an object with a 'data' list"
    return None


class ChatCompletion:
    """One chat answer (the first choice; all of them stay in ``raw["choices"]``).

    :ivar content: the answer text ("" when the model only called tools).
    :ivar reasoning_content: the thinking text, or None when thinking was off.
    :ivar tool_calls: OpenAI-shaped tool calls, or None.
    :ivar finish_reason: ``stop``, ``length``, ``tool_calls``, ``content_filter`` ...
    :ivar usage: token counts (:class:`Usage`) or None.
    :ivar logprobs: the choice's ``logprobs`` (``{"content": [...]}``) when asked for, else None.
    :ivar request_id: the server's request id header, when it sent one.
    :ivar cached: served by the response cache (:class:`~deepseek_pool.ResponseCache`):
        not sent, nothing billed; ``usage`` is the original call's.
    """

    __slots__ = (
        "cached",
        "content",
        "finish_reason",
        "id",
        "logprobs",
        "model",
        "raw",
        "reasoning_content",
        "request_id",
        "tool_calls",
        "usage",
    )

    def __init__(self, raw: Dict[str, Any], request_id: Optional[str] = None) -> None:
        self.raw = raw
        self.request_id = request_id
        self.cached = False
        self.id: str = raw.get("id") or ""
        self.model: str = raw.get("model") or ""
        choices = raw.get("choices") or ()
        choice = choices[0] if choices else _EMPTY
        message = choice.get("message") or _EMPTY
        self.content: str = message.get("content") or ""
        self.reasoning_content: Optional[str] = message.get("reasoning_content")
        self.tool_calls: Optional[List[Dict[str, Any]]] = message.get("tool_calls") or None
        self.finish_reason: Optional[str] = choice.get("finish_reason")
        self.logprobs: Optional[Dict[str, Any]] = choice.get("logprobs")
        self.usage = Usage.from_dict(raw.get("usage"))

    def to_message(self) -> Dict[str, Any]:
        """The assistant message to append to the conversation for the next turn.

        DeepSeek requires ``reasoning_content`` to be sent back on assistant turns
        that carry tool calls in thinking mode (else it answers 400), so it is kept
        there; elsewhere it is dropped, as the API ignores it.
        """
        message: Dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
            if self.reasoning_content is not None:
                message["reasoning_content"] = self.reasoning_content
        return message

    def __repr__(self) -> str:
        preview = self.content if len(self.content) <= 40 else self.content[:37] + "..."
        return (
            f"ChatCompletion(id={self.id!r}, model={self.model!r}, "
            f"finish_reason={self.finish_reason!r}, content={preview!r})"
        )


class ChatChunk:
    """One streamed event, exactly as the server sent it (role-only and usage-only ones too).

    Attributes are read from the first choice's ``delta``; chunks whose ``choices``
    is empty (the final usage chunk) give None for them.

    :raises ValueError: ``raw`` is not shaped like a chunk (checked at once, cheaply).
    """

    __slots__ = ("_choice", "_delta", "raw")

    def __init__(self, raw: Dict[str, Any]) -> None:
        self.raw = raw
        try:
            choices = raw.get("choices")
            choice = choices[0] if choices else _EMPTY
            delta = choice.get("delta") or _EMPTY
        except (AttributeError, TypeError, KeyError, IndexError):
            delta = None
        if delta.__class__ is not dict:
            raise ValueError(f"not a chat completion chunk: {str(raw)[:200]}")
        self._choice: Dict[str, Any] = choice
        self._delta: Dict[str, Any] = delta

    @property
    def id(self) -> str:
        return self.raw.get("id") or ""

    @property
    def model(self) -> str:
        return self.raw.get("model") or ""

    @property
    def role(self) -> Optional[str]:
        return self._delta.get("role")

    @property
    def content(self) -> Optional[str]:
        """The answer piece in this chunk (None or "" when there is none)."""
        return self._delta.get("content")

    @property
    def reasoning_content(self) -> Optional[str]:
        """The thinking piece in this chunk."""
        return self._delta.get("reasoning_content")

    @property
    def tool_calls(self) -> Optional[List[Dict[str, Any]]]:
        """Tool-call fragments, keyed by their ``index``; see :class:`ChatCompletionBuilder`."""
        return self._delta.get("tool_calls")

    @property
    def finish_reason(self) -> Optional[str]:
        return self._choice.get("finish_reason")

    @property
    def usage(self) -> Optional[Usage]:
        return Usage.from_dict(self.raw.get("usage"))

    def __repr__(self) -> str:
        return (
            f"ChatChunk(content={self.content!r}, reasoning_content={self.reasoning_content!r}, "
            f"finish_reason={self.finish_reason!r})"
        )


class ChatCompletionBuilder:
    """Folds stream chunks into the :class:`ChatCompletion` a non-streaming call would give.

    Text pieces are collected in lists and joined once; tool-call fragments are
    accumulated per ``index`` (parallel calls interleave).
    """

    __slots__ = (
        "_content",
        "_created",
        "_finish",
        "_id",
        "_logprobs",
        "_model",
        "_reasoning",
        "_tools",
        "_usage",
        "chunks",
    )

    def __init__(self) -> None:
        self._content: List[str] = []
        self._reasoning: List[str] = []
        self._tools: Dict[int, Dict[str, Any]] = {}
        self._finish: Optional[str] = None
        self._logprobs: Optional[List[Any]] = None
        self._usage: Optional[Dict[str, Any]] = None
        self._id = ""
        self._model = ""
        self._created: Any = None
        #: how many chunks were added
        self.chunks = 0

    def add(self, chunk: ChatChunk) -> None:
        """Take one chunk into account."""
        self.chunks += 1
        raw = chunk.raw
        if not self._id:
            self._id = raw.get("id") or ""
            self._model = raw.get("model") or ""
            self._created = raw.get("created")
        usage = raw.get("usage")
        if usage:
            self._usage = usage
        delta = chunk._delta
        if not delta and not chunk._choice:
            return
        piece = delta.get("content")
        if piece:
            self._content.append(piece)
        piece = delta.get("reasoning_content")
        if piece:
            self._reasoning.append(piece)
        fragments = delta.get("tool_calls")
        if fragments:
            self._add_tool_fragments(fragments)
        finish = chunk._choice.get("finish_reason")
        if finish:
            self._finish = finish
        logprobs = chunk._choice.get("logprobs")
        if logprobs:
            if self._logprobs is None:
                self._logprobs = []
            self._logprobs.extend(logprobs.get("content") or ())

    @property
    def finish_reason(self) -> Optional[str]:
        """The finish_reason seen so far (None until a chunk carried one)."""
        return self._finish

    def _add_tool_fragments(self, fragments: Iterable[Dict[str, Any]]) -> None:
        for fragment in fragments:
            index = fragment.get("index", 0)
            call = self._tools.get(index)
            if call is None:
                call = self._tools[index] = {"id": "", "type": "function", "name": [], "arguments": []}
            if fragment.get("id"):
                call["id"] = fragment["id"]
            if fragment.get("type"):
                call["type"] = fragment["type"]
            function = fragment.get("function") or _EMPTY
            if function.get("name"):
                call["name"].append(function["name"])
            if function.get("arguments"):
                call["arguments"].append(function["arguments"])

    def build(self, request_id: Optional[str] = None) -> ChatCompletion:
        """The completion the chunks so far add up to."""
        message: Dict[str, Any] = {"role": "assistant", "content": "".join(self._content)}
        if self._reasoning:
            message["reasoning_content"] = "".join(self._reasoning)
        if self._tools:
            message["tool_calls"] = [
                {
                    "index": index,
                    "id": call["id"],
                    "type": call["type"],
                    "function": {"name": "".join(call["name"]), "arguments": "".join(call["arguments"])},
                }
                for index, call in sorted(self._tools.items())
            ]
        raw: Dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None if self._logprobs is None else {"content": self._logprobs},
                    "finish_reason": self._finish,
                }
            ],
        }
        if self._usage is not None:
            raw["usage"] = self._usage
        return ChatCompletion(raw, request_id)


class FIMCompletion:
    """A fill-in-the-middle answer from ``/beta/completions`` (``cached``: as :class:`ChatCompletion`'s)."""

    __slots__ = ("cached", "finish_reason", "id", "model", "raw", "text", "usage")

    def __init__(self, raw: Dict[str, Any]) -> None:
        self.raw = raw
        self.cached = False
        self.id: str = raw.get("id") or ""
        self.model: str = raw.get("model") or ""
        choices = raw.get("choices") or ()
        choice = choices[0] if choices else _EMPTY
        self.text: str = choice.get("text") or ""
        self.finish_reason: Optional[str] = choice.get("finish_reason")
        self.usage = Usage.from_dict(raw.get("usage"))

    def __repr__(self) -> str:
        return f"FIMCompletion(id={self.id!r}, text={self.text[:40]!r}, finish_reason={self.finish_reason!r})"


class Balance:
    """The account balance from ``/user/balance`` (amounts are strings, as the API sends them)."""

    __slots__ = ("balance_infos", "is_available", "raw")

    def __init__(self, raw: Dict[str, Any]) -> None:
        self.raw = raw
        self.is_available: bool = bool(raw.get("is_available"))
        self.balance_infos: List[Dict[str, Any]] = list(raw.get("balance_infos") or [])

    def __repr__(self) -> str:
        amounts = ", ".join(f"{i.get('total_balance')} {i.get('currency')}" for i in self.balance_infos)
        return f"Balance(is_available={self.is_available}, {amounts or 'no balance info'})"
