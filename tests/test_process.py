"""Process-wide settings are the application's: pools change none of them, and
``tune_process`` raises them and gives back exactly what it replaced.

Every test puts back what it changes (the ``user_values`` fixture); the open-files limit is
only ever changed in child processes, so this one keeps its own.
"""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

import deepseek_pool as dp
from deepseek_pool import process
from deepseek_pool.cli import commands, run
from deepseek_pool.testing import FakeDeepSeek

REPO = Path(__file__).resolve().parent.parent
#: Values a user might have set: not CPython's defaults, not what a tuning asks for.
USER_INTERVAL = 0.0071
USER_THRESHOLD = (777, 11, 12)

Settings = Tuple[float, Tuple[int, int, int]]


def settings() -> Settings:
    return sys.getswitchinterval(), gc.get_threshold()


def interval() -> float:
    return round(sys.getswitchinterval(), 6)  # 0.05 reads 0.049999999999999996


def rounded() -> Settings:
    return interval(), gc.get_threshold()


@pytest.fixture
def user_values() -> Iterator[Settings]:
    """The user's own values for the test; the process's own are put back after it."""
    before = settings()
    sys.setswitchinterval(USER_INTERVAL)
    gc.set_threshold(*USER_THRESHOLD)
    yield settings()
    sys.setswitchinterval(before[0])
    gc.set_threshold(*before[1])


def pool(workers: int, **options: object) -> dp.DeepSeekPool:
    client = dp.DeepSeekClient("sk-test", base_url="http://127.0.0.1:9")  # never connected to
    return dp.DeepSeekPool(client, max_workers=workers, **options)  # type: ignore[arg-type]


# -- pools change nothing ----------------------------------------------------------------


def test_opening_and_closing_pools_leaves_the_users_values_exactly(user_values: Settings) -> None:
    with pool(2500):
        assert settings() == user_values
    first, second = pool(512), pool(1024)
    first.close()
    assert settings() == user_values
    second.close()
    assert settings() == user_values


def test_a_pool_never_closed_changes_nothing_and_later_pools_neither(user_values: Settings) -> None:
    abandoned = pool(4096)
    assert settings() == user_values
    del abandoned
    gc.collect()
    with pool(512):
        pass
    assert settings() == user_values


def test_a_value_the_user_sets_while_a_pool_is_open_is_kept(user_values: Settings) -> None:
    with pool(512):
        sys.setswitchinterval(0.0123)
        gc.set_threshold(4321, 11, 12)
    assert rounded() == (0.0123, (4321, 11, 12))


@pytest.mark.parametrize(
    "name, value", [("switch_interval", 0.05), ("gc_threshold", 10_000), ("switch_interval", None)]
)
def test_the_old_pool_options_warn_that_they_do_nothing(user_values: Settings, name: str, value: object) -> None:
    with pytest.warns(DeprecationWarning, match=r"tune_process"):
        held = pool(512, **{name: value})
    with held:
        assert settings() == user_values
    assert settings() == user_values


# -- tune_process ------------------------------------------------------------------------


def test_tune_process_raises_both_settings_and_restores_them_exactly(user_values: Settings) -> None:
    with dp.tune_process() as tuning:
        assert rounded() == (process.SWITCH_INTERVAL, (process.GC_THRESHOLD, 11, 12))  # older thresholds kept
        assert [(c.setting, c.before, c.after) for c in tuning.changes] == [
            ("switch interval", USER_INTERVAL, process.SWITCH_INTERVAL),
            ("gc threshold", USER_THRESHOLD[0], process.GC_THRESHOLD),
        ]
        assert str(tuning) == "switch interval 7.1 ms -> 50 ms; gc threshold 777 -> 10,000"
    assert settings() == user_values
    assert tuning.restore() == ()  # twice changes nothing


def test_it_never_lowers_a_value_and_none_leaves_a_setting_alone(user_values: Settings) -> None:
    sys.setswitchinterval(0.2)
    with dp.tune_process(gc_threshold=None) as tuning:
        assert rounded() == (0.2, USER_THRESHOLD)
        assert tuning.changes == ()
        assert "nothing changed" in str(tuning)
    assert rounded() == (0.2, USER_THRESHOLD)


def test_a_value_the_user_sets_meanwhile_is_never_overwritten(user_values: Settings) -> None:
    tuning = dp.tune_process()
    sys.setswitchinterval(0.0123)
    assert [str(change) for change in tuning.restore()] == ["gc threshold 10,000 -> 777"]
    assert rounded() == (0.0123, USER_THRESHOLD)


