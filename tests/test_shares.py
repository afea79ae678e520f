"""Guaranteed shares of one budget (issue 23): an interactive share keeps its slots while a
batch saturates the rest, borrows what nobody else uses, and the rule holds on every
storage, across processes, as the adaptive cap moves, and for every sequence of starts
and ends (a hypothesis property of :func:`deepseek_pool.budget.shares.admits`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deepseek_pool as dp
from deepseek_pool.budget import shares as share_rules
from deepseek_pool.budget.limiter import Limiter, Permit
from deepseek_pool.budget.sqlite_storage import SQLiteStorage
from deepseek_pool.budget.storage import MemoryStorage, Storage
from deepseek_pool.errors import ConfigurationError
from deepseek_pool.testing import FakeDeepSeek

if importlib.util.find_spec("pytest_timeout") is not None:  # every wait below has its own bound too
    pytestmark = pytest.mark.timeout(90)

SHARES = {"interactive": 4, "batch": 0}
StorageFactory = Callable[[], Storage]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def storages(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageFactory]:
    """Makes storages of the param's kind on one budget: for sqlite and redis each call is a
    new connection, as another process would open; for memory, one object."""
    kind = request.param
    made: List[Storage] = []
    memory = MemoryStorage()

    def make() -> Storage:
        storage: Storage
        if kind == "memory":
            return memory
        if kind == "sqlite":
            storage = SQLiteStorage(str(tmp_path / "budget.db"))
        else:
            import redis

            from deepseek_pool.budget.redis_storage import RedisStorage

            storage = RedisStorage(redis.Redis.from_url(request.getfixturevalue("redis_url")))
        made.append(storage)
        return storage

    yield make
    for storage in made:
        client = getattr(storage, "client", None)
        (client.close if client is not None else storage.close)()


def fill(limiter: Limiter, share: Optional[str] = None, most: int = 100) -> List[Permit]:
    """Every permit ``limiter`` grants at once (for ``share``), up to ``most``."""
    permits = []
    while len(permits) < most:
        try:
            permits.append(limiter.acquire(timeout=0, share=share))
        except TimeoutError:
            break
    return permits


def release_all(limiter: Limiter, permits: List[Permit]) -> None:
    for permit in permits:
        limiter.release(permit)
    permits.clear()


# -- the two-share test --------------------------------------------------------------------


def test_an_interactive_pool_keeps_its_slots_while_a_batch_pool_saturates_the_rest(
    storages: StorageFactory,
) -> None:
    """Cap 6, interactive guaranteed 2: a batch pool of 10 workers runs 4 calls, never 6, and
    the interactive pool's calls start at once (no wait at the limiter), with no 429."""
    name = uuid.uuid4().hex
    shares = {"interactive": 2, "batch": 0}
    batch_limiter = Limiter(max_in_flight=6, shares=shares, storage=storages(), name=name)
    interactive_limiter = Limiter(max_in_flight=6, shares=shares, storage=storages(), name=name)
    latency = 0.3
    with FakeDeepSeek(latency=latency, max_concurrency=6) as fake:
        client = dp.DeepSeekClient("sk-test", base_url=fake.base_url, max_retries=0)
        with (
            client,
            dp.DeepSeekPool(client, max_workers=10, limiter=batch_limiter, share="batch") as batch,
            dp.DeepSeekPool(client, max_workers=2, limiter=interactive_limiter, share="interactive") as interactive,
        ):
            batch_results: List[Any] = []
            runner = threading.Thread(target=lambda: batch_results.extend(batch.map([f"b{i}" for i in range(40)])))
            runner.start()
            deadline = time.monotonic() + 10
            while fake.stats.in_flight < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            seen = []
            for _ in range(20):  # the batch saturates its part and no more
                seen.append(fake.stats.in_flight)
                time.sleep(0.02)
            assert max(seen) == 4, seen
            for _ in range(3):
                began = time.monotonic()
                answers = interactive.map(["i1", "i2"])
                took = time.monotonic() - began
                assert all(r.ok for r in answers), [r.error for r in answers]
                assert took < latency + 0.25, took  # not behind a batch call
            assert interactive.limiter.stats.throttled == 0  # never waited for a slot
            runner.join(timeout=30)
            assert not runner.is_alive()
    assert len(batch_results) == 40 and all(r.ok for r in batch_results)
    assert fake.stats.peak_concurrency <= 6
    assert batch.limiter.share == "batch" and interactive.limiter.share == "interactive"
    batch_limiter.close()
    interactive_limiter.close()


