"""Process-wide interpreter settings that a large pool raises while it is open.

Two of CPython's defaults suit a few busy threads making short-lived objects, and cost a
pool of thousands of threads that wait seconds on sockets more than its own work does:

* **The thread switch interval** (``sys.setswitchinterval``, 5 ms). A thread that waits
  for the GIL asks the running one to hand it over every interval. A pool that mostly
  waits on sockets does not mind, until a wave of answers makes hundreds of threads
  runnable at once: then every waiter forces a switch every 5 ms, the process spends its
  time handing the GIL around (system time in futex calls), answers are read later, more
  threads pile up, and it does not recover. Measured at 2,500 workers
  (``python -m benchmarks.run --cells C=2500@2s``, 2 cores): about half the runs took
  2-5 times as long as the urllib3 floor's at 4-20 times its CPU; with a 50 ms interval,
  none did. Threads that wait on sockets give the GIL up at their next read long before
  50 ms, so they lose nothing; a thread that competes with a CPU-bound one may wait up to
  50 ms instead of 5.
* **The collector's first threshold** (``gc.set_threshold``, 700). The cyclic collector
  walks its youngest objects every 700 net allocations of containers, and every tenth
  time the next generation too. Each call in flight holds about ninety such objects (its
  future, its result, its response and buffers) for the seconds its answer takes, so at
  2,500 calls in flight the collections, spread over the whole batch, keep walking and
  promoting the calls started since the last one: 0.26-0.41 s of a 10,000-call run,
  against 0.14-0.23 s for the same client under a bare ``executor.map`` that allocates its
  futures all at the start. A threshold of 10,000 takes most of that away (``benchmarks/PROFILE.md``
  §11). A larger young generation only delays freeing cyclic garbage, and an answered
  call leaves none (``tests/test_interpreter.py``; a failed one keeps its exception,
  whose traceback is a cycle).

A :class:`~deepseek_pool.DeepSeekPool` holds each raised from its start to its ``close``
(``"auto"``: for pools of :data:`AUTO_FROM_WORKERS` workers or more); the last holder puts
the old value back, unless someone else changed it meanwhile. A setting never lowers a
value that is already higher.
"""

from __future__ import annotations

import gc
import logging
import math
import sys
import threading
from typing import Callable, Optional, Set, Union

__all__ = ["AUTO_FROM_WORKERS", "GC_THRESHOLD", "SWITCH_INTERVAL", "Setting"]

log = logging.getLogger(__name__)

#: ``"auto"`` raises the settings for pools of at least this many workers.
AUTO_FROM_WORKERS = 128

Option = Union[str, float, None]


class Setting:
    """One process-wide value that pools raise while they are open, and give back at close."""

    def __init__(
        self,
        name: str,
        read: Callable[[], float],
        write: Callable[[float], None],
        raised: float,
        *,
        whole: bool = False,
    ) -> None:
        self.name = name  #: the pool option that asks for it
        self.raised = raised  #: the value ``"auto"`` asks for
        self.whole = whole  #: only whole numbers are allowed
        self._read = read
        self._write = write
        self._lock = threading.Lock()
        self._holders: Set[object] = set()
        self._before: Optional[float] = None  # the value before the first holder came
        self._set_to: Optional[float] = None  # what the holders set it to, if they did

    def wanted(self, option: Option, max_workers: int) -> Optional[float]:
        """The value a pool with this option asks for (None: leave it alone); a bad option is named."""
        if option is None:
            return None
        if option == "auto":
            return self.raised if max_workers >= AUTO_FROM_WORKERS else None
        if self.whole:
            if isinstance(option, bool) or not isinstance(option, int) or option < 1:
                raise ValueError(f'{self.name} must be "auto", None or an int >= 1, got {option!r}')
        elif isinstance(option, bool) or not isinstance(option, (int, float)) or not (0 < option < math.inf):
            raise ValueError(f'{self.name} must be "auto", None or a number of seconds > 0, got {option!r}')
        return option

    def hold(self, value: float) -> object:
        """Raise the setting to at least ``value``; give the returned token to :meth:`release`."""
        token = object()
        with self._lock:
            if not self._holders:
                self._before, self._set_to = self._read(), None
            self._holders.add(token)
            if self._read() < value:
                self._write(value)
                self._set_to = self._read()
                log.info("%s raised to %g while a large pool is open", self.name, value)
        return token

    def release(self, token: object) -> None:
        """The holder is done; the last one puts the old value back, unless someone else changed it since."""
        with self._lock:
            if token not in self._holders:
                return
            self._holders.discard(token)
            if self._holders:
                return
            if self._set_to is not None and self._before is not None and self._read() == self._set_to:
                self._write(self._before)
            self._before = self._set_to = None


def _young_threshold() -> float:
    threshold = gc.get_threshold()[0]
    return threshold if threshold else math.inf  # 0 turns automatic collection off: above any raise


def _set_young_threshold(value: float) -> None:
    _, *older = gc.get_threshold()
    gc.set_threshold(int(value), *older)


#: The interpreter's thread switch interval, in seconds (``"auto"``: 50 ms).
SWITCH_INTERVAL = Setting("switch_interval", sys.getswitchinterval, sys.setswitchinterval, 0.05)
#: The collector's first threshold, in net allocations (``"auto"``: 10,000).
GC_THRESHOLD = Setting("gc_threshold", _young_threshold, _set_young_threshold, 10_000, whole=True)
