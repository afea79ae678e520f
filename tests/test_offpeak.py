"""Off-peak: the peak calendar (hand-checked dates of the holiday data, edge times), pricing by
it, and a pool and a batch run that start no call in a peak window and resume after it."""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from deepseek_pool import APIConnectionError, DeepSeekClient
from deepseek_pool.batch.progress import BatchProgress, Tally
from deepseek_pool.batch.runner import Interrupter, run_batch
from deepseek_pool.cli import run as cli_run
from deepseek_pool.cli.commands import main
from deepseek_pool.cli.report import read_report
from deepseek_pool.models import PRICES
from deepseek_pool.money import holidays_cn
from deepseek_pool.money.offpeak import JumpingClock, OffPeakOnly, PeakCalendar
from deepseek_pool.money.spend import SpendCap, cost_at
from deepseek_pool.pool.pool import DeepSeekPool, DrainStopped
from deepseek_pool.testing import FakeDeepSeek
from deepseek_pool.types import Usage

KEY = "sk-test"
UTC = dt.UTC
CALENDAR = PeakCalendar()


def at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# -- the calendar ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "peak"),
    [
        # Monday 2026-12-07, an ordinary working day: the edges of both windows.
        (at(2026, 12, 7, 0, 59, 59), False),
        (at(2026, 12, 7, 1, 0, 0), True),
        (at(2026, 12, 7, 3, 59, 59), True),
        (at(2026, 12, 7, 4, 0, 0), False),
        (at(2026, 12, 7, 5, 59, 59), False),
        (at(2026, 12, 7, 6, 0, 0), True),
        (at(2026, 12, 7, 9, 59, 59), True),
        (at(2026, 12, 7, 10, 0, 0), False),
        (at(2026, 12, 7, 23, 0, 0), False),
        # The weekend.
        (at(2026, 12, 5, 2, 0), False),  # Saturday
        (at(2026, 12, 6, 7, 0), False),  # Sunday
        # Weekdays off (State Council notice for 2026): off-peak all day.
        (at(2026, 1, 2, 2, 0), False),  # Friday, New Year
        (at(2026, 2, 20, 7, 0), False),  # Friday, Spring Festival
        (at(2026, 2, 23, 2, 0), False),  # Monday, the Spring Festival's last day off
        (at(2026, 4, 6, 2, 0), False),  # Monday, Qingming
        (at(2026, 5, 5, 9, 30), False),  # Tuesday, Labour Day
        (at(2026, 6, 19, 2, 0), False),  # Friday, Dragon Boat
        (at(2026, 9, 25, 2, 0), False),  # Friday, Mid-Autumn
        (at(2026, 10, 5, 2, 0), False),  # Monday, National Day
        (at(2026, 10, 7, 9, 59), False),  # Wednesday, National Day's last day off
        (at(2026, 10, 8, 1, 0), True),  # Thursday, back at work
        # Make-up working days (a weekend day worked): their weekday's peak hours, the dearer reading.
        (at(2026, 1, 4, 2, 0), True),  # Sunday
        (at(2026, 2, 14, 7, 0), True),  # Saturday
        (at(2026, 2, 28, 2, 0), True),  # Saturday
        (at(2026, 5, 9, 2, 0), True),  # Saturday
        (at(2026, 9, 20, 2, 0), True),  # Sunday
        (at(2026, 10, 10, 2, 0), True),  # Saturday
        (at(2026, 10, 10, 12, 0), False),  # ... but only in the windows
        # A year the data does not cover: every day has the peak windows, weekends included.
        (at(2027, 1, 4, 2, 0), True),  # Monday
        (at(2027, 1, 1, 2, 0), True),  # Friday, New Year's Day: not known to be off
        (at(2027, 1, 2, 7, 0), True),  # Saturday: could be a make-up working day
        (at(2027, 1, 2, 12, 0), False),  # outside the windows, any day
        (at(2025, 12, 27, 2, 0), True),  # Saturday of 2025: not covered either
    ],
)
def test_peak_hours_at_hand_checked_times(when: dt.datetime, peak: bool) -> None:
    assert CALENDAR.is_peak(when) is peak


