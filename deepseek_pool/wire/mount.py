"""Where a client's session sends: a :class:`~deepseek_pool.wire.adapter.DeepSeekAdapter` sized to its threads.

The pool of connections must hold as many as the threads sharing the client can use, or
urllib3 opens and discards the others. On the client's own session that means mounting an
adapter of that size; on a session the user gave, nothing is mounted (their other requests
keep their routes, and a tool's scheme-wide adapter, betamax's, still applies), and the
adapter requests picks is only checked. :class:`SizedConnections` is the client's side of
it: the pool grows with the threads that share the client (pools add up).
"""

from __future__ import annotations

import logging
import threading

import requests
from urllib3.util.retry import Retry

from ..errors import ConfigurationError
from .adapter import DeepSeekAdapter
from .attempts import NO_RETRIES

__all__ = ["SizedConnections", "mount_adapter"]

log = logging.getLogger(__name__)

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


class SizedConnections:
    """A client's connection pool, grown to the threads that share it (a mixin of the client).

    The client sets ``session``, ``base_url`` and ``_owns_session`` first, then calls
    :meth:`_size_connections`.
    """

    session: requests.Session
    base_url: str
    _owns_session: bool

    def _size_connections(self, pool_maxsize: int) -> None:
        self._lock = threading.Lock()
        self.pool_maxsize = 0
        self._base_pool_maxsize = pool_maxsize
        self._reserved = 0
        self._hinted = False
        self._mount(pool_maxsize)

    def _mount(self, pool_maxsize: int) -> None:
        """Size the connection pool to ``pool_maxsize`` (see :func:`mount_adapter`)."""
        self.pool_maxsize = mount_adapter(self.session, self.base_url, pool_maxsize, owned=self._owns_session)

    def _grow(self, threads: int) -> None:
        """Serve ``threads`` callers: grow the own session's pool, or say what a given session's lacks."""
        if threads <= self.pool_maxsize:
            return
        if self._owns_session:
            self._mount(threads)
        elif not self._hinted:
            self._hinted = True
            log.warning(
                "%d threads share a session whose adapter for %s keeps %d connections: urllib3 will open and "
                "discard the others. Mount one sized to them: session.mount(%r, "
                "deepseek_pool.DeepSeekAdapter(pool_maxsize=%d))",
                threads,
                self.base_url,
                self.pool_maxsize,
                self.base_url,
                threads,
            )

    def ensure_pool_size(self, threads: int) -> None:
        """Grow the connection pool to serve ``threads`` concurrent calls without discarding connections."""
        with self._lock:
            self._grow(threads)

    def reserve_connections(self, threads: int) -> None:
        """Add ``threads`` to the callers sharing this client (a pool's workers), growing the pool.

        Pools that share a client add up: two pools of 40 workers need 80 connections,
        else urllib3 discards the connections it cannot keep. Hand them back with
        :meth:`release_connections`.
        """
        with self._lock:
            self._reserved += threads
            self._grow(max(self._base_pool_maxsize, self._reserved))

    def release_connections(self, threads: int) -> None:
        """Those ``threads`` no longer use the client (the pool stays as large as it grew)."""
        with self._lock:
            self._reserved = max(0, self._reserved - threads)
