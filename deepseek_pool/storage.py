"""Where a :class:`~deepseek_pool.Limiter`'s budget lives: this process, this machine, or further.

A storage keeps one :class:`~deepseek_pool.budget.BudgetState` per budget name and runs
the limiter's rules on it atomically. The interface is small, so that users' own
storages plug in:

* :meth:`Storage.transaction` -- a context manager that yields the state of one
  budget, locked against every other sharer, and saves it when the block ends;
* :meth:`Storage.clock` -- the clock every sharer agrees on (lease expiries and
  cool-downs are in it);
* :attr:`Storage.shared` -- whether other processes change the state (then a waiting
  limiter polls, as no release of theirs can wake it);
* :attr:`Storage.leases_expire` -- whether leases must be renewed (a storage that dies
  with its process needs no expiry);
* :meth:`Storage.close` and :meth:`Storage.after_fork`.

Storages are chosen by URI, as Celery's broker URLs and Flask-Limiter's ``storage_uri``
are (:func:`storage_from_uri`): ``memory://`` (the default: this limiter alone),
``sqlite:////abs/path.db`` (processes on one machine), and others registered with
:func:`register_scheme` (``redis://``, from its own extra).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Dict, Iterator, List

from .budget import BudgetState, Lease
from .errors import ConfigurationError

__all__ = ["MemoryStorage", "Storage", "register_scheme", "storage_from_uri"]


class Storage:
    """The interface every storage implements (see the module docstring)."""

    #: other processes may change the state: waiters poll it
    shared = False
    #: leases expire unless renewed (a process that dies gives its slots back)
    leases_expire = False

    def clock(self) -> float:
        """Seconds on the clock every sharer of this storage agrees on."""
        raise NotImplementedError

    def transaction(self, name: str) -> contextlib.AbstractContextManager[BudgetState]:
        """The state of budget ``name``, held exclusively until the block ends, then saved."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and files (the state stays, for the other sharers)."""

    def after_fork(self) -> None:
        """In a forked child: drop what the parent's connections and threads held."""


class _MemoryState(BudgetState):
    """A budget held in this process; its leases never expire (they die with the process)."""

    def __init__(self) -> None:
        super().__init__()
        self.leases: Dict[str, Lease] = {}

    def alive(self, now: float) -> int:
        return len(self.leases)

    def add(self, lease: Lease) -> None:
        self.leases[lease.id] = lease

    def drop(self, lease_id: str) -> bool:
        return self.leases.pop(lease_id, None) is not None

    def renew(self, lease_ids: Any, expires: float) -> None:
        pass


class MemoryStorage(Storage):
    """Budgets in this process's memory, behind one lock: the fast default.

    ``storage="memory://"`` gives each limiter a storage of its own; to share one budget
    between limiters of a process, share the Limiter (or pass one MemoryStorage to each).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._states: Dict[str, _MemoryState] = {}

    def clock(self) -> float:
        return self._clock()

    @contextlib.contextmanager
    def transaction(self, name: str) -> Iterator[BudgetState]:
        with self._lock:
            state = self._states.get(name)
            if state is None:
                state = self._states[name] = _MemoryState()
            yield state

    def after_fork(self) -> None:
        # The parent's calls do not run in the child: their slots are not the child's.
        self._lock = threading.Lock()
        for state in self._states.values():
            state.leases.clear()

    def __repr__(self) -> str:
        return "MemoryStorage()"


_SCHEMES: Dict[str, Callable[[str, Dict[str, Any]], Storage]] = {}


def register_scheme(scheme: str, factory: Callable[[str, Dict[str, Any]], Storage]) -> None:
    """Make ``scheme://...`` URIs build storages with ``factory(uri, options)``."""
    _SCHEMES[scheme] = factory


def storage_from_uri(uri: Any, **options: Any) -> Storage:
    """A :class:`Storage` for ``uri`` (a Storage is returned as it is)."""
    if isinstance(uri, Storage):
        return uri
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
    factory = _SCHEMES.get(scheme)
    if factory is None:
        known: List[str] = ["memory", "sqlite", *sorted(_SCHEMES)]
        hint = " (pip install 'deepseek-pool[redis]')" if scheme in ("redis", "rediss") else ""
        raise ConfigurationError(f"no limiter storage for {scheme}://{hint}; known: {', '.join(known)}")
    return factory(uri, options)
