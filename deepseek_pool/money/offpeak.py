"""DeepSeek's peak calendar, and holding a pool's calls until an off-peak window opens.

DeepSeek bills off-peak hours at half price. Peak is 01:00-04:00 and 06:00-10:00 UTC
(Beijing 9-12 and 14-18), Monday to Friday, except Chinese public holidays, which are
off-peak all day (``shared/deepseek-api.md``, "Prices"). The windows are data in
:mod:`deepseek_pool.models` (``PEAK_HOURS_UTC``), the holidays in
:mod:`~deepseek_pool.money.holidays_cn`, with their source and the years covered.

Where DeepSeek does not say, the calendar takes the dearer reading, so a cost estimate is
never under: a make-up working day (a Saturday or Sunday worked in exchange for a
holiday) has its peak hours; a day of a year the holiday data does not cover has them
too, whatever its weekday; and since DeepSeek does not say whether a call is billed at
the hour it starts or the hour it ends, a call is priced off-peak only when no peak
instant falls between the two (:meth:`PeakCalendar.peak_between`).

:class:`OffPeakOnly` is ``DeepSeekPool(off_peak_only=...)``: a call does not start in a
peak window; it waits (calls already running finish) until the window ends, and the
listeners hear when that will be. The clock is injectable: :class:`JumpingClock` makes
a wait of hours take no time, for tests.

Example::

    calendar = PeakCalendar()
    calendar.is_peak(datetime(2026, 12, 7, 2, tzinfo=UTC))         # True: a Monday, 02:00 UTC
    calendar.off_peak_from(datetime(2026, 12, 7, 2, tzinfo=UTC))   # 04:00 the same day
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
from typing import Callable, List, Mapping, Optional, Protocol, Tuple

from ..models import PEAK_HOURS_UTC
from .holidays_cn import HOLIDAYS, Holiday, YearHolidays, by_year

__all__ = ["Clock", "JumpingClock", "OffPeakOnly", "PeakCalendar", "SystemClock"]

log = logging.getLogger(__name__)

_UTC = _dt.UTC
_DAY = _dt.timedelta(days=1)
#: How far ahead :meth:`PeakCalendar.peak_from` looks (the longest holiday is 9 days).
_SEARCH_DAYS = 60


def _utc(when: _dt.datetime) -> _dt.datetime:
    """``when`` in UTC; a naive datetime means UTC."""
    return when.replace(tzinfo=_UTC) if when.tzinfo is None else when.astimezone(_UTC)


class PeakCalendar:
    """Tells DeepSeek's peak hours from its off-peak ones.

    :param holidays: year -> :class:`~deepseek_pool.money.holidays_cn.Holiday` tuple
        (default: :data:`~deepseek_pool.money.holidays_cn.HOLIDAYS`); a year missing here
        has peak hours on every day.
    :param windows: the peak windows of a day, as ``(start hour, end hour)`` pairs in UTC.
    """

    def __init__(
        self,
        holidays: Optional[Mapping[int, Tuple[Holiday, ...]]] = None,
        windows: Tuple[Tuple[int, int], ...] = PEAK_HOURS_UTC,
    ) -> None:
        self._years: Mapping[int, YearHolidays] = by_year(HOLIDAYS if holidays is None else holidays)
        self.windows = tuple(sorted(windows))

    def covers(self, day: _dt.date) -> bool:
        """True when the holiday data covers ``day``'s year."""
        return day.year in self._years

    def has_peak_hours(self, day: _dt.date) -> bool:
        """True when ``day`` (a UTC date; Beijing's is the same in every window) has peak windows.

        A weekday that is not a holiday, a make-up working day, and any day of a year the
        data does not cover (the dearer reading).
        """
        year = self._years.get(day.year)
        if year is None or day in year.workdays:
            return True
        return day.weekday() < 5 and day not in year.days_off

    def _windows(self, day: _dt.date) -> List[Tuple[_dt.datetime, _dt.datetime]]:
        if not self.has_peak_hours(day):
            return []
        midnight = _dt.datetime(day.year, day.month, day.day, tzinfo=_UTC)
        return [(midnight + _dt.timedelta(hours=a), midnight + _dt.timedelta(hours=b)) for a, b in self.windows]

    def is_peak(self, when: _dt.datetime) -> bool:
        """True when ``when`` falls in a peak window (a window's start is peak, its end is not)."""
        when = _utc(when)
        return any(start <= when < end for start, end in self._windows(when.date()))

    def peak_between(self, start: _dt.datetime, end: _dt.datetime) -> bool:
        """True when any instant from ``start`` to ``end`` (both included) is peak.

        A call is billed off-peak for sure only when this is False for its start and end.
        """
        start, end = _utc(start), _utc(end)
        if end < start:
            start, end = end, start
        day = start.date()
        while day <= end.date():
            if any(start < w_end and end >= w_start for w_start, w_end in self._windows(day)):
                return True
            day += _DAY
        return False

    def off_peak_from(self, when: _dt.datetime) -> _dt.datetime:
        """``when`` if it is off-peak, else the end of the peak window it falls in."""
        when = _utc(when)
        for start, end in self._windows(when.date()):
            if start <= when < end:
                return end
        return when

    def peak_from(self, when: _dt.datetime) -> _dt.datetime:
        """``when`` if it is peak, else the start of the next peak window.

        :raises ValueError: no peak window in the next 60 days (a calendar without windows).
        """
        when = _utc(when)
        day = when.date()
        for _ in range(_SEARCH_DAYS):
            for start, end in self._windows(day):
                if when < end:
                    return max(start, when)
            day += _DAY
        raise ValueError(f"no peak window within {_SEARCH_DAYS} days of {when:%Y-%m-%d %H:%M} UTC")


