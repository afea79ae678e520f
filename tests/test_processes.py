"""One budget across real processes and real forks: sqlite:// storage, leases, fork safety.

Every child is a real process (``subprocess`` or ``os.fork``) talking to a FakeDeepSeek
on 127.0.0.1 that counts peak concurrency; every wait has a timeout and every child is
killed at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

import deepseek_pool as dp
from deepseek_pool.budget.sqlite_storage import SQLiteStorage
from deepseek_pool.testing import FakeDeepSeek

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and POSIX signals")

KEY = "sk-processes-test"
ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def budget_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'budget.db'}"


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


SHARER = textwrap.dedent(
    """
    import sys, time, os
    import deepseek_pool as dp
    base_url, uri, go, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    limiter = dp.Limiter(max_in_flight=6, storage=uri, name="shared")
    client = dp.DeepSeekClient("sk-processes-test", base_url=base_url)
    deadline = time.monotonic() + 20
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.005)
    with dp.DeepSeekPool(client, max_workers=6, limiter=limiter) as pool:
        results = pool.map(f"{os.getpid()} {i}" for i in range(n))
    print(sum(r.ok for r in results), flush=True)
    """
)


def three_processes_share_a_cap_of_six(uri: str, tmp_path: Path, children: list) -> None:
    """Three processes of 6 workers each, one budget of 6 at ``uri``: the cap holds and is used."""
    go = tmp_path / "go"
    with FakeDeepSeek(latency=0.1) as fake:
        for _ in range(3):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-c", SHARER, fake.base_url, uri, str(go), "20"],
                    env=child_env(),
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        time.sleep(1.0)  # let them import and connect
        go.touch()
        answered = [int(child.communicate(timeout=60)[0].strip()) for child in children]
        assert answered == [20, 20, 20]
        assert fake.stats.peak_concurrency <= 6  # three pools of 6 workers, one cap of 6
        assert fake.stats.peak_concurrency >= 5  # and the cap is used, not split
        assert fake.stats.requests == 60


def test_three_processes_share_a_cap_of_six_and_use_it(budget_uri: str, tmp_path: Path, children: list) -> None:
    three_processes_share_a_cap_of_six(budget_uri, tmp_path, children)


HOLDER = textwrap.dedent(
    """
    import sys, time
    import deepseek_pool as dp
    limiter = dp.Limiter(max_in_flight=3, storage=sys.argv[1], name="held", lease_seconds=float(sys.argv[2]))
    permits = [limiter.acquire(timeout=5) for _ in range(3)]
    print("held", flush=True)
    time.sleep(60)
    """
)


def test_a_killed_process_gives_its_slots_back_at_its_lease_end_not_at_once(budget_uri: str, children: list) -> None:
    # DeepSeek may still be working on (and counting) a killed process's requests: its
    # slots come back when its leases end (tests/test_storage_faults.py: at its deadline).
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, budget_uri, "1.0"], env=child_env(), stdout=subprocess.PIPE, text=True
    )
    children.append(holder)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    limiter = dp.Limiter(max_in_flight=3, storage=budget_uri, name="held")
    assert limiter.stats.in_flight == 3
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        limiter.acquire(timeout=0.2)  # seen gone, but its leases still run
    permits = [limiter.acquire(timeout=5) for _ in range(3)]
    assert 0.2 < time.monotonic() - start < 1.5  # at most one lease_seconds after its last renewal
    for permit in permits:
        limiter.release(permit)
    limiter.close()


def test_the_slots_of_a_process_on_another_host_return_when_its_leases_expire(budget_uri: str) -> None:
    elsewhere = SQLiteStorage.from_uri(budget_uri)
    elsewhere._scope = "another-machine"  # its pid means nothing here: only the expiry can free it
    gone = dp.Limiter(max_in_flight=1, storage=elsewhere, name="hosts", lease_seconds=0.5)
    gone.acquire()
    gone.close()  # stops renewing, as a dead process would
    here = dp.Limiter(max_in_flight=1, storage=budget_uri, name="hosts", lease_seconds=0.5)
    with pytest.raises(TimeoutError):
        here.acquire(timeout=0.2)
    start = time.monotonic()
    here.release(here.acquire(timeout=3))
    assert 0.1 < time.monotonic() - start < 1.5
    here.close()
    elsewhere.close()  # given to the limiter, so not closed by it


def test_a_call_that_outlives_its_lease_keeps_its_slot(budget_uri: str) -> None:
    long_call = dp.Limiter(max_in_flight=1, storage=budget_uri, name="long", lease_seconds=0.3)
    permit = long_call.acquire()
    time.sleep(1.0)  # three lease lifetimes: only renewal keeps it
    other = SQLiteStorage.from_uri(budget_uri)
    other._scope = "another-machine"
    observer = dp.Limiter(max_in_flight=1, storage=other, name="long", lease_seconds=0.3)
    assert observer.stats.in_flight == 1
    with pytest.raises(TimeoutError):
        observer.acquire(timeout=0.1)
    long_call.release(permit)
    assert observer.stats.in_flight == 0
    long_call.close()
    observer.close()
    other.close()


def test_sqlite_budgets_with_different_names_are_separate(budget_uri: str) -> None:
    one = dp.Limiter(max_in_flight=1, storage=budget_uri, name="one")
    two = dp.Limiter(max_in_flight=1, storage=budget_uri, name="two")
    first, second = one.acquire(timeout=0), two.acquire(timeout=0)
    one.release(first)
    two.release(second)
    assert (one.stats.started, two.stats.started) == (1, 1)
    one.close()
    two.close()


def test_a_named_cap_is_shared_through_sqlite(budget_uri: str) -> None:
    one = dp.Limiter(max_in_flight=100, storage=budget_uri, name="cap")
    two = dp.Limiter(max_in_flight=100, storage=budget_uri, name="cap")
    one.cool_down(0.0, message="concurrency limit of 7 based on your remaining balance")
    assert two.stats.cap == 7
    one.close()
    two.close()


def test_an_sqlite_storage_used_after_close_keeps_no_connection_open(budget_uri: str) -> None:
    """As a lease renewer that wakes while its limiter closes: the call works, and closes what it opened."""
    storage = SQLiteStorage.from_uri(budget_uri)
    limiter = dp.Limiter(max_in_flight=1, storage=storage, name="after-close")
    permit = limiter.acquire()
    storage.close()
    limiter.release(permit)
    assert limiter.stats.in_flight == 0
    assert storage._db is None  # nothing left open for the finalizer to warn about
    limiter.close()


def test_an_unusable_sqlite_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(dp.ConfigurationError, match="limiter storage"):
        dp.Limiter(storage=f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")


def test_an_unknown_storage_scheme_says_which_exist() -> None:
    with pytest.raises(dp.ConfigurationError, match="memory, sqlite"):
        dp.Limiter(storage="etcd://localhost")


# -- forks -------------------------------------------------------------------------------------


def run_in_fork(body, timeout: float = 30.0) -> int:  # type: ignore[no-untyped-def]
    """Run ``body()`` in a forked child; return its exit status (0: body returned True)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a threaded process
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            code = 0 if body() else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung")
        time.sleep(0.01)


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_a_client_pool_and_limiter_made_before_a_fork_work_in_the_child(storage: str, budget_uri: str) -> None:
    with FakeDeepSeek(latency=0.01) as fake:
        uri = budget_uri if storage == "sqlite" else "memory://"
        limiter = dp.Limiter(max_in_flight=4, storage=uri, name="fork")
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url)
        with dp.DeepSeekPool(client, max_workers=4, limiter=limiter) as pool:
            assert all(r.ok for r in pool.map(["warm up"] * 8))  # threads, connections and leases exist
            held = limiter.acquire()  # a slot the parent holds across the fork

            def child() -> bool:
                results = pool.map([f"child {i}" for i in range(12)])
                stats = pool.stats
                return all(r.ok for r in results) and stats.in_flight == 0

            assert run_in_fork(child) == 0
            limiter.release(held)
            assert all(r.ok for r in pool.map(["parent again"] * 4))  # the parent is untouched
        assert limiter.stats.in_flight == 0
        limiter.close()


