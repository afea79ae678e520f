"""The interpreter's thread switch interval, raised while a large pool is open.

CPython lets a thread that waits for the GIL ask the running one to hand it over every
``sys.getswitchinterval()`` seconds (5 ms by default). A pool of thousands of threads
that mostly wait on sockets does not mind, until a wave of answers makes hundreds of them
runnable at once: then every waiter forces a switch every 5 ms, the process spends its
time handing the GIL around (system time in futex calls), answers are read later, more
threads pile up, and it does not recover. Measured at 2,500 workers
(``python -m benchmarks.run --cells C=2500@2s``, 2 cores): about half the runs took
2-5 times as long as the urllib3 floor's at 4-20 times its CPU; with a 50 ms interval,
none did; and 250 streams of events 20 ms apart (``--cells S=250``) cost about a tenth
less CPU per event. The threads of an I/O-bound pool give up the GIL at their next socket wait
long before 50 ms, so the longer interval costs them nothing; it can delay a thread
that competes with a CPU-bound one (up to 50 ms instead of 5).

A :class:`~deepseek_pool.DeepSeekPool` holds the interval raised from its start to its
``close`` (``switch_interval="auto"``: from :data:`AUTO_FROM_WORKERS` workers); the last
holder puts the old value back, unless someone else changed it meanwhile.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from typing import Optional, Set, Union

__all__ = ["AUTO_FROM_WORKERS", "SWITCH_INTERVAL", "hold", "release", "wanted_interval"]

log = logging.getLogger(__name__)

#: The interval a large pool raises the interpreter's to, in seconds.
SWITCH_INTERVAL = 0.05
#: ``switch_interval="auto"`` raises it for pools of at least this many workers.
AUTO_FROM_WORKERS = 128

_lock = threading.Lock()
_holders: Set[object] = set()
_before: Optional[float] = None  # the interval before the first holder came
_set_to: Optional[float] = None  # what the holders set it to, if they did


def wanted_interval(option: Union[str, float, None], max_workers: int) -> Optional[float]:
    """The interval a pool with ``switch_interval=option`` asks for (None: leave it alone)."""
    if option is None:
        return None
    if option == "auto":
        return SWITCH_INTERVAL if max_workers >= AUTO_FROM_WORKERS else None
    if isinstance(option, bool) or not isinstance(option, (int, float)) or not (0 < option < math.inf):
        raise ValueError(f'switch_interval must be "auto", None or a number of seconds > 0, got {option!r}')
    return float(option)


def hold(interval: float) -> object:
    """Raise the interpreter's switch interval to at least ``interval``; give the token to :func:`release`."""
    global _before, _set_to
    token = object()
    with _lock:
        if not _holders:
            _before, _set_to = sys.getswitchinterval(), None
        _holders.add(token)
        if sys.getswitchinterval() < interval:
            sys.setswitchinterval(interval)
            _set_to = sys.getswitchinterval()
            log.info("thread switch interval raised to %g s while a large pool is open", interval)
    return token


def release(token: object) -> None:
    """The holder is done; the last one puts the old interval back, unless someone else changed it since."""
    global _before, _set_to
    with _lock:
        if token not in _holders:
            return
        _holders.discard(token)
        if _holders:
            return
        if _set_to is not None and _before is not None and sys.getswitchinterval() == _set_to:
            sys.setswitchinterval(_before)
        _before = _set_to = None
