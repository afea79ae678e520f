"""Process-wide settings for an application that runs thousands of calls at once.

They belong to the application (a script, a web server, a worker), which may run other
code that wants them otherwise, so the library changes none of them by itself: it offers
:func:`tune_process`, and ``deepseek-pool run`` calls it because it is an application::

    import deepseek_pool as dp

    with dp.tune_process(2500) as tuning:  # 2,500 calls in flight
        print(tuning)  # what it changed
        with dp.DeepSeekPool(max_workers=2500) as pool:
            ...
    # here every value it raised is back, unless someone changed it meanwhile

or ``dp.tune_process(2500)`` once at start-up, never restored: the process keeps it.

What it raises, and why (measured at 2,500 calls in flight, answers after 2 s, 2 cores:
``benchmarks/PROFILE.md`` §7, §11 and §13; there, 6 of 10 runs without the call collapsed,
2.5-15 times as long at 5-36 times the CPU, and none with it):

* **The thread switch interval** (``sys.setswitchinterval``, 5 ms), to 50 ms. A thread
  waiting for the GIL asks the running one to hand it over every interval. A wave of
  answers makes hundreds of threads runnable at once; then the GIL changes hands every few
  microseconds, answers are read later, more threads pile up, and the process may not
  recover: about half the runs took 2-5 times as long at 4-20 times the CPU. Threads that
  wait on sockets give the GIL up at their next read long before 50 ms; a thread competing
  with a CPU-bound one may wait up to 50 ms instead of 5.
* **The collector's first threshold** (``gc.set_threshold``, 700), to 10,000. Each call
  in flight holds about ninety container objects for the seconds its answer takes, and
  collecting every 700 allocations keeps walking them. A larger young generation only
  delays freeing cyclic garbage, and an answered call leaves none
  (``tests/test_process.py``).
* **The soft limit on open files** (``RLIMIT_NOFILE``; often 1,024), to what the calls
  need: one connection each, beside the files already open. Never past the hard limit,
  which only a privileged process may raise: when that is too low, the tuning says so
  (:attr:`ProcessTuning.short`, and a warning logged), and a pool too large for it refuses
  to start.

How values are given back (:meth:`ProcessTuning.restore`, or leaving its ``with``):

* a tuning never lowers a value: one already at or above what it asks is left alone;
* while tunings overlap, each setting holds the highest value still asked for; when the
  last is restored, the value from before the first comes back, exactly;
* a value someone else set meanwhile is theirs: it is never overwritten, and the tunings
  open at that time no longer hold it nor give anything back (a later tuning may raise it
  again, and its restore comes back to that value);
* a tuning that is never restored keeps its values for the life of the process, even
  if the application drops it: the application asked for them. Nothing is put back at
  exit or in a forked child (which inherits the values, and the tunings to restore).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import ConfigurationError

try:
    import resource
except ImportError:  # not on Windows: no soft limit on open files to raise there
    resource = None  # type: ignore[assignment]

__all__ = [
    "GC_THRESHOLD",
    "HINT_FROM_WORKERS",
    "SPARE_FILES",
    "SWITCH_INTERVAL",
    "Change",
    "ProcessTuning",
    "check_open_files",
    "hint_large_pool",
    "open_files_now",
    "tune_process",
]

log = logging.getLogger(__name__)

#: The thread switch interval :func:`tune_process` asks for, in seconds.
SWITCH_INTERVAL = 0.05
#: The collector's first threshold :func:`tune_process` asks for, in net container allocations.
GC_THRESHOLD = 10_000
#: Files a tuning leaves room for beside the calls' connections and what is already open.
SPARE_FILES = 64
#: A pool of this many workers, in a process that never called :func:`tune_process`, logs a hint.
HINT_FROM_WORKERS = 128


@dataclass(frozen=True)
class Change:
    """One setting a tuning changed (or a restore gave back): its name, before, after."""

    setting: str
    before: float
    after: float

    def __str__(self) -> str:
        return f"{self.setting} {_show(self.setting, self.before)} -> {_show(self.setting, self.after)}"


def _show(setting: str, value: float) -> str:
    if value == math.inf:
        return "unlimited"
    if setting == "switch interval":
        return f"{value * 1000:g} ms"
    return f"{int(value):,}"


class _Setting:
    """One process-wide value that tunings raise, shared by all of them (see the module's rules)."""

    def __init__(self, name: str, read: Callable[[], float], write: Callable[[float], None]) -> None:
        self.name = name
        self.read = read
        self._write = write
        self._asked: Dict[object, float] = {}  # tuning -> the value it asked for
        self._base = 0.0  # the value before the tunings' first write: what the last restore puts back
        self._written: Optional[float] = None  # what the tunings last wrote, while it stands

    def _sync(self) -> float:
        """The current value. Changed by someone else, it is theirs: the open tunings' asks lapse."""
        current = self.read()
        if current != (self._base if self._written is None else self._written):
            self._base, self._written = current, None
            self._asked.clear()
        return current

    def ask(self, tuning: object, value: float) -> Optional[Change]:
        current = self._sync()
        self._asked[tuning] = value
        if value <= current:
            return None
        self._write(value)
        self._written = self.read()
        return Change(self.name, current, self._written)

    def give_back(self, tuning: object) -> Optional[Change]:
        current = self._sync()
        if self._asked.pop(tuning, None) is None or self._written is None:
            return None  # it held nothing, or nothing the tunings wrote stands
        target = max([self._base, *self._asked.values()])
        if target == current:
            return None
        self._write(target)
        self._written = None if target == self._base else self.read()
        return Change(self.name, current, target)


def _young_threshold() -> float:
    threshold = gc.get_threshold()[0]
    return threshold if threshold else math.inf  # 0 turns automatic collection off: above any value


def _set_young_threshold(value: float) -> None:
    gc.set_threshold(int(value), *gc.get_threshold()[1:])


def _soft_files() -> float:
    if resource is None:
        return math.inf
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return math.inf if soft == resource.RLIM_INFINITY else soft


def _hard_files() -> float:
    if resource is None:
        return math.inf
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return math.inf if hard == resource.RLIM_INFINITY else hard


def _set_soft_files(value: float) -> None:
    assert resource is not None  # only written where it can be read
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.RLIM_INFINITY if value == math.inf else int(value), hard))


