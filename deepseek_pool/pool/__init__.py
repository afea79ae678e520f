"""The pool: many chat calls at once from synchronous code, on a ``ThreadPoolExecutor``.

Owns :class:`~deepseek_pool.pool.pool.DeepSeekPool` (submit, ``as_completed``, ``map``,
its counters, drain and close), the bounded window behind ``as_completed``
(:mod:`~deepseek_pool.pool.window`), the one-call worker that checks a call, waits for the
limits, calls the client and accounts (:mod:`~deepseek_pool.pool.worker`), what the pool is
given and gives back (:mod:`~deepseek_pool.pool.items`), and each pool call's control,
which feeds the limiter and the spend cap from the client's attempts
(:mod:`~deepseek_pool.pool.call`), and the warming of DeepSeek's prompt cache before a
batch fans out (:mod:`~deepseek_pool.pool.warming`). The window, the worker and the call each name what they
need of the pool as a Protocol, so the pool imports them and never the other way round.

May import: :mod:`deepseek_pool.client`, :mod:`deepseek_pool.wire` (a call's control),
:mod:`deepseek_pool.budget`, :mod:`deepseek_pool.money`, :mod:`deepseek_pool.cache` (a call
is looked up in the response cache before it takes its limits) and the foundation modules
(:mod:`deepseek_pool.errors`, :mod:`~deepseek_pool.types`, :mod:`~deepseek_pool.messages`, :mod:`~deepseek_pool.params`,
:mod:`~deepseek_pool.models`, :mod:`~deepseek_pool.forks`, :mod:`~deepseek_pool.process`).
Never the batch runner or the CLI, which stand on it.
"""
