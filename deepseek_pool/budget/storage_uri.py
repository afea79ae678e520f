"""Which storage a URI names, as Celery's broker URLs and Flask-Limiter's ``storage_uri`` do.

``memory://`` (the default: this limiter alone), ``sqlite:////abs/path.db`` (processes on
one machine), ``redis://`` and ``rediss://`` (machines;
:mod:`deepseek_pool.budget.redis_storage`, imported only when used, extra
``deepseek-pool[redis]``; a ready ``redis.Redis`` client is wrapped too), and others
registered with :func:`register_scheme`. The one module that knows every storage: the
storages import only their interface (:mod:`~deepseek_pool.budget.storage`), never this.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Dict, List

from ..errors import ConfigurationError
from .storage import MemoryStorage, Storage

__all__ = ["register_scheme", "storage_from_uri"]


_SCHEMES: Dict[str, Callable[[str, Dict[str, Any]], Storage]] = {}


def register_scheme(scheme: str, factory: Callable[[str, Dict[str, Any]], Storage]) -> None:
    """Make ``scheme://...`` URIs build storages with ``factory(uri, options)``."""
    _SCHEMES[scheme] = factory


def storage_from_uri(uri: Any, **options: Any) -> Storage:
    """A :class:`Storage` for ``uri`` (a Storage is returned as it is, a redis-py client wrapped)."""
    if isinstance(uri, Storage):
        return uri
    if type(uri).__module__.split(".", 1)[0] == "redis":  # a ready redis-py client, to wrap
        from .redis_storage import RedisStorage

        return RedisStorage(uri)
    if not isinstance(uri, str) or "://" not in uri:
        raise ConfigurationError(
            f"storage must be a URI such as 'memory://' or 'sqlite:////var/tmp/ds.db', or a Storage; got {uri!r}"
        )
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "memory":
        return MemoryStorage(options.get("clock", time.monotonic))
    if scheme == "sqlite":
        from .sqlite_storage import SQLiteStorage

        return SQLiteStorage.from_uri(uri)
    if scheme in ("redis", "rediss") and scheme not in _SCHEMES:
        # Imported only when the scheme is used (extra [redis]): without redis-py, the error below.
        with contextlib.suppress(ImportError):
            from . import redis_storage  # noqa: F401

            register_scheme("redis", _redis_storage)
            register_scheme("rediss", _redis_storage)
    factory = _SCHEMES.get(scheme)
    if factory is None:
        known: List[str] = ["memory", "sqlite", *sorted(_SCHEMES)]
        hint = " (pip install 'deepseek-pool[redis]')" if scheme in ("redis", "rediss") else ""
        raise ConfigurationError(f"no limiter storage for {scheme}://{hint}; known: {', '.join(known)}")
    return factory(uri, options)


def _redis_storage(uri: str, options: Dict[str, Any]) -> Storage:
    from .redis_storage import RedisStorage

    return RedisStorage.from_uri(uri)