def _switch_interval() -> float:
    # Kept in whole microseconds and read back through a float: 0.05 reads 0.049999999999999996.
    return round(sys.getswitchinterval() * 1e6) / 1e6


def _set_switch_interval(value: float) -> None:
    # The interpreter truncates to microseconds: aim at the middle of the one meant, so that
    # a value read back and written again is the same to the microsecond.
    sys.setswitchinterval((round(value * 1e6) + 0.5) / 1e6)


_SWITCH = _Setting("switch interval", _switch_interval, _set_switch_interval)
_GC = _Setting("gc threshold", _young_threshold, _set_young_threshold)
_FILES = _Setting("open files", _soft_files, _set_soft_files)
_SETTINGS = (_SWITCH, _GC, _FILES)
_lock = threading.Lock()  # one for all of them: a tuning asks for or gives back its values together
_tuned = False  # whether the application ever called tune_process (then no hint)
_hinted = False


def open_files_now() -> int:
    """How many file descriptors this process has open (0 where that cannot be known)."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return max(0, len(os.listdir(directory)) - 1)  # less the listing's own descriptor
        except OSError:
            continue
    return 0


class ProcessTuning:
    """What :func:`tune_process` changed; :meth:`restore` (or leaving ``with``) gives it back.

    ``str(tuning)`` says it in one line. Never restored, its values stay for the life of
    the process.
    """

    def __init__(self, changes: Sequence[Change], short: Optional[str]) -> None:
        #: what this tuning raised, in order (empty: everything was already at least as high)
        self.changes: Tuple[Change, ...] = tuple(changes)
        #: why the open-files limit could not be raised as far as the calls need, or None
        self.short = short
        self._restored = False

    def restore(self) -> Tuple[Change, ...]:
        """Give back what this tuning raised, under the module's rules; return what changed.

        Restoring twice changes nothing more.
        """
        with _lock:
            if self._restored:
                return ()
            self._restored = True
            changes = [setting.give_back(self) for setting in _SETTINGS]
        given_back = tuple(change for change in changes if change is not None)
        if given_back:
            log.info("process settings given back: %s", "; ".join(map(str, given_back)))
        return given_back

    def __enter__(self) -> ProcessTuning:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def __str__(self) -> str:
        said = "; ".join(map(str, self.changes)) or "nothing changed (every setting was already as high)"
        return f"{said}; {self.short}" if self.short else said

    def __repr__(self) -> str:
        return f"<ProcessTuning {self}{' (restored)' if self._restored else ''}>"


def tune_process(
    calls_in_flight: Optional[int] = None,
    *,
    switch_interval: Optional[float] = SWITCH_INTERVAL,
    gc_threshold: Optional[int] = GC_THRESHOLD,
) -> ProcessTuning:
    """Raise the process-wide settings that thousands of calls in flight need; for applications.

    :param calls_in_flight: the most calls the application will have in flight at once
        (a pool's ``max_workers``, or its ``max_in_flight`` if lower): the soft limit on
        open files is raised to that many plus the files open now plus
        :data:`SPARE_FILES`, at most to the hard limit. None leaves that limit alone.
    :param switch_interval: the thread switch interval, in seconds; None leaves it alone.
    :param gc_threshold: the cyclic collector's first threshold; None leaves it alone.
    :returns: a :class:`ProcessTuning`: what changed, and ``restore()``. It is a context
        manager; outside one, the values stay until it is restored (or for good).

    A value already at or above what is asked is never lowered. The module docstring says
    why each setting helps and how values are given back.
    """
    if switch_interval is not None and (
        isinstance(switch_interval, bool)
        or not isinstance(switch_interval, (int, float))
        or not 0 < switch_interval < math.inf
    ):
        raise ValueError(f"switch_interval must be a number of seconds > 0 or None, got {switch_interval!r}")
    if gc_threshold is not None and (
        isinstance(gc_threshold, bool) or not isinstance(gc_threshold, int) or gc_threshold < 1
    ):
        raise ValueError(f"gc_threshold must be an int >= 1 or None, got {gc_threshold!r}")
    if calls_in_flight is not None and (
        isinstance(calls_in_flight, bool) or not isinstance(calls_in_flight, int) or calls_in_flight < 1
    ):
        raise ValueError(f"calls_in_flight must be an int >= 1 or None, got {calls_in_flight!r}")
    global _tuned
    tuning = ProcessTuning([], None)
    asked: List[Tuple[_Setting, float]] = []
    if switch_interval is not None:
        asked.append((_SWITCH, switch_interval))
    if gc_threshold is not None:
        asked.append((_GC, gc_threshold))
    changes: List[Optional[Change]] = []
    short: Optional[str] = None
    with _lock:
        _tuned = True
        changes.extend(setting.ask(tuning, value) for setting, value in asked)
        if calls_in_flight is not None and resource is not None:
            needed = calls_in_flight + open_files_now() + SPARE_FILES
            hard = _hard_files()
            try:
                changes.append(_FILES.ask(tuning, min(needed, hard)))
            except (OSError, ValueError) as err:  # macOS refuses a soft limit above OPEN_MAX
                _FILES.give_back(tuning)
                short = f"the soft limit on open files could not be raised to {min(needed, hard):,.0f}: {err}"
            if short is None and hard < needed:
                short = (
                    f"{calls_in_flight:,} calls in flight need about {needed:,} open files, above the hard "
                    f"limit of {hard:,.0f}, which only a privileged process can raise (ulimit -Hn; systemd "
                    "LimitNOFILE=; docker --ulimit nofile=); the soft limit is at that hard limit"
                )
    tuning.changes = tuple(change for change in changes if change is not None)
    tuning.short = short
    if short:
        log.warning("tune_process: %s", short)
    log.info("process settings: %s", tuning)
    return tuning


def check_open_files(connections: int, what: str) -> None:
    """Refuse up front a pool whose ``connections`` would pass the soft limit on open files.

    Mid-batch, each call past the limit fails with ``Too many open files`` after burning
    its retries; refused at construction, nothing is sent.
    """
    soft = _soft_files()
    already = open_files_now()  # a directory listing: tens of microseconds
    if already + connections <= soft:
        return
    hard = _show("open files", _hard_files())
    raise ConfigurationError(
        f"{what} may hold {connections:,} connections at once, and this process may open {soft:,.0f} files "
        f"(the soft RLIMIT_NOFILE; {already:,} already open; hard limit {hard}). Call "
        f"deepseek_pool.tune_process({connections}) in your application, or run `ulimit -n "
        f"{already + connections + SPARE_FILES}` before starting it, or use fewer workers or max_in_flight"
    )


def hint_large_pool(max_workers: int) -> None:
    """Once per process, tell a large pool's application what :func:`tune_process` would gain it.

    Said only when the application never made the call and the settings are below what it
    would set (someone may have set them by hand).
    """
    global _hinted
    if max_workers < HINT_FROM_WORKERS or _tuned or _hinted:
        return
    if _switch_interval() >= SWITCH_INTERVAL and _young_threshold() >= GC_THRESHOLD:
        return
    with _lock:
        if _hinted or _tuned:
            return
        _hinted = True
    log.warning(
        "a DeepSeekPool of %d workers runs with a thread switch interval of %g ms and a collector threshold "
        "of %d; deepseek_pool.tune_process(%d) in your application raises them to %g ms and %s (and the "
        "open-files limit). At 2,500 calls in flight on 2 cores, 6 of 10 runs without it collapsed, 2.5-15 "
        "times as long at 5-36 times the CPU (one lost a quarter of its calls to their deadline); with it none "
        "did (benchmarks/PROFILE.md section 13). This is said once per process.",
        max_workers,
        sys.getswitchinterval() * 1000,
        gc.get_threshold()[0],
        max_workers,
        SWITCH_INTERVAL * 1000,
        f"{GC_THRESHOLD:,}",
    )
