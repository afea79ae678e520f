"""Where a client's session sends: a :class:`~deepseek_pool.wire.adapter.DeepSeekAdapter` sized to its threads.

The pool of connections must hold as many as the threads sharing the client can use, or
urllib3 opens and discards the others. On the client's own session that means mounting an
adapter of that size; on a session the user gave, nothing is mounted (their other requests
keep their routes, and a tool's scheme-wide adapter, betamax's, still applies), and the
adapter requests picks is only checked.
"""

from __future__ import annotations

import requests
from urllib3.util.retry import Retry

from ..errors import ConfigurationError
from .adapter import DeepSeekAdapter
from .attempts import NO_RETRIES

__all__ = ["mount_adapter"]

#: Where the client's own session mounts its adapter: everywhere, as requests mounts its own.
_SCHEMES = ("https://", "http://")


def mount_adapter(session: requests.Session, base_url: str, pool_maxsize: int, *, owned: bool) -> int:
    """Size the connection pool: on the client's own session, mount an adapter of ``pool_maxsize``.

    On a session the user gave (``owned`` false), mount nothing; only check that the
    adapter requests picks for ``base_url`` does not retry by itself. Returns the number of
    connections the pool now keeps.
    """
    if not owned:
        adapter = session.get_adapter(base_url)
        own_retries = getattr(adapter, "max_retries", None)
        if isinstance(own_retries, Retry) and own_retries.total not in (0, False, None):
            raise ConfigurationError(
                f"the adapter the session uses for {base_url!r} retries by itself ({own_retries!r}); every "
                "attempt would then be retried twice over. Mount it with max_retries=0 and set "
                "DeepSeekClient(max_retries=...) instead"
            )
        return getattr(adapter, "_pool_maxsize", pool_maxsize)
    adapter = DeepSeekAdapter(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=NO_RETRIES)
    old = {session.adapters.get(prefix) for prefix in _SCHEMES}
    for prefix in _SCHEMES:
        session.mount(prefix, adapter)
    for previous in old:
        if previous is not None and previous is not adapter:
            previous.close()
    return pool_maxsize
