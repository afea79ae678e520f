"""Objects that must start afresh in a forked child (gunicorn ``--preload``, Celery prefork).

Threads do not survive ``fork()``, and sockets and database connections copied into the
child are the parent's. An object that holds any of them registers with
:func:`reset_after_fork`; its ``_after_fork()`` then runs in every forked child.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

__all__ = ["reset_after_fork"]

_OBJECTS: weakref.WeakSet[Any] = weakref.WeakSet()


def reset_after_fork(obj: Any) -> None:
    """Call ``obj._after_fork()`` in each forked child, for as long as ``obj`` lives."""
    _OBJECTS.add(obj)


def _in_child() -> None:
    for obj in list(_OBJECTS):
        obj._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_child)
