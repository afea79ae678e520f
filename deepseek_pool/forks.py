"""Objects that must start afresh in a new process, however it was forked.

Threads do not survive ``fork()``, and sockets and database connections copied into the
child are the parent's: a child that read from a pooled connection of its parent could
take the answer to the parent's request. Python's ``os.fork`` runs the hooks of
``os.register_at_fork``; a fork from C (uWSGI's default mode, a C extension) runs none,
and leaves thread objects that report alive but do not exist, and locks held by threads
that are gone. So a process-bound object is a :class:`ProcessBound`: it records the
process it belongs to (:func:`reset_after_fork`) and each of its entry points calls
:meth:`~ProcessBound._check_process` first, which runs its ``_after_fork()`` once in any
process that is not the one recorded. The fork hook still runs the same check in a child
forked by Python, so nothing waits for first use there.

A process id names a process only inside its PID namespace, on one boot of one machine:
containers that share a hostname (a pod's sidecars, ``docker --network host``) each count
their pids from 1. :func:`pid_scope` names the space a pid belongs to, so that shared
state on a host (the sqlite budget's leases) checks only pids it can see.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Dict, Optional

__all__ = ["ProcessBound", "current", "pid_scope", "reset_after_fork"]

_OBJECTS: weakref.WeakSet[Any] = weakref.WeakSet()
#: One lock per process id, made in the process that uses it: a lock copied by a fork may
#: be held by a thread that is not in the child.
_RESET_LOCKS: Dict[int, threading.RLock] = {}

#: The id of the calling process. On Linux a real ``getpid(2)`` (no cache since glibc 2.25),
#: about 0.25 us: a few per call, against calls of milliseconds. A value kept by the fork
#: hook would be cheaper, but a fork from C would never update it.
current = os.getpid


def pid_scope() -> Optional[str]:
    """Where this process's pid means what ``kill(pid, 0)`` here says: ``boot id/pid namespace``.

    Two processes with the same scope see the same pids, so one can tell whether the
    other is alive. None where that cannot be known (no ``/proc``: not Linux, or a
    ``/proc`` of another namespace): the caller then treats every other process as one
    it cannot check. Read each time (two small files); callers keep it per process.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
        # /proc/self of a /proc mounted for another namespace is not this process.
        if not boot_id or int(os.readlink("/proc/self")) != os.getpid():
            return None
    except (OSError, ValueError):
        return None
    return f"{boot_id}/pid:{namespace}"


class ProcessBound:
    """Something that holds threads, sockets or connections of the process that made it.

    A subclass calls :func:`reset_after_fork` once made, gives ``_after_fork()`` (drop
    what the parent's threads and connections held, never sending anything on them), and
    calls :meth:`_check_process` first thing at each entry point, before any lock of its own.
    """

    _process_id: Optional[int] = None

    def _check_process(self) -> None:
        """Start afresh if this is not the process the object was made or last reset in."""
        if self._process_id != current():
            _start_afresh(self)

    def _after_fork(self) -> None:
        """In a new process: forget the parent's threads, locks and connections."""


def reset_after_fork(obj: ProcessBound) -> None:
    """Bind ``obj`` to this process; in any other it runs ``obj._after_fork()`` once, at its first use
    or at once in a child of ``os.fork``, for as long as ``obj`` lives."""
    obj._process_id = current()
    _OBJECTS.add(obj)


def _start_afresh(obj: ProcessBound) -> None:
    pid = current()
    lock = _RESET_LOCKS.get(pid) or _RESET_LOCKS.setdefault(pid, threading.RLock())
    with lock:  # reentrant: a limiter's reset checks its storage
        if obj._process_id == pid:
            return  # another thread of this process did it meanwhile
        if obj._process_id is not None:  # None: never bound (a user's subclass); bind it now
            obj._after_fork()
        obj._process_id = pid


def _in_child() -> None:
    for obj in list(_OBJECTS):
        obj._check_process()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_child)
