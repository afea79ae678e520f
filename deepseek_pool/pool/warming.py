"""Warming DeepSeek's prompt cache before a batch fans out, so its shared prefix is paid once.

On DeepSeek V4 a request hits the cache only where it fully matches a stored prefix unit,
and a prefix shared by many requests becomes a unit only after two requests carrying it
have *completed*, plus some seconds to build it (``shared/deepseek-api.md``, "Context
caching"). A batch started all at once therefore pays its whole shared prefix on every
item. Warming sends two cheap requests carrying the prefix first (a one-character turn
after it, ``max_tokens=1``), one after the other, waits for the unit to be built, and only
then lets the batch go: every item after that pays the prefix at the hit price (2 % of a
miss on ``deepseek-flash``).

The prefix is found in the first window of requests only (the input stays lazy): the
leading messages that the largest group of chat requests with the same model, tools and
``user_id`` share. A prefix below :data:`MIN_PREFIX_TOKENS` cannot hit on V4, so it is not
warmed, and the log says so; nor is a window that the pool's response cache answers whole
(a rerun: nothing of it will be sent).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import (
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypeVar,
    Unpack,
    cast,
)

from ..messages import Messages, normalize_messages
from ..params import SubmitParams
from ..types import ChatCompletion
from .items import exact_token_counter, route_request
from .worker import in_cache

__all__ = ["MIN_PREFIX_TOKENS", "WARM_WAIT", "Prefix", "WarmPrefix", "shared_prefix", "warm_first"]

log = logging.getLogger(__name__)

#: The shortest prefix V4 caches: a 2026 probe reports hits from about 1,024 tokens, in
#: multiples of 256 (the 2024 launch said 64-token units; unconfirmed either way).
MIN_PREFIX_TOKENS = 1024
#: How often a warm-up's wait looks at the run's stop event.
_STOP_POLL = 0.1
#: Seconds waited after the warm-up for DeepSeek to build the unit ("construction takes seconds").
WARM_WAIT = 3.0
#: The fewest requests of the window that must share a prefix for warming to pay for itself.
MIN_SHARING = 3
#: The request fields that shape the cached prefix, besides the messages (tools render
#: before them; the cache is per model and per ``user_id``).
CONTEXT_KEYS = ("model", "tools", "user_id")

T = TypeVar("T")


@dataclass(frozen=True)
class WarmPrefix:
    """How a pool warms the prefix: ``DeepSeekPool(warm_prefix=WarmPrefix(wait=5))``.

    :param wait: seconds to wait after the two warm-up requests for the unit to be built.
    :param min_tokens: the shortest shared prefix worth warming (estimated tokens).
    """

    wait: float = WARM_WAIT
    min_tokens: int = MIN_PREFIX_TOKENS

    def __post_init__(self) -> None:
        if not self.wait >= 0:
            raise ValueError(f"WarmPrefix wait must be >= 0 seconds, got {self.wait!r}")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise ValueError(f"WarmPrefix min_tokens must be an int >= 0, got {self.min_tokens!r}")


@dataclass(frozen=True)
class Prefix:
    """The leading messages and context that requests share, with an estimate of its tokens."""

    messages: Tuple[Mapping[str, Any], ...]
    context: Mapping[str, Any]
    tokens: int
    sharing: int  # how many requests of the window carry it
    next_role: str  # the role of what follows it, for the warm-up's one-character turn


class Warmer(Protocol):
    """What warming needs of its pool (a :class:`~deepseek_pool.pool.pool.DeepSeekPool`)."""

    _closing: threading.Event

    def submit(self, messages: Messages, **params: Unpack[SubmitParams]) -> cf.Future[ChatCompletion]: ...

    def abort(self, future: cf.Future[Any]) -> bool: ...


def estimate(messages: Sequence[Mapping[str, Any]], context: Mapping[str, Any]) -> int:
    """Tokens of a prefix, as close as cheaply known: DeepSeek's tokenizer if installed, else
    UTF-8 bytes / 4 (about right for English, 0.75 a Chinese character against ~0.6)."""
    exact = exact_token_counter()
    texts = [json.dumps(list(messages), ensure_ascii=False, default=str)]
    if context.get("tools"):
        texts.append(json.dumps(context["tools"], ensure_ascii=False, default=str))
    if exact is not None:
        return sum(exact(text) for text in texts)
    return sum(len(text.encode("utf-8", "surrogatepass")) for text in texts) // 4


def _context_key(params: Mapping[str, Any]) -> str:
    return json.dumps({k: params.get(k) for k in CONTEXT_KEYS}, sort_keys=True, default=str)


def shared_prefix(requests: Iterable[Any], min_sharing: int = MIN_SHARING) -> Optional[Prefix]:
    """The leading messages shared by the largest group of chat ``requests`` with one context
    and one first message.

    None when fewer than ``min_sharing`` requests share a non-empty prefix. Requests that
    are not valid chat requests are left out (the pool reports them as usual).
    """
    groups: Dict[str, List[Tuple[List[Mapping[str, Any]], Dict[str, Any]]]] = {}
    for request in requests:
        try:
            _custom_id, messages, params, endpoint = route_request(request)
            if endpoint != "chat":
                continue
            listed = normalize_messages(messages)
        except (TypeError, ValueError):
            continue
        # Grouped by their first message too, so one odd request does not hide what the rest share.
        key = _context_key(params) + json.dumps(listed[0], sort_keys=True, default=str)
        groups.setdefault(key, []).append((listed, params))
    if not groups:
        return None
    group = max(groups.values(), key=len)
    if len(group) < min_sharing:
        return None
    first = group[0][0]
    length = len(first)
    for listed, _params in group[1:]:
        length = min(length, len(listed))
        while length and listed[:length] != first[:length]:
            length -= 1
    leading = tuple(first[:length])
    following = [listed[length]["role"] for listed, _ in group if len(listed) > length]
    next_role = following[0] if following and following[0] in ("user", "system") else "user"
    context = {k: group[0][1][k] for k in CONTEXT_KEYS if group[0][1].get(k) is not None}
    return Prefix(leading, context, estimate(leading, context), len(group), next_role)


def _answered(pool: Warmer, future: cf.Future[ChatCompletion], stop: Optional[threading.Event]) -> bool:
    """Wait for a warm-up; False when ``stop`` was set first (the warm-up is aborted, unsent if it
    still waited, for instance for off-peak hours)."""
    if stop is None:
        future.result()
        return True
    while True:
        try:
            future.result(timeout=_STOP_POLL)
            return True
        except cf.TimeoutError:
            if stop.is_set():
                pool.abort(future)
                return False


def warm(pool: Warmer, prefix: Prefix, settings: WarmPrefix, stop: Optional[threading.Event] = None) -> bool:
    """Send the two warm-up requests one after the other, then wait for the unit to be built.

    Two different one-character turns, so the prefix (not a whole warm-up prompt) is what
    the two share. True when both completed; a failure is logged and the batch goes on cold.
    """
    started = time.monotonic()
    params = cast(SubmitParams, {**prefix.context, "max_tokens": 1, "cache": False})  # must reach DeepSeek
    for turn in ("1", "2"):
        messages = [*prefix.messages, {"role": prefix.next_role, "content": turn}]
        try:
            if not _answered(pool, pool.submit(messages, **params), stop):
                log.info("warming the prompt cache stopped: the run is draining")
                return False
        except Exception as err:  # the batch itself will meet and report the same trouble
            log.warning("warming the prompt cache failed (%s: %s); the batch starts cold", type(err).__name__, err)
            return False
    deadline = time.monotonic() + settings.wait
    while (left := deadline - time.monotonic()) > 0:
        if pool._closing.wait(min(left, 0.1)) or (stop is not None and stop.is_set()):
            break
    log.info(
        "warmed the prompt cache with a shared prefix of about %d tokens (%d messages) in %.1f s",
        prefix.tokens,
        len(prefix.messages),
        time.monotonic() - started,
    )
    return True


def warm_first(
    pool: Warmer, requests: Iterable[T], window: int, settings: WarmPrefix, stop: Optional[threading.Event] = None
) -> Iterator[T]:
    """``requests`` unchanged, once the prefix shared by its first ``window`` items is warmed."""
    source = iter(requests)
    head = list(itertools.islice(source, window))
    prefix = shared_prefix(head)
    if stop is not None and stop.is_set():
        pass  # a drained run sends nothing more, warm-ups included
    elif prefix is None:
        log.warning("warm_prefix: the first %d requests share no leading messages; not warming", len(head))
    elif all(in_cache(pool, request) for request in head):  # type: ignore[arg-type]
        log.info("warm_prefix: the response cache answers the first %d requests; not warming", len(head))
    elif prefix.tokens < settings.min_tokens:
        log.warning(
            "warm_prefix: the shared prefix is about %d tokens, below the %d DeepSeek caches; not warming",
            prefix.tokens,
            settings.min_tokens,
        )
    else:
        warm(pool, prefix, settings, stop)
    yield from head
    yield from source
