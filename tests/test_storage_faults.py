"""Storage faults, process identity and clocks (issue 23 items 2-5 and 10), one behaviour each.

* a killed process's sqlite slots come back at its calls' deadlines, not when it is seen gone;
* a lease in another PID namespace (same hostname) is never taken for a dead one;
* sqlite's times are on the host's monotonic clock: a wall-clock step moves nothing, a
  database from another boot starts its times afresh; what a step of Redis's clock does;
* a locked database after a call was sent never replaces the call's outcome (retried within
  ``busy_timeout``, then logged and counted), and fails admission with StorageUnavailable;
* Redis down in ``fail`` mode keeps a sent call's real outcome; a blackholed Redis costs
  an admission about 2 s (URI clients get timeouts), then calls fail fast.

The invariant over storages x faults x process models is tests/test_budget_matrix.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest

import deepseek_pool as dp
from deepseek_pool.budget.rules import BudgetConfig
from deepseek_pool.budget.sqlite_storage import SQLiteStorage
from deepseek_pool.forks import pid_scope
from deepseek_pool.testing import FakeDeepSeek

from .redisserver import RedisServer, running_redis
from .test_processes import child_env

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="host clock and pid namespaces are Linux's"),
    pytest.mark.timeout(60),
]

KEY = "sk-storage-faults"


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "budget.db")


def hold_write_lock(path: str, seconds: float, taken: threading.Event) -> threading.Thread:
    """Another writer (as another process would) holds the database's write lock for ``seconds``."""

    def hold() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            taken.set()
            time.sleep(seconds)
            db.execute("COMMIT")
        finally:
            db.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(5)
    return thread


# -- item 2: a killed process's slots come back at its calls' deadlines --------------------------

DYING = textwrap.dedent(
    """
    import sys, time
    import deepseek_pool as dp
    from deepseek_pool.budget.sqlite_storage import SQLiteStorage
    storage = SQLiteStorage(sys.argv[1])
    if sys.argv[2] != "-":
        storage._scope = sys.argv[2]  # as if in another PID namespace
    limiter = dp.Limiter(max_in_flight=2, storage=storage, name="dying", lease_seconds=float(sys.argv[3]))
    began = time.monotonic()  # CLOCK_MONOTONIC: one clock for the processes of a Linux host
    for ends_within in sys.argv[4:]:
        limiter.acquire(timeout=5, ends_within=None if ends_within == "-" else float(ends_within))
    print("held", began, flush=True)
    time.sleep(60)
    """
)


