"""The limiters of one process that share a storage object and a budget name.

A release by any of them wakes the head waiter of each, as a release of their own would:
a waiter of one limiter must not sleep out its timeout while a sharer's slot is free.
Other processes' releases cannot wake it; a waiter polls a shared storage for those.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Dict, Tuple

from .storage import Storage

__all__ = ["Peers", "peers_of"]


class Peers:
    """The limiters of one storage object and name in this process.

    ``members`` is replaced, never changed in place, so a release reads it without a lock.
    """

    __slots__ = ("lock", "members")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.members: Tuple[weakref.ReferenceType[Any], ...] = ()

    def join(self, limiter: Any) -> None:
        with self.lock:
            alive = tuple(ref for ref in self.members if ref() is not None)
            self.members = (*alive, weakref.ref(limiter))


_PEERS: weakref.WeakKeyDictionary[Storage, Dict[str, Peers]] = weakref.WeakKeyDictionary()
_PEERS_LOCK = threading.Lock()


def peers_of(storage: Storage, name: str) -> Peers:
    with _PEERS_LOCK:
        by_name = _PEERS.setdefault(storage, {})
        peers = by_name.get(name)
        if peers is None:
            peers = by_name[name] = Peers()
        return peers
