"""The response cache: an answer DeepSeek already gave, served again for the very same request.

Opt-in (``DeepSeekClient(cache=...)``, ``DeepSeekPool(cache=...)``, ``deepseek-pool run
--cache URI``). Owns :class:`~deepseek_pool.cache.response_cache.ResponseCache` (look up,
store complete answers, expire, clear) and the lookup a call holds
(:class:`~deepseek_pool.cache.response_cache.CacheLookup`); the key, a versioned hash of
the endpoint and the whole body as sent (:mod:`~deepseek_pool.cache.key`); the entries'
bytes, checked on every read (:mod:`~deepseek_pool.cache.entries`); the stores, chosen by
URI as the limiter's storages are (:mod:`~deepseek_pool.cache.store_uri`, over
:mod:`~deepseek_pool.cache.stores`: memory and sqlite, and
:mod:`~deepseek_pool.cache.redis_store`, imported only for ``redis://``); and a cached
stream replayed as chunks (:mod:`~deepseek_pool.cache.replay`).

May import: the standard library, redis-py (only in :mod:`~deepseek_pool.cache.redis_store`),
the foundation modules (:mod:`deepseek_pool.errors`, :mod:`~deepseek_pool.types`,
:mod:`~deepseek_pool.forks`) and, for the class a replayed stream is,
:mod:`deepseek_pool.wire` (its :class:`~deepseek_pool.wire.stream.ChatStream`). The client
consults the cache; the cache knows no client, pool or budget.
"""