def test_idle_slots_are_borrowed_and_guarantees_are_never_taken(storages: StorageFactory) -> None:
    name = uuid.uuid4().hex
    batch = Limiter(max_in_flight=10, shares=SHARES, share="batch", storage=storages(), name=name)
    interactive = Limiter(max_in_flight=10, shares=SHARES, share="interactive", storage=storages(), name=name)
    common = Limiter(max_in_flight=10, shares=SHARES, storage=storages(), name=name)  # calls of no share
    # The batch alone: the six slots nobody is guaranteed, never the interactive's four.
    batch_permits = fill(batch)
    assert len(batch_permits) == 6
    assert fill(common) == []
    # The interactive share starts its four at once while the batch holds the rest.
    interactive_permits = fill(interactive)
    assert len(interactive_permits) == 4
    release_all(batch, batch_permits)
    # The batch idle: the interactive share borrows the whole cap.
    interactive_permits += fill(interactive)
    assert len(interactive_permits) == 10
    assert fill(batch) == []
    release_all(interactive, interactive_permits)
    # Two interactive calls run: the batch still gets only the six, and two more
    # interactive ones start at once; a third would be past its guarantee and is refused.
    interactive_permits = fill(interactive, most=2)
    batch_permits = fill(batch)
    assert len(batch_permits) == 6
    interactive_permits += fill(interactive)
    assert len(interactive_permits) == 4
    assert interactive.stats.in_flight == 10
    # Calls of no share borrow like the batch does.
    release_all(batch, batch_permits)
    common_permits = fill(common)
    assert len(common_permits) == 6
    release_all(common, common_permits)
    release_all(interactive, interactive_permits)
    assert batch.stats.in_flight == 0
    for limiter in (batch, interactive, common):
        limiter.close()