class Clock(Protocol):
    """The time the off-peak rules read, and a way to wait for a moment; injectable for tests."""

    def now(self) -> _dt.datetime: ...

    def sleep_until(self, when: _dt.datetime, wake: threading.Event) -> None:
        """Return at ``when``, or earlier once ``wake`` is set."""


class SystemClock:
    """The real UTC time; waits on ``wake`` so that a stop or a close ends them at once."""

    def now(self) -> _dt.datetime:
        return _dt.datetime.now(_UTC)

    def sleep_until(self, when: _dt.datetime, wake: threading.Event) -> None:
        wake.wait(max(0.0, (when - self.now()).total_seconds()))

    def __repr__(self) -> str:
        return "SystemClock()"


class JumpingClock:
    """A test clock: stands still until moved, and a wait jumps it to the moment waited for.

    Waits from several threads are safe: each moves the time forward to its moment, never
    back, so the threads waiting for the same window's end all wake at that end.
    """

    def __init__(self, start: _dt.datetime) -> None:
        self._now = _utc(start)
        self._lock = threading.Lock()
        #: the moments waited for, in order (what a test checks)
        self.waited_until: List[_dt.datetime] = []

    def now(self) -> _dt.datetime:
        return self._now

    def advance(self, seconds: float) -> _dt.datetime:
        """Move the time ``seconds`` forward; returns the new time."""
        with self._lock:
            self._now += _dt.timedelta(seconds=seconds)
            return self._now

    def sleep_until(self, when: _dt.datetime, wake: threading.Event) -> None:
        with self._lock:
            self.waited_until.append(when)
            if not wake.is_set():
                self._now = max(self._now, _utc(when))

    def __repr__(self) -> str:
        return f"JumpingClock({self._now:%Y-%m-%d %H:%M:%S} UTC)"


#: A listener hears the moment held calls will start when a pool begins holding them, and
#: None when they start again.
Listener = Callable[[Optional[_dt.datetime]], None]


class OffPeakOnly:
    """``DeepSeekPool(off_peak_only=OffPeakOnly(...))``: start no call in a peak window.

    A call about to start in a peak window waits until the window ends, then starts;
    calls already running finish. Retries of a running call are part of it and are not
    held. While calls are held, :attr:`resume_at` says until when, the log says it once
    (INFO), and each listener (:meth:`add_listener`) hears it.

    :param clock: where the time comes from (default :class:`SystemClock`).
    :param calendar: the :class:`PeakCalendar` (default: DeepSeek's windows and the holiday data).
    :param check_every: most seconds between two looks at the clock while waiting.
    """

    def __init__(
        self, *, clock: Optional[Clock] = None, calendar: Optional[PeakCalendar] = None, check_every: float = 60.0
    ) -> None:
        if not check_every > 0:
            raise ValueError(f"check_every must be > 0 seconds, got {check_every!r}")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.calendar = calendar if calendar is not None else PeakCalendar()
        self.check_every = float(check_every)
        self._lock = threading.Lock()
        self._resume_at: Optional[_dt.datetime] = None
        self._listeners: List[Listener] = []
        #: peak windows during which calls were held
        self.holds = 0

    def __repr__(self) -> str:
        return f"OffPeakOnly(clock={self.clock!r}, holds={self.holds})"

    @property
    def resume_at(self) -> Optional[_dt.datetime]:
        """When held calls will start (UTC), or None while none is held."""
        return self._resume_at

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(resume_at)`` when calls start being held, and ``listener(None)`` when they start again.

        It runs in the thread of the call that noticed (a worker): keep it short; an
        exception it raises is logged and ignored.
        """
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _announce(self, resume_at: Optional[_dt.datetime]) -> None:
        with self._lock:
            if resume_at == self._resume_at:
                return
            before, self._resume_at = self._resume_at, resume_at
            if resume_at is not None and before is None:
                self.holds += 1
            listeners = list(self._listeners)
        if resume_at is None:
            log.info("off-peak: held calls start now")
        else:
            log.info(
                "peak hours: no new call starts until %s UTC (the next off-peak window); calls running finish",
                f"{resume_at:%Y-%m-%d %H:%M}",
            )
        for listener in listeners:
            try:
                listener(resume_at)
            except Exception:  # a progress hook must never break a call
                log.exception("off-peak listener failed")

    def hold(self, wake: threading.Event) -> bool:
        """Wait while it is peak, or until ``wake`` is set; True when it waited.

        The caller checks ``wake`` afterwards: set, the call must not start.
        """
        waited = False
        while True:
            now = self.clock.now()
            if not self.calendar.is_peak(now):
                if self._resume_at is not None:
                    self._announce(None)
                return waited
            resume = self.calendar.off_peak_from(now)
            self._announce(resume)
            waited = True
            if wake.is_set():
                return True
            self.clock.sleep_until(min(resume, now + _dt.timedelta(seconds=self.check_every)), wake)
            if wake.is_set():
                return True
