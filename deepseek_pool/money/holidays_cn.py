"""China's public holidays as data: the days DeepSeek's peak hours do not apply, and the weekend days that they do.

Source: the State Council's yearly notice on public holiday arrangements (国务院办公厅关于
2026年部分节假日安排的通知, 国办发明电[2025]7号, published 2025-11-04 on www.gov.cn),
checked against the ``chinese-calendar`` and ``holidays`` packages' data for the same year.

Each year holds the days off of each holiday (weekend days inside them included) and the
make-up working days (调休上班: a Saturday or Sunday worked in exchange). DeepSeek says
only that its off-peak rate applies all day on Chinese public holidays ("statutory holidays
excluded" on the zh-cn page); whether a make-up Saturday has peak hours it does not say, so
:mod:`deepseek_pool.money.offpeak` gives one its weekday's peak hours: the dearer reading.

Covered: :data:`YEARS`. A day of any other year is treated as possibly peak
(:class:`~deepseek_pool.money.offpeak.PeakCalendar`). To add a year, copy the State
Council's notice for it (published each November for the next year) into :data:`HOLIDAYS`.
"""

from __future__ import annotations

import datetime as _dt
from typing import Dict, FrozenSet, Mapping, NamedTuple, Tuple

__all__ = ["HOLIDAYS", "SOURCE", "YEARS", "Holiday", "YearHolidays", "by_year"]

SOURCE = "State Council notice 国办发明电[2025]7号 (www.gov.cn, 2025-11-04): public holidays of 2026"


class Holiday(NamedTuple):
    """One holiday's days off, ``first`` to ``last`` inclusive, and the days worked in exchange."""

    name: str
    first: _dt.date
    last: _dt.date
    make_up_workdays: Tuple[_dt.date, ...] = ()


class YearHolidays(NamedTuple):
    """The days off and the make-up working days of one year, as sets for lookup."""

    days_off: FrozenSet[_dt.date]
    workdays: FrozenSet[_dt.date]


_D = _dt.date

#: year -> its holidays, as the State Council's notice lists them.
HOLIDAYS: Mapping[int, Tuple[Holiday, ...]] = {
    2026: (
        Holiday("New Year's Day", _D(2026, 1, 1), _D(2026, 1, 3), (_D(2026, 1, 4),)),
        Holiday("Spring Festival", _D(2026, 2, 15), _D(2026, 2, 23), (_D(2026, 2, 14), _D(2026, 2, 28))),
        Holiday("Qingming Festival", _D(2026, 4, 4), _D(2026, 4, 6)),
        Holiday("Labour Day", _D(2026, 5, 1), _D(2026, 5, 5), (_D(2026, 5, 9),)),
        Holiday("Dragon Boat Festival", _D(2026, 6, 19), _D(2026, 6, 21)),
        Holiday("Mid-Autumn Festival", _D(2026, 9, 25), _D(2026, 9, 27)),
        Holiday("National Day", _D(2026, 10, 1), _D(2026, 10, 7), (_D(2026, 9, 20), _D(2026, 10, 10))),
    ),
}

#: The years :data:`HOLIDAYS` covers.
YEARS: Tuple[int, ...] = tuple(sorted(HOLIDAYS))


def by_year(holidays: Mapping[int, Tuple[Holiday, ...]] = HOLIDAYS) -> Dict[int, YearHolidays]:
    """``holidays`` as lookup sets per year."""
    years = {}
    for year, listed in holidays.items():
        off = {
            holiday.first + _dt.timedelta(days=n)
            for holiday in listed
            for n in range((holiday.last - holiday.first).days + 1)
        }
        work = {day for holiday in listed for day in holiday.make_up_workdays}
        years[year] = YearHolidays(frozenset(off), frozenset(work))
    return years