def test_one_limiter_queues_each_share_apart(storages: StorageFactory) -> None:
    """Batch calls waiting in ``acquire(share="batch")`` do not hold an interactive one back."""
    limiter = Limiter(max_in_flight=10, shares=SHARES, storage=storages(), name=uuid.uuid4().hex)
    held = fill(limiter, "batch")
    assert len(held) == 6
    waiting: List[Any] = []
    threads = [
        threading.Thread(target=lambda: waiting.append(limiter.acquire(share="batch", timeout=10))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while limiter.stats.waiting < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert limiter.stats.waiting == 3
    permit = limiter.acquire(share="interactive", timeout=0)  # at once, past the batch's queue
    assert permit.lease.endswith("/interactive")
    limiter.release(permit)  # a permit of the share's limiter, handed back through this one
    for _ in range(3):
        limiter.release(held.pop())
    for thread in threads:
        thread.join(timeout=10)
    assert len(waiting) == 3
    release_all(limiter, held)
    release_all(limiter, waiting)
    assert limiter.stats.in_flight == 0
    limiter.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_shares_hold_across_processes(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A batch in another process takes six of ten; this process's interactive share its four."""
    storage = f"sqlite:///{tmp_path}/budget.db" if kind == "sqlite" else request.getfixturevalue("redis_url")
    name = uuid.uuid4().hex
    script = (
        "import json, sys\n"
        "import deepseek_pool as dp\n"
        "spec = json.loads(sys.argv[1])\n"
        "limiter = dp.Limiter(max_in_flight=10, shares=spec['shares'], share='batch', storage=spec['storage'],"
        " name=spec['name'])\n"
        "held = []\n"
        "while True:\n"
        "    try:\n"
        "        held.append(limiter.acquire(timeout=0))\n"
        "    except TimeoutError:\n"
        "        break\n"
        "print(len(held), flush=True)\n"
        "sys.stdin.readline()\n"
        "for permit in held:\n"
        "    limiter.release(permit)\n"
        "limiter.close()\n"
        "print('released', flush=True)\n"
    )
    spec = {"shares": SHARES, "storage": storage, "name": name}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    interactive = Limiter(max_in_flight=10, shares=SHARES, share="interactive", storage=storage, name=name)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "6"
        mine = fill(interactive)
        assert len(mine) == 4  # the guarantee, and nothing past it: the batch holds the rest
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "released"
        mine += fill(interactive)
        assert len(mine) == 10  # the other process's slots are back, and borrowed
        release_all(interactive, mine)
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
        interactive.close()


def test_guarantees_follow_the_adaptive_cap(storages: StorageFactory) -> None:
    """``interactive: 4`` of ten is 40 % of the cap: 2 slots at a named cap of 5, still at least 1 at 2."""
    name = uuid.uuid4().hex
    limiter = Limiter(max_in_flight=10, shares=SHARES, storage=storages(), name=name, jitter=lambda s: 0.0)
    limiter.cool_down(0.0, message="Concurrency limit of 5 based on your remaining balance")
    assert limiter.stats.cap == 5
    batch = fill(limiter, "batch")
    assert len(batch) == 3
    interactive = fill(limiter, "interactive")
    assert len(interactive) == 2
    release_all(limiter, batch)
    release_all(limiter, interactive)
    limiter.cool_down(0.0, message="Concurrency limit of 2 based on your remaining balance")
    batch = fill(limiter, "batch")
    assert len(batch) == 1  # the batch is never shut out by a guarantee that left it room
    interactive = fill(limiter, "interactive")
    assert len(interactive) == 1
    release_all(limiter, batch)
    release_all(limiter, interactive)
    limiter.close()


def test_fractions_of_the_cap(storages: StorageFactory) -> None:
    """web 0.25 and jobs 0.5 of a cap of 8: 2 and 4 slots guaranteed, 2 for anyone."""
    limiter = Limiter(
        max_in_flight=8, shares={"web": 0.25, "jobs": 0.5, "misc": 0.0}, storage=storages(), name=uuid.uuid4().hex
    )
    web = fill(limiter, "web")
    jobs = fill(limiter, "jobs")
    misc = fill(limiter, "misc")
    assert (len(web), len(jobs), len(misc)) == (4, 4, 0)  # web borrowed the two free slots first
    release_all(limiter, web)
    misc = fill(limiter, "misc")
    assert len(misc) == 2  # the free two, not web's idle two ...
    web = fill(limiter, "web")
    assert len(web) == 2  # ... which web then takes at once
    for permits in (web, jobs, misc):
        release_all(limiter, permits)
    limiter.close()


def test_a_limiter_and_its_share_limiters_are_one_to_close_and_to_count(tmp_path: Path) -> None:
    shares = {"interactive": 2, "batch": 0}
    limiter = Limiter(max_in_flight=3, shares=shares, storage=f"sqlite:///{tmp_path}/budget.db", name="x")
    batch = limiter.for_share("batch")
    assert limiter.for_share("batch") is batch and batch.for_share("batch") is batch
    assert batch.for_share(None) is limiter and batch.storage is limiter.storage
    held = batch.acquire(timeout=5)
    with pytest.raises(TimeoutError):
        limiter.acquire(share="batch", timeout=0)  # 3 - 2 guaranteed to interactive: one batch call ...
    assert limiter.stats.timeouts == 1 and batch.stats.timeouts == 1  # ... counted where it waited, seen by both
    limiter.release(held)
    assert batch._renewer is not None and batch._renewer.is_alive()
    limiter.close()
    batch._renewer.join(timeout=5)
    assert not batch._renewer.is_alive()  # the share's lease renewer stops with its maker


# -- one truth: conflicting shares, bad input -----------------------------------------------------


def test_a_limiter_with_other_shares_is_refused_while_calls_run(storages: StorageFactory) -> None:
    name = uuid.uuid4().hex
    first = Limiter(max_in_flight=10, shares=SHARES, storage=storages(), name=name)
    other = Limiter(max_in_flight=10, shares={"interactive": 2, "batch": 0}, storage=storages(), name=name)
    plain = Limiter(max_in_flight=10, storage=storages(), name=name)
    held = first.acquire(share="batch", timeout=5)
    for refused in (other, plain):
        with pytest.raises(ConfigurationError, match="runs with other shares"):
            refused.acquire(timeout=1)
    first.release(held)
    taken = other.acquire(share="interactive", timeout=5)  # nothing runs under the old shares now
    with pytest.raises(ConfigurationError, match="runs with other shares"):
        first.acquire(timeout=1)
    other.release(taken)
    for limiter in (first, other, plain):
        limiter.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shares": {"a": 6, "b": 5}}, "guarantee more than max_in_flight=10"),
        ({"shares": {"a": 0.5, "b": 6}}, "guarantee more than max_in_flight=10"),
        ({"shares": {"a": 1.5}}, "fraction of the cap must be from 0 to 1"),
        ({"shares": {"a": -1}}, "must be >= 0"),
        ({"shares": {"a": "4"}}, "an int of slots or a fraction"),
        ({"shares": {"a b": 1}}, "a share's name"),
        ({"shares": {"a/b": 1}}, "a share's name"),
        ({"shares": {}}, "non-empty dict"),
        ({"shares": {"a": 1}, "max_in_flight": None}, "shares need max_in_flight"),
        ({"shares": SHARES, "share": "nightly"}, "unknown share 'nightly'"),
        ({"share": "batch"}, "needs a Limiter with shares="),
    ],
)
def test_bad_shares_are_refused_clearly(kwargs: Dict[str, Any], message: str) -> None:
    kwargs.setdefault("max_in_flight", 10)
    with pytest.raises(ConfigurationError, match=message):
        Limiter(**kwargs)


def test_an_unknown_share_is_refused_before_anything_is_sent() -> None:
    limiter = Limiter(max_in_flight=4, shares=SHARES)
    with FakeDeepSeek() as fake, dp.DeepSeekClient("sk-test", base_url=fake.base_url) as client:
        with pytest.raises(ConfigurationError, match="unknown share 'nightly'"):
            limiter.acquire(share="nightly")
        with pytest.raises(ConfigurationError, match="unknown share 'nightly'"):
            dp.DeepSeekPool(client, limiter=limiter, share="nightly")
        with pytest.raises(ConfigurationError, match="unknown share 'nightly'"):
            dp.DeepSeekClient("sk-test", base_url=fake.base_url, limiter=limiter, share="nightly")
        with pytest.raises(ConfigurationError, match="needs limiter="):
            dp.DeepSeekPool(client, max_workers=2, share="batch")
        with pytest.raises(ConfigurationError, match="needs limiter="):
            dp.DeepSeekClient("sk-test", base_url=fake.base_url, share="batch")
        assert fake.stats.requests == 0
    assert limiter.stats.started == 0


def test_a_client_with_a_share_takes_its_direct_calls_slots_there() -> None:
    limiter = Limiter(max_in_flight=3, shares={"interactive": 1, "batch": 0})
    batch = fill(limiter, "batch")
    assert len(batch) == 2
    with (
        FakeDeepSeek() as fake,
        dp.DeepSeekClient("sk-test", base_url=fake.base_url, limiter=limiter, share="interactive") as client,
    ):
        assert client.limiter is limiter.for_share("interactive")
        assert client.chat("hi").content
    assert limiter.stats.finished == 1
    release_all(limiter, batch)
    assert repr(limiter).endswith("shares={'interactive': 1, 'batch': 0}, share=None)")


# -- the rule itself -------------------------------------------------------------------------------


@st.composite
def share_sets(draw: Any) -> Any:
    """A ceiling and shares that fit in it: ints of slots and fractions of the cap, mixed."""
    ceiling = draw(st.integers(1, 30))
    left = 1.0  # of the ceiling, not yet guaranteed
    given: Dict[str, float] = {}
    for name in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()):
            slots = draw(st.integers(0, int(left * ceiling + 1e-9)))
            given[name] = slots
            left -= slots / ceiling
        else:
            fraction = draw(st.integers(0, int(left * 100 + 1e-9))) / 100
            given[name] = fraction
            left -= fraction
    return ceiling, given