def start_holder(children: list, path: str, scope: str, lease_seconds: float, *ends_within: str) -> float:
    """A process that holds slots and is SIGKILLed at once; returns when it began to take them (monotonic)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", DYING, path, scope, str(lease_seconds), *ends_within],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    children.append(holder)
    assert holder.stdout is not None
    word, began = holder.stdout.readline().split()
    assert word == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    return float(began)


def in_flight_over_time(limiter: dp.Limiter, since: float, until: float) -> List[tuple]:
    """(seconds since ``since``, in flight) every 50 ms up to ``until`` seconds."""
    seen = []
    while time.monotonic() - since < until:
        seen.append((time.monotonic() - since, limiter.stats.in_flight))
        time.sleep(0.05)
    return seen


def test_a_killed_process_slots_come_back_at_each_calls_deadline_not_when_it_is_seen_gone(
    db_path: str, children: list
) -> None:
    # Leases of 0.3 s, renewed until the kill; deadlines 0.8 s and 1.6 s: DeepSeek may work on
    # a killed client's request until its deadline, so each slot is held exactly that long.
    held = start_holder(children, db_path, "-", 0.3, "0.8", "1.6")
    observer = dp.Limiter(max_in_flight=2, storage=f"sqlite:///{db_path}", name="dying")
    seen = in_flight_over_time(observer, held, 2.2)
    assert all(n == 2 for t, n in seen if t < 0.75), seen  # gone, expired, but its calls may still run
    assert all(n == 1 for t, n in seen if 1.0 < t < 1.5), seen  # the first call's deadline passed
    assert all(n == 0 for t, n in seen if t > 1.9), seen
    observer.close()


def test_a_killed_process_without_deadlines_gives_its_slots_back_at_its_lease_end(db_path: str, children: list) -> None:
    held = start_holder(children, db_path, "-", 0.6, "-", "-")
    observer = dp.Limiter(max_in_flight=2, storage=f"sqlite:///{db_path}", name="dying")
    seen = in_flight_over_time(observer, held, 1.5)
    assert all(n == 2 for t, n in seen if t < 0.55), seen  # seen gone, not freed
    assert all(n == 0 for t, n in seen if t > 1.3), seen  # the lease ran out (after the kill's delay)
    observer.close()


# -- item 4: identity across PID namespaces ---------------------------------------------------------


def test_the_pid_scope_is_the_boot_and_the_pid_namespace() -> None:
    scope = pid_scope()
    assert scope is not None
    with open("/proc/sys/kernel/random/boot_id") as boot:
        assert scope.startswith(boot.read().strip() + "/")
    assert scope.endswith(f"/pid:{os.stat('/proc/self/ns/pid').st_ino}")


def test_a_lease_of_another_pid_namespace_on_this_hostname_waits_for_its_expiry(db_path: str, children: list) -> None:
    # Same hostname, a pid that is dead here (it lived in "another namespace"): the old check
    # freed it at once. Its owner cannot be checked, so it lasts until its lease and deadline end.
    held = start_holder(children, db_path, "0000-other-boot/pid:4026531999", 0.6, "0.3", "-")
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        rows = db.execute("SELECT host, scope FROM lease").fetchall()
    assert rows and all(host == socket.gethostname() and scope.startswith("0000-other") for host, scope in rows)
    observer = dp.Limiter(max_in_flight=2, storage=f"sqlite:///{db_path}", name="dying")
    seen = in_flight_over_time(observer, held, 1.5)
    assert all(n == 2 for t, n in seen if t < 0.55), seen  # not freed at its deadline either: alive, for all we know
    assert all(n == 0 for t, n in seen if t > 1.3), seen  # its renewals stopped: expired
    observer.close()


def test_an_older_database_gets_the_new_lease_columns_and_its_old_leases_wait_for_expiry(db_path: str) -> None:
    old = sqlite3.connect(db_path, isolation_level=None)
    old.executescript(
        "CREATE TABLE budget (name TEXT PRIMARY KEY, state TEXT NOT NULL);"
        "CREATE TABLE lease (name TEXT NOT NULL, id TEXT NOT NULL, expires REAL NOT NULL, host TEXT NOT NULL,"
        " pid INTEGER NOT NULL, PRIMARY KEY (name, id));"
    )
    old.close()
    storage = SQLiteStorage(db_path)
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(lease)")}
    assert {"scope", "deadline"} <= columns
    # A lease written the old way after the upgrade (an older process still running): no scope.
    db = sqlite3.connect(db_path, isolation_level=None)
    dead = subprocess.Popen(["true"])
    dead.wait()
    expires = storage.clock() + 0.5
    db.execute(
        "INSERT INTO lease (name, id, expires, host, pid) VALUES (?, ?, ?, ?, ?)", ("old", "x", expires, "h", dead.pid)
    )
    db.close()
    config = BudgetConfig(max_in_flight=1)
    assert storage.snapshot("old", config).in_flight == 1  # its owner's pid means nothing here
    time.sleep(0.6)
    assert storage.snapshot("old", config).in_flight == 0
    storage.close()


# -- item 5: clocks -----------------------------------------------------------------------------


def test_sqlite_keeps_its_times_on_the_hosts_boot_clock(db_path: str) -> None:
    storage = SQLiteStorage(db_path)
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    now = storage.clock()
    assert before <= now <= time.clock_gettime(time.CLOCK_BOOTTIME)
    storage.close()


@pytest.mark.parametrize("step", [-600.0, 600.0])
def test_a_wall_clock_step_neither_stalls_rpm_nor_frees_slots(
    db_path: str, step: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = dp.Limiter(max_in_flight=1, rpm=600, storage=f"sqlite:///{db_path}", name="step", lease_seconds=0.5)
    permit = limiter.acquire(timeout=1)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + step)  # NTP or an operator steps the wall clock
    with pytest.raises(TimeoutError):
        limiter.acquire(timeout=0.7)  # the held slot outlives its 0.5 s lease by renewal, step or not
    limiter.release(permit)
    start = time.monotonic()
    for _ in range(3):
        limiter.release(limiter.acquire(timeout=2))  # spaced 0.1 s apart, not 600 s
    assert time.monotonic() - start < 1.0
    limiter.close()


def test_a_database_from_another_boot_starts_its_times_afresh(db_path: str) -> None:
    storage = SQLiteStorage(db_path)
    config = BudgetConfig(max_in_flight=2, rpm=60)
    assert storage.start("boot", config, 0, "a", 30.0) == 0.0
    storage.close()
    # As if written before a reboot: times far ahead of this boot's clock, and the old boot's leases.
    db = sqlite3.connect(db_path, isolation_level=None)
    (text,) = db.execute("SELECT state FROM budget WHERE name = 'boot'").fetchone()
    state = json.loads(text)
    state.update(next_start=1e9, cool_until=1e9)
    db.execute("UPDATE budget SET state = ? WHERE name = 'boot'", (json.dumps(state),))
    db.execute("UPDATE clock SET source = 'boottime:a-previous-boot'")
    db.close()
    again = SQLiteStorage(db_path)
    assert again.snapshot("boot", config).in_flight == 0
    assert again.start("boot", config, 0, "b", 30.0) == 0.0  # not held for 1e9 s
    again.close()


class SteppedClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_a_redis_clock_step_back_holds_rpm_for_the_step_and_no_longer(redis_client: object) -> None:
    from deepseek_pool.budget.redis_storage import RedisStorage

    clock = SteppedClock()  # the script's time source, as Redis's TIME would be
    storage = RedisStorage(redis_client, clock=clock)
    config = BudgetConfig(rpm=60)
    assert storage.start("step", config, 0, "a", 30.0) == 0.0
    storage.finish("step", config, "a", reserved=0, tokens_used=0, earned=0, ok=True)
    clock.now -= 600.0
    assert storage.start("step", config, 0, "b", 30.0) == pytest.approx(601.0)  # the documented bound: the step
    clock.now += 601.0
    assert storage.start("step", config, 0, "b", 30.0) == 0.0


def test_a_redis_clock_step_forward_past_a_lease_expires_running_calls(redis_client: object) -> None:
    from deepseek_pool.budget.redis_storage import RedisStorage

    clock = SteppedClock()
    storage = RedisStorage(redis_client, clock=clock)
    config = BudgetConfig(max_in_flight=1)
    assert storage.start("forward", config, 0, "running", 30.0) == 0.0
    assert storage.start("forward", config, 0, "next", 30.0) == float("inf")
    clock.now += 20.0  # less than the lease: the running call keeps its slot (renewed every 10 s)
    storage.renew("forward", ["running"], 30.0)
    assert storage.start("forward", config, 0, "next", 30.0) == float("inf")
    clock.now += 600.0  # more than the lease: as documented, its slot is taken for gone
    assert storage.start("forward", config, 0, "next", 30.0) == 0.0


# -- item 3: a locked database ---------------------------------------------------------------------


def test_a_release_waits_out_a_short_lock_and_frees_the_slot(db_path: str) -> None:
    with FakeDeepSeek(latency=0.3) as fake:
        limiter = dp.Limiter(max_in_flight=2, storage=f"sqlite:///{db_path}?busy_timeout=2", name="lock")
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url, limiter=limiter)
        answer: list = []
        call = threading.Thread(target=lambda: answer.append(client.chat("short lock")))
        call.start()
        deadline = time.monotonic() + 5
        while fake.stats.in_flight < 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        hold_write_lock(db_path, 0.6, threading.Event())  # the answer comes at 0.3 s, the lock ends at 0.6 s
        call.join(10)
        assert answer[0].content == FakeDeepSeek.answer_for("short lock")
        assert limiter.stats.in_flight == 0 and limiter.stats.storage_errors == 0
        client.close()
        limiter.close()


def test_a_lock_past_busy_timeout_never_fails_an_answered_call(db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with FakeDeepSeek(latency=0.3) as fake:
        uri = f"sqlite:///{db_path}?busy_timeout=0.2"
        limiter = dp.Limiter(max_in_flight=2, storage=uri, name="lock", lease_seconds=0.4)
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url, call_timeout=1.0)
        with dp.DeepSeekPool(client, max_workers=2, limiter=limiter, max_cost=1.0) as pool:
            future = pool.submit("long lock")
            deadline = time.monotonic() + 5
            while fake.stats.in_flight < 1:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            holder = hold_write_lock(db_path, 1.0, threading.Event())
            completion = future.result(timeout=10)  # the release gave up after 0.2 s: the answer stands
            assert completion.content == FakeDeepSeek.answer_for("long lock")
            assert pool.spend is not None and pool.spend.reserved == 0 and pool.spend.spent > 0  # settled
            with pytest.raises(dp.StorageUnavailable, match="not sent"):
                pool.submit("while locked").result(timeout=10)  # admission cannot wait past busy_timeout
            assert fake.stats.requests == 1
            holder.join(5)
            assert limiter.stats.storage_errors >= 1  # the release (and renewals that met the lock)
            assert any("could not release a slot" in r.getMessage() for r in caplog.records)
            time.sleep(0.5)  # the unreleased lease, no longer renewed, ends within its 0.4 s
            assert limiter.stats.in_flight == 0
            assert pool.submit("after").result(timeout=10).content == FakeDeepSeek.answer_for("after")
        limiter.close()


def test_a_429_while_the_database_is_locked_is_still_the_callers_429(db_path: str) -> None:
    with FakeDeepSeek(latency=0.3) as fake:
        fake.script("429")
        limiter = dp.Limiter(max_in_flight=2, storage=f"sqlite:///{db_path}?busy_timeout=0.1", name="lock")
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url, max_retries=0, limiter=limiter)
        errors: list = []

        def call() -> None:
            try:
                client.chat("rate limited")
            except Exception as err:
                errors.append(err)

        thread = threading.Thread(target=call)
        thread.start()
        deadline = time.monotonic() + 5
        while fake.stats.requests < 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        holder = hold_write_lock(db_path, 1.0, threading.Event())
        thread.join(10)
        assert len(errors) == 1 and isinstance(errors[0], dp.RateLimitError)
        holder.join(5)
        assert limiter.stats.storage_errors >= 2  # the 429's cool-down and the release
        client.close()
        limiter.close()


# -- item 10: Redis down after a call was sent; a blackholed Redis ---------------------------------


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    pytest.importorskip("redis")
    with running_redis() as server:
        yield server


@pytest.mark.parametrize("status", ["503", "429"])
def test_redis_down_in_fail_mode_keeps_a_sent_calls_real_status(own_redis: RedisServer, status: str) -> None:
    with FakeDeepSeek(latency=0.4) as fake:
        fake.script(status, status)
        limiter = dp.Limiter(max_in_flight=2, storage=own_redis.url() + "?on_storage_error=fail", name="sent")
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url, max_retries=2, limiter=limiter)
        errors: list = []

        def call() -> None:
            try:
                client.chat("sent before the outage")
            except Exception as err:
                errors.append(err)

        thread = threading.Thread(target=call)
        thread.start()
        deadline = time.monotonic() + 5
        while fake.stats.requests < 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        own_redis.stop()
        thread.join(15)
        expected = dp.ServiceUnavailableError if status == "503" else dp.RateLimitError
        assert len(errors) == 1 and type(errors[0]) is expected, errors  # the answer it got, not StorageUnavailable
        assert "not retried" in "".join(getattr(errors[0], "__notes__", [])) + str(errors[0])
        assert fake.stats.requests == 1  # and no retry went out without the shared budget
        assert limiter.storage.storage_errors >= 2  # its retry refused, its release kept locally
        client.close()
        limiter.close()


def test_a_redis_uri_gets_timeouts_so_a_blackholed_redis_cannot_stall_a_call(children: list) -> None:
    pytest.importorskip("redis")
    blackhole = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)
    port = blackhole.getsockname()[1]
    try:
        limiter = dp.Limiter(max_in_flight=2, storage=f"redis://127.0.0.1:{port}/0", name="blackhole")
        kwargs = limiter.storage.client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
        assert kwargs["socket_timeout"] == 1.0 and kwargs["socket_connect_timeout"] == 1.0
        client = dp.DeepSeekClient(KEY, base_url="http://127.0.0.1:9", call_timeout=3.0, limiter=limiter)
        start = time.monotonic()
        with pytest.raises(dp.StorageUnavailable):
            client.chat("never admitted")
        assert time.monotonic() - start < 3.0  # within call_timeout: one try and one retry of 1 s
        start = time.monotonic()
        with pytest.raises(dp.StorageUnavailable):
            client.chat("failing fast")  # the outage is known: no second wait
        assert time.monotonic() - start < 0.5
        client.close()
        limiter.close()
    finally:
        blackhole.close()


def test_a_redis_uri_keeps_the_timeouts_it_names(redis_url: str) -> None:
    limiter = dp.Limiter(storage=redis_url + "?socket_timeout=7&socket_connect_timeout=3", name="named")
    kwargs = limiter.storage.client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
    assert kwargs["socket_timeout"] == 7.0 and kwargs["socket_connect_timeout"] == 3.0
    limiter.close()


def test_a_redis_that_lost_the_budget_counts_the_running_calls_again_before_admitting_more(
    redis_url: str, redis_client: object
) -> None:
    import redis

    from deepseek_pool.budget.redis_storage import RedisStorage

    other_client = redis.Redis.from_url(redis_url)
    running = dp.Limiter(max_in_flight=2, storage=RedisStorage(redis_client), name="lost", lease_seconds=0.6)
    waiting = dp.Limiter(max_in_flight=2, storage=RedisStorage(other_client), name="lost", lease_seconds=0.6)
    waiting.release(waiting.acquire(timeout=1))  # a sharer that knows the budget
    permits = [running.acquire(timeout=1) for _ in range(2)]
    other_client.flushall()  # what a restart without persistence does (and its scripts are gone too)
    other_client.script_flush()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        waiting.acquire(timeout=1.0)  # the running calls are counted again (their renewal), not forgotten
    assert time.monotonic() - start >= 0.9
    assert waiting.stats.in_flight == 2
    for permit in permits:
        running.release(permit)
    waiting.release(waiting.acquire(timeout=1))
    running.close()
    waiting.close()
    other_client.close()
