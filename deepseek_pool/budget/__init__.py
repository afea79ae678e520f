"""The budget: one account's limits (in flight, rpm, tpm, the adaptive cap) shared by its callers.

Owns :class:`~deepseek_pool.budget.limiter.Limiter` (acquire and release, waits and
wake-ups), the rules of a budget as pure functions over its state
(:mod:`~deepseek_pool.budget.rules`), and the storages that hold that state for one
process, one machine (sqlite) or many (Redis).

May import: the standard library, redis-py (only in :mod:`~deepseek_pool.budget.redis_storage`),
and the foundation modules (:mod:`deepseek_pool.errors`, :mod:`~deepseek_pool.forks`). It
knows nothing of HTTP, the client or the pool: a limiter is told what happened (a start,
an end, a 429), never asked to look.
"""