def test_the_holiday_data_is_the_state_councils_2026_notice() -> None:
    assert holidays_cn.YEARS == (2026,) and "2026" in holidays_cn.SOURCE
    year = holidays_cn.by_year()[2026]
    weekdays_off = sorted(str(day) for day in year.days_off if day.weekday() < 5)
    # Copied by hand from the notice (and the same in the chinese-calendar and holidays packages).
    assert weekdays_off == [
        "2026-01-01", "2026-01-02", "2026-02-16", "2026-02-17", "2026-02-18", "2026-02-19", "2026-02-20",
        "2026-02-23", "2026-04-06", "2026-05-01", "2026-05-04", "2026-05-05", "2026-06-19", "2026-09-25",
        "2026-10-01", "2026-10-02", "2026-10-05", "2026-10-06", "2026-10-07",
    ]  # fmt: skip
    assert sorted(map(str, year.workdays)) == [
        "2026-01-04", "2026-02-14", "2026-02-28", "2026-05-09", "2026-09-20", "2026-10-10",
    ]  # fmt: skip
    assert all(day.weekday() >= 5 for day in year.workdays) and not year.workdays & year.days_off
    assert CALENDAR.covers(dt.date(2026, 7, 1)) and not CALENDAR.covers(dt.date(2027, 7, 1))


def test_times_in_other_zones_and_naive_times_mean_the_same_instant() -> None:
    beijing = dt.timezone(dt.timedelta(hours=8))
    assert CALENDAR.is_peak(dt.datetime(2026, 12, 7, 9, 0, tzinfo=beijing))  # 01:00 UTC
    assert not CALENDAR.is_peak(dt.datetime(2026, 12, 7, 12, 0, tzinfo=beijing))  # 04:00 UTC
    assert CALENDAR.is_peak(dt.datetime(2026, 12, 7, 1, 0))  # naive: UTC


def test_next_windows() -> None:
    assert CALENDAR.off_peak_from(at(2026, 12, 7, 1, 0)) == at(2026, 12, 7, 4, 0)
    assert CALENDAR.off_peak_from(at(2026, 12, 7, 9, 59, 59)) == at(2026, 12, 7, 10, 0)
    assert CALENDAR.off_peak_from(at(2026, 12, 7, 4, 0)) == at(2026, 12, 7, 4, 0)
    assert CALENDAR.peak_from(at(2026, 12, 7, 4, 0)) == at(2026, 12, 7, 6, 0)
    assert CALENDAR.peak_from(at(2026, 12, 11, 10, 0)) == at(2026, 12, 14, 1, 0)  # Friday evening -> Monday
    assert CALENDAR.peak_from(at(2026, 9, 30, 12, 0)) == at(2026, 10, 8, 1, 0)  # over the National Day holiday
    assert CALENDAR.peak_from(at(2026, 10, 9, 12, 0)) == at(2026, 10, 10, 1, 0)  # a make-up Saturday
    assert CALENDAR.peak_from(at(2026, 12, 7, 2, 0)) == at(2026, 12, 7, 2, 0)


@pytest.mark.parametrize(
    ("start", "end", "peak"),
    [
        (at(2026, 12, 7, 0, 30), at(2026, 12, 7, 0, 59, 59), False),
        (at(2026, 12, 7, 0, 30), at(2026, 12, 7, 1, 0, 0), True),  # it ends as the window starts
        (at(2026, 12, 7, 4, 0), at(2026, 12, 7, 5, 59, 59), False),
        (at(2026, 12, 7, 3, 59, 59), at(2026, 12, 7, 4, 30), True),  # it starts in the window
        (at(2026, 12, 4, 10, 0), at(2026, 12, 7, 0, 59), False),  # Friday evening to Monday night
        (at(2026, 12, 5, 12, 0), at(2026, 12, 7, 1, 0), True),
        (at(2026, 12, 7, 2, 0), at(2026, 12, 7, 0, 30), True),  # given the wrong way round
    ],
)
def test_peak_between_includes_both_ends(start: dt.datetime, end: dt.datetime, peak: bool) -> None:
    assert CALENDAR.peak_between(start, end) is peak


# -- pricing ---------------------------------------------------------------------------------------------

