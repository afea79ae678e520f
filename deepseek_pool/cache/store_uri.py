"""Which cache store a URI names, as :mod:`deepseek_pool.budget.storage_uri` does for the limiter.

The one module that knows every store: ``memory://``, ``sqlite:///...`` (:mod:`~deepseek_pool.cache.stores`)
and ``redis://`` / ``rediss://`` (:mod:`~deepseek_pool.cache.redis_store`, imported only when used).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from .stores import CacheStore, MemoryStore, SQLiteStore, redact

__all__ = ["store_from_uri"]


def store_from_uri(uri: Any) -> CacheStore:
    """The :class:`CacheStore` ``uri`` names (a store is returned as it is), opened and checked."""
    if isinstance(uri, CacheStore):
        return uri
    if not isinstance(uri, str) or "://" not in uri:
        raise ConfigurationError(
            f"a response cache is a URI such as 'sqlite:////var/tmp/ds-cache.db' or 'redis://host:6379/0'; got {uri!r}"
        )
    scheme = uri.split("://", 1)[0].lower()
    store: CacheStore
    if scheme == "memory":
        store = MemoryStore()
    elif scheme == "sqlite":
        store = SQLiteStore.from_uri(uri)
    elif scheme in ("redis", "rediss"):
        try:
            from .redis_store import RedisStore
        except ImportError:
            raise ConfigurationError(
                f"cannot use {redact(uri)!r} as a response cache: redis-py is not installed "
                "(pip install 'deepseek-pool[redis]')"
            ) from None
        store = RedisStore.from_uri(uri)
    else:
        raise ConfigurationError(
            f"no response cache store for {scheme}:// (in {redact(uri)!r}); known: memory, sqlite, redis, rediss"
        )
    try:
        store.check()
    except BaseException:
        store.close()
        raise
    return store
