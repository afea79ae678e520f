"""Where README.rst has long documented it: :class:`RedisStorage` lives in :mod:`deepseek_pool.budget.redis_storage`."""

from .budget.redis_storage import RedisStorage

__all__ = ["RedisStorage"]