USAGE = Usage.from_dict({"prompt_tokens": 1000, "completion_tokens": 100, "prompt_cache_miss_tokens": 1000})


def _costs() -> Dict[bool, float]:
    price = PRICES["deepseek-flash"]
    counts = {"prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": 1000, "completion_tokens": 100}
    return {peak: cost_at(price, peak=peak, **counts) for peak in (True, False)}


def test_a_call_is_billed_off_peak_only_when_no_peak_lay_between_its_start_and_end() -> None:
    costs = _costs()
    assert costs[False] == pytest.approx(costs[True] / 2)
    clock = JumpingClock(at(2026, 12, 7, 0, 30))
    cap = SpendCap(10.0, clock=clock.now)
    held = cap.reserve("deepseek-flash", prompt_tokens=1000, completion_tokens=100, within=60)
    clock.advance(60)
    assert cap.settle(held, usage=USAGE) == pytest.approx(costs[False])  # 00:30 to 00:31: off-peak
    held = cap.reserve("deepseek-flash", prompt_tokens=1000, completion_tokens=100, within=60)
    clock.advance(45 * 60)  # started 00:31, billed (retried) at 01:16
    assert cap.bill(held, USAGE) == pytest.approx(costs[True])
    cap.settle(held, charge=False)
    # A holiday weekday in peak hours, and a make-up Saturday.
    for day, peak in ((at(2026, 10, 5, 2, 0), False), (at(2026, 10, 10, 2, 0), True)):
        cap = SpendCap(10.0, clock=lambda day=day: day)
        held = cap.reserve("deepseek-flash", prompt_tokens=1000, completion_tokens=100, within=60)
        assert cap.settle(held, usage=USAGE) == pytest.approx(costs[peak])


def test_a_reservation_is_at_the_peak_rate_when_a_peak_can_begin_before_the_call_ends() -> None:
    price = PRICES["deepseek-flash"]
    worst = {peak: cost_at(price, prompt_cache_hit_tokens=0, prompt_cache_miss_tokens=1000, completion_tokens=100,
                           peak=peak) for peak in (True, False)}  # fmt: skip
    half_past = at(2026, 12, 7, 0, 30)  # 30 minutes before a peak window
    cap = SpendCap(10.0, clock=lambda: half_past)
    assert cap.reserve("deepseek-flash", prompt_tokens=1000, completion_tokens=100).amount == pytest.approx(worst[True])
    short = cap.reserve("deepseek-flash", prompt_tokens=1000, completion_tokens=100, within=600)  # ends by 00:41
    assert short.amount == pytest.approx(worst[False])
    late = cap.reserve("deepseek-flash", prompt_tokens=1000, completion_tokens=100, within=1800)  # could reach 01:00
    assert late.amount == pytest.approx(worst[True])
    sunday = at(2026, 12, 6, 12, 0)
    cap = SpendCap(10.0, clock=lambda: sunday)
    off = cap.reserve("deepseek-flash", prompt_tokens=1000, completion_tokens=100)  # Monday 01:00 is 13 h away
    assert off.amount == pytest.approx(worst[False])


def test_the_batch_tally_prices_by_the_rate_it_is_given() -> None:
    class Answer:
        model = "deepseek-flash"
        usage = USAGE

    tally = Tally()
    tally.add_ok(Answer(), "deepseek-flash", peak=True)
    tally.add_ok(Answer(), "deepseek-flash", peak=False)
    costs = _costs()
    assert tally.cost == pytest.approx(costs[True] + costs[False])


# -- holding calls ---------------------------------------------------------------------------------------


def test_the_gate_holds_until_the_window_ends_and_says_so() -> None:
    clock = JumpingClock(at(2026, 12, 7, 1, 0))
    gate = OffPeakOnly(clock=clock, check_every=3600)
    heard: List[Optional[dt.datetime]] = []
    gate.add_listener(heard.append)
    assert gate.hold(threading.Event()) is True
    assert clock.now() == at(2026, 12, 7, 4, 0) and heard == [at(2026, 12, 7, 4, 0), None]
    assert clock.waited_until == [at(2026, 12, 7, 2, 0), at(2026, 12, 7, 3, 0), at(2026, 12, 7, 4, 0)]
    assert gate.hold(threading.Event()) is False and len(heard) == 2 and gate.resume_at is None
    assert gate.holds == 1
    clock.advance(2 * 3600)  # 06:00: the next window
    woken = threading.Event()
    woken.set()
    assert gate.hold(woken) is True and clock.now() == at(2026, 12, 7, 6, 0)  # a stop: no wait, no jump
    assert gate.resume_at == at(2026, 12, 7, 10, 0) and gate.holds == 2