@settings(max_examples=300, deadline=None)
@given(share_sets(), st.data())
def test_the_admission_rule(setup: Any, data: Any) -> None:
    """For any shares, cap and run of starts and ends: the cap is never passed; a share below
    its guarantee may always start (when the guarantees fit in the cap); past it, a share
    borrows every slot that is no other share's idle guarantee, and no other."""
    ceiling, given = setup
    shares = share_rules.parse_shares(given, ceiling)
    cap = data.draw(st.integers(1, ceiling))
    guaranteed = share_rules.guaranteed(shares, cap)
    fits = sum(guaranteed.values()) <= cap
    running: Dict[str, int] = {}
    for _ in range(data.draw(st.integers(1, 80))):
        share = data.draw(st.sampled_from(["", *given]))
        used = running.get(share, 0)
        if used and data.draw(st.booleans()):
            running[share] = used - 1
            continue
        in_flight = sum(running.values())
        admitted = share_rules.admits(shares, cap, in_flight, running, share)
        idle_elsewhere = sum(max(0, g - running.get(name, 0)) for name, g in guaranteed.items() if name != share)
        if in_flight >= cap:
            assert not admitted
        if fits and used < guaranteed.get(share, 0):
            assert admitted
        if used >= guaranteed.get(share, 0):
            assert admitted == (in_flight + idle_elsewhere < cap)
        if admitted:
            running[share] = used + 1
        assert sum(running.values()) <= cap
        if fits:  # every share's guarantee stays free for it: reserved or in use
            held = sum(max(running.get(name, 0), g) for name, g in guaranteed.items()) + running.get("", 0)
            assert held <= cap


