"""The response cache: look a request up before sending it; keep its answer when it is complete.

Usage::

    cache = dp.ResponseCache("sqlite:////var/tmp/ds-cache.db", ttl=7 * 86400)
    client = dp.DeepSeekClient(cache=cache)
    client.chat("Name a colour.")            # sent, and stored
    client.chat("Name a colour.").cached     # True: not sent, $0
    client.chat("Name a colour.", cache=False)  # sent, neither looked up nor stored
    cache.clear()

What is stored: an answer that ended with a finish reason in
:data:`~deepseek_pool.cache.entries.COMPLETE_FINISH_REASONS`, with no error, and, when
streamed, read to ``data: [DONE]``. What is never stored: an error, a stream cut or left
early, an answer cut by the server or a filter, anything of the request's headers
(the API key included).

Failures never fail a call: a store that cannot be reached mid-run, or an entry that is
corrupt (cut, changed, under another key, not a complete answer), is a miss and a warning
in the log (the corrupt entry is removed), and the call is sent. Only opening the cache
checks the store and raises (:class:`~deepseek_pool.errors.ConfigurationError`).

Concurrent misses of one key are not coalesced: each sends its request (as it would
without a cache) and stores its answer; an entry is written in one step, so a reader sees
one whole answer or none, and the last writer's stays.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Tuple, Union

from ..errors import ConfigurationError
from ..types import ChatChunk, ChatCompletion, FIMCompletion
from .entries import COMPLETE_FINISH_REASONS, CorruptEntry, Entry, decode_entry, encode_entry
from .key import request_key
from .replay import CachedStream, replay_into
from .store_uri import store_from_uri
from .stores import CacheStore, redact, split_options

__all__ = ["CacheLike", "CacheLookup", "CacheStats", "ResponseCache", "open_cache"]

log = logging.getLogger(__name__)


class CacheStats(NamedTuple):
    """What a :class:`ResponseCache` did in this process."""

    hits: int
    misses: int
    stores: int
    #: entries found corrupt (each was a miss, and removed)
    corrupt: int
    #: reads and writes the store failed (each a miss, or an answer not kept)
    errors: int


class ResponseCache:
    """Answers DeepSeek gave, kept under a hash of the endpoint and the whole body as sent.

    :param store: where entries live: a URI (``memory://``, ``sqlite:////abs/path.db``,
        ``redis://host:6379/0``; ``?ttl=SECONDS`` in the URI sets ``ttl``) or a
        :class:`~deepseek_pool.cache.stores.CacheStore`. Opened and checked here: an unknown
        scheme or a store that cannot be read and written raises
        :class:`~deepseek_pool.errors.ConfigurationError` naming it.
    :param ttl: seconds an entry is served after it was stored (None: until cleared). Read
        at lookup, so a shorter ``ttl`` applies to older entries too; Redis also forgets an
        entry after it.
    :param clock: the wall clock entries are stamped and aged with (tests inject one).
    """

    def __init__(
        self, store: Union[str, CacheStore], *, ttl: Optional[float] = None, clock: Callable[[], float] = time.time
    ) -> None:
        if isinstance(store, str):
            store, options = split_options(store, ("ttl",))
            if ttl is None and "ttl" in options:
                ttl = _ttl(options["ttl"], redact(store))
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0):
            raise ConfigurationError(f"a response cache's ttl must be a number of seconds > 0, got {ttl!r}")
        self.ttl: Optional[float] = None if ttl is None or ttl == math.inf else float(ttl)
        self._owns_store = not isinstance(store, CacheStore)
        self.store: CacheStore = store_from_uri(store)
        self._clock = clock
        self._lock = threading.Lock()
        self._counts = [0, 0, 0, 0, 0]  # hits, misses, stores, corrupt, errors
        self._failing = False

    def __repr__(self) -> str:
        return f"ResponseCache({self.store.name!r}, ttl={self.ttl!r})"

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(*self._counts)

    def _count(self, which: int) -> None:
        with self._lock:
            self._counts[which] += 1

    def _failed(self, doing: str, err: Exception) -> None:
        self._count(4)
        if not self._failing:  # once per outage, not once per call
            self._failing = True
            log.warning(
                "response cache %s: cannot %s (%s: %s); calls go on without it",
                self.store.name,
                doing,
                type(err).__name__,
                err,
            )

    # -- the two steps of a call ---------------------------------------------------------

    def lookup(self, url: str, body: Mapping[str, Any], *, look: bool = True) -> CacheLookup:
        """The entry for posting ``body`` to ``url`` (``look=False``: only the key, for storing)."""
        key = request_key(url, body)
        return CacheLookup(self, key, self.get(key) if look else None, bool(body.get("stream")))

    def get(self, key: str) -> Optional[Entry]:
        """The fresh, whole entry under ``key``, or None (a miss)."""
        try:
            data = self.store.get(key)
        except Exception as err:  # the store's own errors: redis, sqlite, OS
            self._failed("read", err)
            self._count(1)
            return None
        self._failing = False
        if data is None:
            self._count(1)
            return None
        try:
            entry = decode_entry(key, data)
        except CorruptEntry as err:
            self._count(3)
            self._count(1)
            log.warning("response cache %s: entry %s is corrupt (%s): a miss; it is removed", self.store.name, key, err)
            try:
                self.store.delete(key)
            except Exception as failure:
                self._failed("remove a corrupt entry", failure)
            return None
        if self.ttl is not None and self._clock() - entry.stored_at >= self.ttl:
            self._count(1)
            return None
        self._count(0)
        return entry

    def holds(self, url: str, body: Mapping[str, Any]) -> bool:
        """Whether a fresh, whole answer for this request is stored (a peek: counted nowhere, never raises)."""
        key = request_key(url, body)
        try:
            data = self.store.get(key)
            entry = None if data is None else decode_entry(key, data)
        except Exception:  # unreachable, corrupt: the call itself will say so, once
            return False
        return entry is not None and (self.ttl is None or self._clock() - entry.stored_at < self.ttl)

    def put(self, key: str, answer: Any, *, streamed: bool) -> bool:
        """Keep ``answer`` under ``key`` if it is complete; True when it was stored."""
        if getattr(answer, "cached", False) or answer.finish_reason not in COMPLETE_FINISH_REASONS:
            return False
        data = encode_entry(key, answer.raw, getattr(answer, "request_id", None), self._clock(), streamed)
        try:
            self.store.put(key, data, self.ttl)
        except Exception as err:
            self._failed("write", err)
            return False
        self._failing = False
        self._count(2)
        return True

    def clear(self) -> int:
        """Remove every entry of the store (other processes' too); return how many there were."""
        return self.store.clear()

    def close(self) -> None:
        """Let go of the store's connections, if this cache opened it (the entries stay)."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class CacheLookup:
    """One call's look in the cache: its key, the entry found (``hit``), and where to keep its answer."""

    __slots__ = ("cache", "hit", "key", "streamed")

    def __init__(self, cache: ResponseCache, key: str, hit: Optional[Entry], streamed: bool) -> None:
        self.cache = cache
        self.key = key
        self.hit = hit
        self.streamed = streamed

    def chat(self, on_chunk: Optional[Callable[[ChatChunk], None]] = None) -> ChatCompletion:
        """The cached chat answer (``cached`` set); a streamed one is first shown to ``on_chunk`` as chunks."""
        assert self.hit is not None
        completion = ChatCompletion(self.hit.raw, self.hit.request_id)
        completion.cached = True
        return replay_into(completion, on_chunk if self.hit.streamed else None)

    def fim(self) -> FIMCompletion:
        """The cached FIM answer (``cached`` set)."""
        assert self.hit is not None
        completion = FIMCompletion(self.hit.raw)
        completion.cached = True
        return completion

    def stream(self) -> CachedStream:
        """The cached streamed answer as a stream of chunks."""
        return CachedStream(self.chat())

    def store(self, answer: Any) -> None:
        """Keep ``answer`` if it is complete (the cache's rule); a failure is logged, never raised."""
        self.cache.put(self.key, answer, streamed=self.streamed)


#: What ``cache=`` takes: a URI, a store, a :class:`ResponseCache`, or None/False for none.
CacheLike = Union[None, bool, str, CacheStore, ResponseCache]


def open_cache(cache: CacheLike) -> Tuple[Optional[ResponseCache], bool]:
    """The cache ``cache=`` names, and whether the caller opened it here (then it closes it)."""
    if cache is None or cache is False:
        return None, False
    if isinstance(cache, ResponseCache):
        return cache, False
    if cache is True:
        raise ConfigurationError("cache=True names no store: give a URI such as 'sqlite:////var/tmp/ds-cache.db'")
    return ResponseCache(cache), True


def _ttl(text: str, uri: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigurationError(f"ttl in {uri!r} must be a number of seconds, got {text!r}") from None