#: A hold's look at the clock that reaches the window's end in one jump. With 60 s looks, a
#: held worker moves the test clock through the window minute by minute, in microseconds,
#: while a call that passed the gate before the window is still on its way: its arrival was
#: once stamped 09:43 under load, though the call started before 06:00.
ONE_JUMP = 6 * 3600.0


def _stamping_fake(clock: JumpingClock, stamps: List[dt.datetime]) -> FakeDeepSeek:
    """A fake that notes the test clock's time as each request arrives."""

    def arrival(_rng: Any) -> float:
        stamps.append(clock.now())
        return 0.0

    return FakeDeepSeek(latency=arrival)


def test_a_pool_starts_no_call_in_a_peak_window_and_resumes_after_it() -> None:
    clock = JumpingClock(at(2026, 12, 7, 0, 57))  # a Monday, three minutes before 01:00
    stamps: List[dt.datetime] = []
    with _stamping_fake(clock, stamps) as fake, DeepSeekClient(KEY, base_url=fake.base_url) as client:
        gate = OffPeakOnly(clock=clock)
        heard: List[Optional[dt.datetime]] = []
        gate.add_listener(heard.append)
        # One worker, so each call starts when the one before it ended: 20 s of test time each.
        with DeepSeekPool(client, max_workers=1, off_peak_only=gate, on_result=lambda _r: clock.advance(20)) as pool:
            results = pool.map([f"question {n}" for n in range(20)])
    assert [r.index for r in results] == list(range(20)) and all(r.ok for r in results)
    assert len(stamps) == 20 and not any(CALENDAR.is_peak(stamp) for stamp in stamps)
    assert stamps[8] == at(2026, 12, 7, 0, 59, 40) and stamps[9] == at(2026, 12, 7, 4, 0)  # held over the window
    assert heard == [at(2026, 12, 7, 4, 0), None] and gate.holds == 1


def test_many_workers_hold_at_the_window_and_every_item_runs_once() -> None:
    clock = JumpingClock(at(2026, 12, 7, 0, 59))
    stamps: List[dt.datetime] = []
    with _stamping_fake(clock, stamps) as fake, DeepSeekClient(KEY, base_url=fake.base_url) as client:
        gate = OffPeakOnly(clock=clock, check_every=ONE_JUMP)
        with DeepSeekPool(client, max_workers=8, off_peak_only=gate, on_result=lambda _r: clock.advance(5)) as pool:
            results = list(pool.as_completed({"custom_id": f"c{n}", "prompt": f"q{n}"} for n in range(120)))
    assert sorted(r.custom_id or "" for r in results) == sorted(f"c{n}" for n in range(120))
    assert all(r.ok for r in results) and len(stamps) == 120
    # Calls that passed the gate before 01:00 may reach the server a few advances later; none after.
    late = [stamp for stamp in stamps if at(2026, 12, 7, 1, 1) <= stamp < at(2026, 12, 7, 4, 0)]
    assert not late and gate.holds == 1 and max(stamps) >= at(2026, 12, 7, 4, 0)


class StandingClock:
    """A clock that stays at a peak hour and waits for real (briefly): a hold that never ends by itself."""

    def __init__(self, when: dt.datetime) -> None:
        self.when = when

    def now(self) -> dt.datetime:
        return self.when

    def sleep_until(self, when: dt.datetime, wake: threading.Event) -> None:
        wake.wait(0.02)


