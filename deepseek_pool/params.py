"""DeepSeek's request parameters as types, so an IDE completes them and mypy checks them.

Why ``TypedDict`` + ``**params: Unpack[...]`` (PEP 589, PEP 692), not keyword-only arguments:

- At run time a TypedDict is a plain dict and ``**params`` stays the one dict it always was:
  nothing is added to the request path, and the pool, the batch runner and
  :func:`~deepseek_pool.messages.build_chat_body` keep handing one dict down.
- One set of shapes types the call *and* the dicts users build: a pool request
  (:class:`ChatRequest`), a saved set of options (``opts: ChatParams = {...}``, then
  ``client.chat(msgs, **opts)``), a list of tools.
- A misspelt name is a mypy error. Keyword-only arguments would need a ``**rest: Any``
  catch-all for the fields they do not list, and that would swallow the typo.

Unknown fields still reach the body: at run time any keyword goes into it, as before; for
code that mypy checks, ``extra_body={...}`` (openai-python's name) is the declared way. It is
merged into the body last, over any field of the same name, and sent as given: neither
checked nor seen by a pool's token and cost estimates.

``messages`` stay open: a list of :data:`MessageParam` *or of any* ``Mapping[str, Any]``, because
conversations are built at run time (``ChatCompletion.to_message()`` returns a plain dict).
Annotate ``history: list[dp.MessageParam]`` to have a history checked. The other nested shapes
(``thinking``, ``response_format``, ``stream_options``, ``tools``, ``tool_choice``) are strict.
Scalars and small objects accept None, which is sent as JSON null (not set); ``thinking=None``
leaves the field out.

This module imports nothing of the package but :mod:`~deepseek_pool.config` (for ``timeout``).
"""

from typing import Any, Dict, Literal, Mapping, Optional, Required, Sequence, TypedDict, Union

from .config import TimeoutLike

__all__ = [
    "AssistantMessageParam",
    "ChatParams",
    "ChatRequest",
    "FIMParams",
    "FunctionParam",
    "MessageParam",
    "Messages",
    "NamedToolChoiceParam",
    "ReasoningEffort",
    "ResponseFormatParam",
    "StreamOptionsParam",
    "SubmitParams",
    "SystemMessageParam",
    "ThinkingParam",
    "ToolCallFunctionParam",
    "ToolCallParam",
    "ToolChoiceParam",
    "ToolMessageParam",
    "ToolParam",
    "UserMessageParam",
    "merge_extra_body",
]

# -- messages --------------------------------------------------------------------------


class SystemMessageParam(TypedDict, total=False):
    """``{"role": "system", "content": ...}``: instructions for the whole conversation."""

    role: Required[Literal["system"]]
    content: Required[str]
    name: str


class UserMessageParam(TypedDict, total=False):
    """``{"role": "user", "content": ...}``."""

    role: Required[Literal["user"]]
    content: Required[str]
    name: str


class ToolCallFunctionParam(TypedDict):
    """The function a tool call names, with its arguments as a JSON string."""

    name: str
    arguments: str


class ToolCallParam(TypedDict):
    """One tool call of an assistant message, sent back as the model made it."""

    id: str
    type: Literal["function"]
    function: ToolCallFunctionParam


class AssistantMessageParam(TypedDict, total=False):
    """An earlier answer, or with ``prefix=True`` (``beta=True``) the start the model must continue.

    In thinking mode a turn that carries ``tool_calls`` must also carry its
    ``reasoning_content``, or DeepSeek answers 400 (``ChatCompletion.to_message()`` keeps it).
    """

    role: Required[Literal["assistant"]]
    content: Optional[str]
    name: str
    reasoning_content: Optional[str]
    tool_calls: Sequence[ToolCallParam]
    prefix: bool


class ToolMessageParam(TypedDict):
    """A tool's result, answering the call with id ``tool_call_id``."""

    role: Literal["tool"]
    content: str
    tool_call_id: str


#: One chat message, told apart by its ``role``.
MessageParam = Union[SystemMessageParam, UserMessageParam, AssistantMessageParam, ToolMessageParam]
#: What ``chat``/``chat_stream``/``submit`` take: a str (one user message) or a list of
#: messages, typed or plain (see the module docstring); checked before sending.
Messages = Union[str, Sequence[Union[MessageParam, Mapping[str, Any]]]]

# -- options ---------------------------------------------------------------------------


class ThinkingParam(TypedDict):
    """``{"type": "enabled" | "disabled"}``: DeepSeek's thinking switch (on by default)."""

    type: Literal["enabled", "disabled"]


#: DeepSeek maps minimal/low to low, medium/high/xhigh to high, max/ultra to max
#: (api-docs guides/thinking_mode); the reference names low, high and max.
ReasoningEffort = Literal["minimal", "low", "medium", "high", "xhigh", "max", "ultra"]