def test_every_storage_decides_as_the_rule_does(storages: StorageFactory) -> None:
    """The same random run of starts, ends and named caps gets the same answers from a
    storage (Redis's Lua among them) as from the pure rule."""
    rng = random.Random(23)
    given = {"interactive": 3, "batch": 0, "web": 0.2}
    limiter = Limiter(max_in_flight=10, shares=given, storage=storages(), name=uuid.uuid4().hex)
    shares = share_rules.parse_shares(given, 10)
    held: Dict[str, List[Permit]] = {"": [], "interactive": [], "batch": [], "web": []}
    cap = 10
    for step in range(300):
        if rng.random() < 0.05:
            cap = rng.randint(1, 10)
            limiter.cool_down(0.0, message=f"Concurrency limit of {cap}")
        share = rng.choice(list(held))
        if held[share] and rng.random() < 0.45:
            limiter.release(held[share].pop(rng.randrange(len(held[share]))))
            continue
        running = {name: len(permits) for name, permits in held.items() if name}
        in_flight = sum(len(permits) for permits in held.values())
        expected = share_rules.admits(shares, cap, in_flight, running, share)
        try:
            held[share].append(limiter.acquire(timeout=0, share=share or None))
            admitted = True
        except TimeoutError:
            admitted = False
        assert admitted == expected, (step, cap, share, running, in_flight)
    for permits in held.values():
        release_all(limiter, permits)
    assert limiter.stats.in_flight == 0
    limiter.close()


# -- the cap cell's shares part (benchmarks/cap_shares.py) at a tiny size ---------------------------


def test_the_cap_cells_shares_part_runs_every_arm() -> None:
    """The benchmark cannot rot: each arm answers every call, under the server's cap, and reports."""
    from dataclasses import asdict

    from benchmarks import cap, cap_shares, harness, report

    mixed = cap_shares.SharesCell(
        phase=40,
        batch_processes=2,
        batch_workers=4,
        quiet=0.3,
        interactive_rate=20.0,
        interactive_workers=2,
        interactive_share=0.34,
        settle=0.2,
    )
    cell = cap.CapCell(n=0, cap=6, processes=2, workers=4, latency=0.02, ceiling=12, mixed=mixed)
    with harness.LoadServer() as server:
        rows = cap.run_cell(cell, [], 1, server=server, timeout=60.0, env=harness.child_env(), cwd=harness.REPO)
    assert [row["arm"] for row in rows] == list(cap_shares.ARMS)
    for row in rows:
        assert "error" not in row, row
        assert row["interactive_calls"] > 0 and not row["interactive_errors"], row
        assert row["max_answering"] <= cell.cap
        if row["arm"] != "interactive":
            assert row["ok"] == row["n"] == 2 * mixed.phase and row["wrong"] == 0, row
            assert row["busy"] > 0 and row["efficiency"] > 0 and len(row["cap_after_quiet"]) == 2
    summary = cap.summarize(rows)
    text = "\n".join(cap_shares.table(summary, asdict(cell)))
    assert "Shares: the same server" in text and all(label in text for label in cap_shares.ARM_LABELS.values())
    assert report.cap_table(summary, asdict(cell))[-1].startswith("|---")  # the cap table leaves them out
