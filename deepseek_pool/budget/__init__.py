"""The budget: one account's limits (in flight, rpm, tpm, the adaptive cap) shared by its callers.

Owns :class:`~deepseek_pool.budget.limiter.Limiter` (acquire and release, the lease
renewer; its waits and wake-ups, :mod:`~deepseek_pool.budget.waiting`; the limiters of a
process that wake each other's waiters, :mod:`~deepseek_pool.budget.peers`) with its
:class:`~deepseek_pool.budget.permit.Permit` and stats (:mod:`~deepseek_pool.budget.permit`)
and its gates after a failure (:mod:`~deepseek_pool.budget.retries`: cool-down, the wait
before a retry, the retry budget); the rules of a budget as pure functions over its state
(:mod:`~deepseek_pool.budget.rules`, and those of its guaranteed shares,
:mod:`~deepseek_pool.budget.shares`); and the storages that hold that state for one process
(:mod:`~deepseek_pool.budget.storage`), one machine (:mod:`~deepseek_pool.budget.sqlite_storage`)
or many (:mod:`~deepseek_pool.budget.redis_storage` and its Lua,
:mod:`~deepseek_pool.budget.redis_scripts`), chosen by URI
(:mod:`~deepseek_pool.budget.storage_uri`, the one module that knows them all).

May import: the standard library, redis-py (only in :mod:`~deepseek_pool.budget.redis_storage`),
and the foundation modules (:mod:`deepseek_pool.errors`, :mod:`~deepseek_pool.forks`). It
knows nothing of HTTP, the client or the pool: a limiter is told what happened (a start,
an end, a 429), never asked to look.
"""