class ResponseFormatParam(TypedDict):
    """``{"type": "json_object"}`` for JSON mode (the prompt must mention json), or ``"text"``."""

    type: Literal["text", "json_object"]


class StreamOptionsParam(TypedDict, total=False):
    """``{"include_usage": True}``: a last chunk with the whole answer's usage."""

    include_usage: bool


class FunctionParam(TypedDict, total=False):
    """A function the model may call; ``parameters`` is a JSON Schema object.

    ``strict`` (schemas the output must follow exactly) needs DeepSeek's beta endpoint:
    ``chat(..., beta=True)``.
    """

    name: Required[str]
    description: str
    parameters: Mapping[str, Any]
    strict: bool


class ToolParam(TypedDict):
    """``{"type": "function", "function": {...}}``; DeepSeek takes up to 128."""

    type: Literal["function"]
    function: FunctionParam


class _NamedFunction(TypedDict):
    name: str


class NamedToolChoiceParam(TypedDict):
    """``{"type": "function", "function": {"name": ...}}``: call this tool."""

    type: Literal["function"]
    function: _NamedFunction


#: ``"none"``, ``"auto"`` (the default with tools), ``"required"``, or one named tool.
ToolChoiceParam = Union[Literal["none", "auto", "required"], NamedToolChoiceParam]

# -- the parameters of a call ----------------------------------------------------------


class ChatParams(TypedDict, total=False):
    """DeepSeek's chat fields, for ``client.chat(messages, **params)`` and ``chat_stream``.

    ``model``, ``stream`` and ``timeout`` are arguments of the calls themselves. Ranges
    (temperature 0-2, top_p 0-1, penalties -2-2, max_tokens > 0) are checked at run time,
    before sending; in thinking mode DeepSeek ignores temperature, top_p and the penalties.
    """

    #: ``True``/``False`` is this library's shorthand for ``{"type": "enabled"/"disabled"}``.
    thinking: Union[bool, ThinkingParam, None]
    reasoning_effort: Optional[ReasoningEffort]
    #: reasoning and answer together
    max_tokens: Optional[int]
    temperature: Optional[float]
    top_p: Optional[float]
    frequency_penalty: Optional[float]
    presence_penalty: Optional[float]
    #: up to 16 sequences
    stop: Union[str, Sequence[str], None]
    response_format: Optional[ResponseFormatParam]
    stream_options: Optional[StreamOptionsParam]
    tools: Sequence[ToolParam]
    tool_choice: ToolChoiceParam
    logprobs: Optional[bool]
    #: 0-20, with ``logprobs=True``
    top_logprobs: Optional[int]
    #: DeepSeek's id of your end user (it also keeps their prompt cache apart); not OpenAI's ``user``
    user_id: Optional[str]
    #: fields these types do not list, merged into the body last and sent as given
    extra_body: Optional[Mapping[str, Any]]


class FIMParams(TypedDict, total=False):
    """DeepSeek's fill-in-the-middle fields, for ``client.fim(prompt, suffix, **params)``."""

    max_tokens: Optional[int]
    temperature: Optional[float]
    top_p: Optional[float]
    frequency_penalty: Optional[float]
    presence_penalty: Optional[float]
    stop: Union[str, Sequence[str], None]
    #: send the prompt back before the completion
    echo: Optional[bool]
    #: how many most likely tokens to return per position (0-20)
    logprobs: Optional[int]
    extra_body: Optional[Mapping[str, Any]]


class SubmitParams(ChatParams, total=False):
    """``pool.submit(messages, **params)``: the chat fields and a call's own options."""

    model: str
    #: stream under the hood (the pool's ``on_chunk`` sees the chunks); the answer comes whole
    stream: bool
    timeout: TimeoutLike
    #: False: neither look this call up in the pool's response cache nor keep its answer
    cache: bool


class ChatRequest(ChatParams, total=False):
    """A request dict for ``pool.as_completed()``/``map()`` and the batch runner.

    It needs ``messages`` or ``prompt`` (a str: one user message); ``custom_id`` is kept
    on its :class:`~deepseek_pool.Result` and never sent.
    """

    messages: Messages
    prompt: str
    custom_id: str
    model: str
    stream: bool
    #: False: skip the pool's response cache for this request (the key is never sent)
    cache: bool


def merge_extra_body(body: Dict[str, Any]) -> None:
    """Replace ``body["extra_body"]`` by its fields, over any of the same name (called only when present)."""
    extra = body.pop("extra_body")
    if extra is None:
        return
    if not isinstance(extra, Mapping):
        raise TypeError(f"extra_body must be a dict of extra request fields, got {type(extra).__name__}")
    body.update(extra)
