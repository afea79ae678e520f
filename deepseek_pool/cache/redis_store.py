"""``redis://host:port/db``: cached answers that every machine reaching one Redis shares.

Needs redis-py (``pip install 'deepseek-pool[redis]'``); imported only when a ``redis://``
or ``rediss://`` cache is asked for. An entry is one string key,
``deepseek-pool:response:<key>`` (``?prefix=`` changes the prefix), written with one ``SET``
(so a reader sees a whole entry or none) and given the cache's TTL as its Redis expiry,
so Redis itself forgets old answers. ``clear()`` deletes the keys under the prefix with
``SCAN`` and ``UNLINK``. Other query parameters are redis-py's (``socket_timeout`` ...).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import redis
import redis.exceptions

from ..errors import ConfigurationError
from .stores import CacheStore, redact, split_options

__all__ = ["DEFAULT_PREFIX", "RedisStore"]

#: Where entries live in Redis, before the key.
DEFAULT_PREFIX = "deepseek-pool:response:"
#: Seconds to wait for Redis before a call goes on without the cache (a miss, and a warning).
DEFAULT_SOCKET_TIMEOUT = 5.0


class RedisStore(CacheStore):
    """Entries in Redis under ``prefix``; ``client`` is a ``redis.Redis`` (closed here only if made here)."""

    def __init__(self, client: Any, *, prefix: str = DEFAULT_PREFIX, name: Optional[str] = None) -> None:
        self.client = client
        self.prefix = prefix
        self.name = name or "redis"
        self._owns_client = False

    @classmethod
    def from_uri(cls, uri: str) -> RedisStore:
        url, options = split_options(uri, ("prefix",))
        try:
            client = redis.Redis.from_url(url)
        except (ValueError, TypeError) as err:
            raise ConfigurationError(f"cannot use {redact(uri)!r} as a response cache: {err}") from None
        pool_options = client.connection_pool.connection_kwargs
        pool_options.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        pool_options.setdefault("socket_connect_timeout", DEFAULT_SOCKET_TIMEOUT)
        store = cls(client, prefix=options.get("prefix", DEFAULT_PREFIX), name=redact(uri))
        store._owns_client = True
        return store

    def check(self) -> None:
        probe = f"{self.prefix}probe"
        try:
            self.client.set(probe, b"1", px=10_000)
            self.client.get(probe)
            self.client.delete(probe)
        except redis.exceptions.RedisError as err:
            raise ConfigurationError(f"cannot use {self.name!r} as a response cache: {err}") from None

    def get(self, key: str) -> Optional[bytes]:
        value = self.client.get(self.prefix + key)
        return None if value is None else bytes(value)

    def put(self, key: str, value: bytes, ttl: Optional[float]) -> None:
        expiry = None if ttl is None else max(1, math.ceil(ttl))
        self.client.set(self.prefix + key, value, ex=expiry)

    def delete(self, key: str) -> None:
        self.client.delete(self.prefix + key)

    def clear(self) -> int:
        count = 0
        batch = []
        for name in self.client.scan_iter(match=_glob_escape(self.prefix) + "v*", count=500):
            batch.append(name)
            if len(batch) >= 500:
                count += self.client.unlink(*batch)
                batch = []
        if batch:
            count += self.client.unlink(*batch)
        return count

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


def _glob_escape(text: str) -> str:
    """``text`` matched literally by Redis's glob patterns."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