def test_overlapping_tunings_hold_the_highest_asked_and_the_last_puts_back_the_first_value(
    user_values: Settings,
) -> None:
    low = dp.tune_process(switch_interval=0.02, gc_threshold=2000)
    high = dp.tune_process()
    assert rounded() == (0.05, (10_000, 11, 12))
    high.restore()  # back down to what the open one asked for
    assert rounded() == (0.02, (2000, 11, 12))
    again = dp.tune_process()
    low.restore()  # the other way round: the higher one still holds
    assert rounded() == (0.05, (10_000, 11, 12))
    again.restore()
    assert settings() == user_values


def test_a_tuning_open_when_the_user_changed_the_value_no_longer_holds_it(user_values: Settings) -> None:
    first = dp.tune_process(switch_interval=0.02, gc_threshold=None)
    sys.setswitchinterval(0.001)  # the user's now
    second = dp.tune_process(gc_threshold=None)
    assert interval() == 0.05
    second.restore()
    assert interval() == 0.001  # not first's 0.02: its ask lapsed with the user's change
    first.restore()
    assert rounded() == (0.001, USER_THRESHOLD)


def test_a_tuning_never_restored_keeps_its_values(user_values: Settings) -> None:
    dp.tune_process()  # dropped at once: the application owns the values now
    gc.collect()
    assert rounded() == (0.05, (10_000, 11, 12))
    with pool(2500):
        pass  # a pool neither keeps nor takes them
    assert rounded() == (0.05, (10_000, 11, 12))
    # (the fixture puts the process's own values back: the test's, not the library's, doing)


def test_a_collector_turned_off_with_threshold_0_stays_off(user_values: Settings) -> None:
    gc.set_threshold(0, 11, 12)
    with dp.tune_process():
        assert gc.get_threshold() == (0, 11, 12)
    assert gc.get_threshold() == (0, 11, 12)


@pytest.mark.parametrize(
    "name, bad",
    [
        *(("switch_interval", bad) for bad in (0, -1, float("inf"), float("nan"), "fast", True)),
        *(("gc_threshold", bad) for bad in (0, -1, 1.5, "many", True)),
        *(("calls_in_flight", bad) for bad in (0, 2.5, "many", True)),
    ],
    ids=repr,
)
def test_a_bad_value_is_named_before_anything_is_changed(user_values: Settings, name: str, bad: object) -> None:
    with pytest.raises(ValueError, match=name):
        dp.tune_process(**{name: bad})  # type: ignore[arg-type]
    assert settings() == user_values


CHILD = textwrap.dedent(
    """
    import json, os, resource, sys
    import deepseek_pool as dp
    from deepseek_pool import process

    NOFILE = resource.RLIMIT_NOFILE
    soft = lambda: resource.getrlimit(NOFILE)[0]
    seen = {}
    resource.setrlimit(NOFILE, (256, resource.getrlimit(NOFILE)[1]))
    client = dp.DeepSeekClient("sk-test", base_url="http://127.0.0.1:9")
    try:
        dp.DeepSeekPool(client, max_workers=300)
    except dp.ConfigurationError as err:
        seen["refused"] = str(err)
    dp.DeepSeekPool(client, max_workers=300, max_in_flight=100).close()  # 100 connections fit
    held = [open(os.devnull) for _ in range(200)]  # ... unless the files already open leave no room
    try:
        dp.DeepSeekPool(client, max_workers=100)
    except dp.ConfigurationError as err:
        seen["refused_with_files_open"] = str(err)
    for file in held:
        file.close()

    with dp.tune_process(300) as tuning:
        seen["tuned"], seen["changes"] = soft(), [str(c) for c in tuning.changes]
        dp.DeepSeekPool(client, max_workers=300).close()
    seen["restored"] = soft()

    tuning = dp.tune_process(300)
    resource.setrlimit(NOFILE, (500, resource.getrlimit(NOFILE)[1]))  # the user's own, meanwhile
    tuning.restore()
    seen["users"] = soft()

    resource.setrlimit(NOFILE, (256, 280))  # a hard limit too low (lowered for good in this child)
    tuning = dp.tune_process(300)
    seen["capped"], seen["short"] = soft(), tuning.short
    tuning.restore()
    seen["after_capped"] = soft()
    print(json.dumps(seen))
    """
)


def test_the_open_files_limit_is_raised_within_the_hard_limit_and_restored_exactly() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(REPO)}
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert "300 connections" in seen["refused"]
    assert "256 files" in seen["refused"]
    assert "tune_process(300)" in seen["refused"] and "ulimit -n" in seen["refused"]
    assert "100 connections" in seen["refused_with_files_open"]
    assert seen["tuned"] >= 300 + process.SPARE_FILES
    assert seen["changes"][-1] == f"open files 256 -> {seen['tuned']:,}"
    assert seen["restored"] == 256
    assert seen["users"] == 500
    assert seen["capped"] == 280
    assert "hard limit of 280" in seen["short"]
    assert seen["after_capped"] == 256
    assert "above the hard limit of 280" in done.stderr  # said as a warning too


