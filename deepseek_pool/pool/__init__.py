"""The pool: many chat calls at once from synchronous code, on a ``ThreadPoolExecutor``.

Owns :class:`~deepseek_pool.pool.pool.DeepSeekPool` (submit, ``as_completed``, ``map``, the
bounded window, drain and close), what it is given and gives back
(:mod:`~deepseek_pool.pool.items`), and each pool call's control, which feeds the limiter
and the spend cap from the client's attempts (:mod:`~deepseek_pool.pool.call`; it names
what it needs of the pool as a Protocol, so the pool imports its calls and never the
other way round).

May import: :mod:`deepseek_pool.client`, :mod:`deepseek_pool.wire` (a call's control),
:mod:`deepseek_pool.budget`, :mod:`deepseek_pool.money` and the foundation modules
(:mod:`deepseek_pool.errors`, :mod:`~deepseek_pool.types`, :mod:`~deepseek_pool.messages`, :mod:`~deepseek_pool.params`,
:mod:`~deepseek_pool.models`, :mod:`~deepseek_pool.forks`, :mod:`~deepseek_pool.process`).
Never the batch runner or the CLI, which stand on it.
"""