def test_a_drain_during_a_hold_sends_nothing() -> None:
    gate = OffPeakOnly(clock=StandingClock(at(2026, 12, 7, 2, 0)))
    stop = threading.Event()
    with FakeDeepSeek() as fake, DeepSeekClient(KEY, base_url=fake.base_url) as client:
        with DeepSeekPool(client, max_workers=4, off_peak_only=gate) as pool:
            timer = threading.Timer(0.3, stop.set)
            timer.start()
            try:
                results = list(pool.as_completed([f"q{n}" for n in range(10)], stop=stop))
            finally:
                timer.cancel()
        assert fake.stats.requests == 0
    assert results and all(isinstance(r.error, DrainStopped) for r in results)
    assert gate.resume_at == at(2026, 12, 7, 4, 0)


def test_an_aborted_call_held_for_off_peak_stops_waiting_at_once_unsent() -> None:
    gate = OffPeakOnly(clock=StandingClock(at(2026, 12, 7, 2, 0)))
    with FakeDeepSeek() as fake, DeepSeekClient(KEY, base_url=fake.base_url) as client:
        with DeepSeekPool(client, max_workers=2, off_peak_only=gate) as pool:
            held = pool.submit("q")
            for _ in range(250):  # the hold has begun once the gate knows when it ends
                if gate.resume_at is not None:
                    break
                threading.Event().wait(0.02)
            assert gate.resume_at == at(2026, 12, 7, 4, 0)
            assert pool.abort(held)
            with pytest.raises(APIConnectionError, match="aborted"):
                held.result(timeout=2)  # before: held until the window's end
        assert fake.stats.requests == 0


def test_a_drain_while_warming_in_a_peak_ends_the_run_at_once_unsent() -> None:
    gate = OffPeakOnly(clock=StandingClock(at(2026, 12, 7, 2, 0)))
    system = {"role": "system", "content": "You are a careful assistant. " * 400}
    requests = [[system, {"role": "user", "content": f"q{n}"}] for n in range(6)]
    stop = threading.Event()
    with FakeDeepSeek() as fake, DeepSeekClient(KEY, base_url=fake.base_url) as client:
        with DeepSeekPool(client, max_workers=4, off_peak_only=gate, warm_prefix=True) as pool:
            timer = threading.Timer(0.3, stop.set)
            timer.start()
            try:
                finished = threading.Event()
                results: List[Any] = []

                def run() -> None:
                    results.extend(pool.as_completed(requests, stop=stop))
                    finished.set()

                threading.Thread(target=run, daemon=True).start()
                assert finished.wait(5), "the held warm-up kept the drained run waiting"
            finally:
                timer.cancel()
        assert fake.stats.requests == 0
    assert all(isinstance(r.error, DrainStopped) for r in results)


def test_off_peak_only_is_checked() -> None:
    with pytest.raises(TypeError, match="off_peak_only"):
        DeepSeekPool(DeepSeekClient(KEY), off_peak_only="yes")  # type: ignore[arg-type]


# -- the batch runner and the CLI ------------------------------------------------------------------------


def _write_input(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"custom_id": f"c{n}", "prompt": f"q{n}"}) + "\n" for n in range(count)))
    return path


def test_a_batch_run_crosses_a_peak_start_and_writes_every_item_once(tmp_path: Path) -> None:
    clock = JumpingClock(at(2026, 12, 7, 5, 58))  # two minutes before the 06:00 window
    stamps: List[dt.datetime] = []
    notices = io.StringIO()
    inp, out = _write_input(tmp_path / "in.jsonl", 30), tmp_path / "out.jsonl"
    with _stamping_fake(clock, stamps) as fake, DeepSeekClient(KEY, base_url=fake.base_url) as client:
        gate = OffPeakOnly(clock=clock, check_every=ONE_JUMP)
        with DeepSeekPool(client, max_workers=2, off_peak_only=gate, on_result=lambda _r: clock.advance(10)) as pool:
            summary = run_batch(inp, out, pool, interrupter=Interrupter(), progress=BatchProgress(notices))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(f"c{n}" for n in range(30))
    assert all(line["error"] is None for line in lines) and len(stamps) == 30
    assert summary.complete and summary.off_peak_holds == 1
    assert not [s for s in stamps if at(2026, 12, 7, 6, 0, 30) <= s < at(2026, 12, 7, 10, 0)]
    text = notices.getvalue()
    assert "peak hours: no new call starts until 2026-12-07 10:00 UTC" in text and "calls start again" in text