# -- the hint ----------------------------------------------------------------------------


@pytest.fixture
def untuned_process(monkeypatch: pytest.MonkeyPatch, user_values: Settings) -> None:
    """A process that never called tune_process and was never given the hint."""
    monkeypatch.setattr(process, "_tuned", False)
    monkeypatch.setattr(process, "_hinted", False)


def hints(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "deepseek_pool.process" and r.levelno == logging.WARNING
    ]


def test_a_large_pool_without_the_call_logs_one_hint(untuned_process: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="deepseek_pool.process")
    with pool(process.HINT_FROM_WORKERS - 1):
        pass
    assert hints(caplog) == []
    with pool(2500), pool(512):
        pass
    (hint,) = hints(caplog)
    assert "DeepSeekPool of 2500 workers" in hint
    assert "deepseek_pool.tune_process(2500)" in hint
    assert "2,500 calls in flight" in hint and "PROFILE.md" in hint


def test_no_hint_once_the_application_made_the_call_or_set_the_values(
    untuned_process: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="deepseek_pool.process")
    sys.setswitchinterval(0.05)
    gc.set_threshold(10_000)
    with pool(2500):
        pass
    sys.setswitchinterval(USER_INTERVAL)
    dp.tune_process(switch_interval=None, gc_threshold=None).restore()  # the application chose: leave them
    with pool(2500):
        pass
    assert hints(caplog) == []


# -- the CLI is an application -----------------------------------------------------------


def test_deepseek_pool_run_makes_the_call_sized_to_its_workers_and_restores(
    user_values: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made: List[Tuple[int, dp.ProcessTuning, Settings]] = []

    def tune(calls_in_flight: int) -> dp.ProcessTuning:
        tuning = process.tune_process(calls_in_flight)
        made.append((calls_in_flight, tuning, settings()))
        return tuning

    monkeypatch.setattr(run, "tune_process", tune)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": f"q {i}"}) + "\n" for i in range(5)))
    with FakeDeepSeek() as fake:
        monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test")
        monkeypatch.setenv("DEEPSEEK_BASE_URL", fake.base_url)
        argv = ["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "-q", "--workers", "200"]
        assert commands.main([*argv, "--max-in-flight", "150"]) == 0
    ((calls, _tuning, during),) = made
    assert calls == 150
    assert (round(during[0], 6), during[1]) == (0.05, (10_000, 11, 12))
    assert settings() == user_values  # given back on return


RUN_WITH_LOW_LIMIT = (
    "import resource, runpy, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
    "sys.argv = ['deepseek-pool', *sys.argv[1:]]; runpy.run_module('deepseek_pool', run_name='__main__')"
)


def test_deepseek_pool_run_raises_a_low_open_files_limit_and_finishes(tmp_path: Path) -> None:
    """Issue 25's case, small: more workers than the soft limit allows files, and the run still ends well."""
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": f"q {i}"}) + "\n" for i in range(300)))
    with FakeDeepSeek(latency=0.2) as fake:
        env = {"PYTHONPATH": str(REPO), "DEEPSEEK_API_KEY": "sk-test", "DEEPSEEK_BASE_URL": fake.base_url}
        argv = ["run", "in.jsonl", "-o", "out.jsonl", "-q", "--workers", "300"]
        done = subprocess.run(
            [sys.executable, "-c", RUN_WITH_LOW_LIMIT, *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 300 and all(line["error"] is None for line in lines)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_pool_call_leaves_no_cyclic_garbage(stream: bool) -> None:
    """Why a larger young generation is safe: the collector has nothing of ours to find.

    Every object of a call is freed by its reference count when the call ends; if one
    formed a cycle, a raised threshold would keep such garbage alive longer.
    """
    requests = [{"prompt": f"question {n}", "stream": stream} for n in range(40)]
    with FakeDeepSeek() as fake:
        client = dp.DeepSeekClient("sk-test", base_url=fake.base_url, max_retries=0)
        with client, dp.DeepSeekPool(client, max_workers=8) as pool:
            assert all(result.ok for result in pool.map(requests[:8]))  # warm: connections, lazy state
            gc.collect()
            flags, was_enabled = gc.get_debug(), gc.isenabled()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector would free lands in gc.garbage
            try:
                results = pool.map(requests)
                del results
                gc.collect()
                garbage = [type(thing).__qualname__ for thing in gc.garbage]
            finally:
                gc.set_debug(flags)
                gc.garbage.clear()
                if was_enabled:
                    gc.enable()
    assert garbage == []