def test_a_forked_child_keeps_its_copy_of_the_parents_sqlite_connection_unused(budget_uri: str) -> None:
    """Never closed (a close could wait for a mutex a thread of the parent held at the fork),
    never dropped (its finalizer would close it, and warn on 3.13): kept, and the child opens its own."""
    from deepseek_pool.budget import sqlite_storage

    limiter = dp.Limiter(max_in_flight=2, storage=budget_uri, name="fork-close")
    held = limiter.acquire()
    parents = limiter.storage._db  # type: ignore[attr-defined]

    def child() -> bool:
        limiter.release(limiter.acquire(timeout=5))  # on a connection of the child's own
        own = limiter.storage._db  # type: ignore[attr-defined]
        return own is not None and own is not parents and any(db is parents for db in sqlite_storage._INHERITED)

    assert run_in_fork(child) == 0
    assert parents.execute("SELECT 1").fetchone() == (1,)
    limiter.release(held)
    assert (limiter.stats.started, limiter.stats.in_flight) == (2, 0)  # the child's call is in the one budget
    limiter.close()


def test_a_child_forked_during_a_transaction_leaves_it_to_the_parent(budget_uri: str) -> None:
    """Closing the child's copy would roll back, in the shared WAL index, what the parent is writing."""
    storage = SQLiteStorage.from_uri(budget_uri)
    limiter = dp.Limiter(max_in_flight=2, storage=storage, name="fork-busy")
    inside, leave = threading.Event(), threading.Event()

    def hold_a_transaction() -> None:
        with storage.transaction("fork-busy"):
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold_a_transaction, daemon=True)
    holder.start()
    assert inside.wait(10)
    parents = storage._db

    def child() -> bool:
        return storage._db is None and parents is not None and parents.in_transaction  # open, not rolled back

    try:
        assert run_in_fork(child) == 0
    finally:
        leave.set()
        holder.join(10)
    limiter.release(limiter.acquire(timeout=5))
    assert limiter.stats.started == 1
    limiter.close()
    storage.close()


def test_the_childs_memory_budget_forgets_the_parents_calls() -> None:
    limiter = dp.Limiter(max_in_flight=2)
    held = [limiter.acquire(), limiter.acquire()]

    def child() -> bool:
        permits = [limiter.acquire(timeout=1), limiter.acquire(timeout=1)]  # the parent's two are not here
        return len(permits) == 2

    assert run_in_fork(child) == 0
    for permit in held:
        limiter.release(permit)