def test_deepseek_pool_run_off_peak_only(
    deepseek_env: FakeDeepSeek, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = JumpingClock(at(2026, 12, 8, 9, 0))  # a Tuesday, in the 06:00-10:00 window
    monkeypatch.setattr(cli_run, "OffPeakOnly", partial(OffPeakOnly, clock=clock))
    inp, out = _write_input(tmp_path / "in.jsonl", 5), tmp_path / "out.jsonl"
    assert main(["run", str(inp), "-o", str(out), "--off-peak-only"]) == 0
    err = capsys.readouterr().err
    assert "no new call starts until 2026-12-08 10:00 UTC" in err and "calls held through a peak window" in err
    assert len(out.read_text().splitlines()) == 5 and deepseek_env.stats.requests == 5
    assert clock.now() == at(2026, 12, 8, 10, 0)


# -- what a run shows and what the report splits -------------------------------------------------------


def test_the_progress_line_shows_the_cache_hit_share() -> None:
    class Answer:
        model = "deepseek-flash"
        usage = Usage.from_dict(
            {"prompt_tokens": 4000, "completion_tokens": 10, "prompt_cache_hit_tokens": 3000,
             "prompt_cache_miss_tokens": 1000}
        )  # fmt: skip

    stream = io.StringIO()
    progress = BatchProgress(stream, bar=True)
    progress.start(2)
    tally = Tally()
    tally.add_ok(Answer(), "deepseek-flash")
    progress.update(tally)
    progress.close()
    assert "cache-hits=75%" in stream.getvalue()


def _line(custom_id: str, started: Optional[dt.datetime], seconds: float = 30.0) -> Dict[str, Any]:
    usage = {"prompt_tokens": 1000, "completion_tokens": 100, "prompt_cache_hit_tokens": 0,
             "prompt_cache_miss_tokens": 1000}  # fmt: skip
    line: Dict[str, Any] = {
        "id": "x",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": None, "body": {"model": "deepseek-flash", "usage": usage}},
        "error": None,
    }
    if started is not None:
        begin = started.timestamp()
        line["call"] = {"started_at": begin, "ended_at": begin + seconds, "attempts": 1, "rate_limited": 0}
    return line


def test_the_report_splits_the_cost_by_the_calendar(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    lines = [
        _line("sunday", at(2026, 12, 6, 2, 0)),  # off-peak
        _line("crossing", at(2026, 12, 7, 0, 59, 45)),  # starts off-peak, ends in the window: peak
        _line("holiday", at(2026, 10, 5, 2, 0)),  # a holiday weekday in peak hours: off-peak
        _line("make-up", at(2026, 10, 10, 2, 0)),  # a make-up Saturday: peak
        _line("old", None),  # written before the call record: at the peak rate, apart
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = read_report(str(path))
    costs = _costs()
    assert report.cost_off_peak == pytest.approx(2 * costs[False])
    assert report.cost_peak == pytest.approx(2 * costs[True])
    assert report.cost_untimed == pytest.approx(costs[True])


# -- the cost benchmark cell -----------------------------------------------------------------------------


def test_the_cost_cell_measures_warming_off_peak_and_the_rerun() -> None:
    from benchmarks import cost

    small = ["--items", "30", "--latency", "0.05", "--build-delay", "0.1", "--warm-wait", "0.2"]
    args = cost.parser().parse_args(small)
    args.workers = 30
    rows = {row["row"]: row for row in cost.run_cell(args)}
    cold, warmed, off = rows["cold"], rows["warmed"], rows["warmed, off-peak only"]
    assert cold["requests"] == 30 and cold["hit_tokens"] == 0
    assert warmed["requests"] == 32 and warmed["prompt_usd"] < 0.2 * cold["prompt_usd"]  # two warm-ups, then hits
    assert off["rate"] == pytest.approx(0.5) and off["held_until"] == "10:00 UTC"
    rerun = rows["rerun, response cache on"]
    assert rerun["requests"] == 0 and rerun["spent_usd"] == 0 and rerun["cached"] == 30
    text = "\n".join(cost.table(list(rows.values())))
    assert "Warming: prompt cost" in text
    assert "2000 answers from the cache" not in text and "30 answers from the cache" in text
