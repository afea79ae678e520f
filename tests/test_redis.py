"""One budget through a real redis-server: the rules, real processes, SIGKILL, outages, forks.

The session's redis-server (``redis_server`` in conftest) listens on a free 127.0.0.1 port
and is stopped at the end; the outage tests start one of their own, so that stopping it
disturbs nobody. These mirror tests/test_processes.py (sqlite://) for redis://; the rule
tests of tests/test_limits.py run on Redis too (``every_storage``). Every wait has a
timeout and every child is killed at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, List

import pytest

import deepseek_pool as dp
from deepseek_pool.budget import rules as budget
from deepseek_pool.budget.rules import BudgetConfig, RateLimitSignal
from deepseek_pool.budget.storage import MemoryStorage
from deepseek_pool.testing import FakeDeepSeek

from .redisserver import RedisServer, running_redis
from .test_processes import HOLDER, child_env, run_in_fork, three_processes_share_a_cap_of_six

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'deepseek-pool[redis]')")
from deepseek_pool.budget import redis_scripts, redis_storage  # noqa: E402  (needs redis-py)
from deepseek_pool.budget.redis_storage import RedisStorage  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and POSIX signals"),
    pytest.mark.timeout(60),
]

KEY = "sk-redis-test"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may stop and start again."""
    with running_redis() as server:
        yield server


@pytest.fixture
def fast_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_storage, "PROBE_INTERVAL", 0.1)


# -- the rules: Lua against budget.py ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def snapshot_dict(storage: Any, name: str, config: BudgetConfig) -> dict:
    return dataclasses.asdict(storage.snapshot(name, config))


@pytest.mark.parametrize("seed", range(6))
def test_the_lua_rules_decide_exactly_as_budget_py(seed: int, redis_url: str) -> None:
    """Random operations on a memory budget and a Redis one, on one clock: same answers, same state."""
    rng = random.Random(seed)
    config = BudgetConfig(
        max_in_flight=rng.choice([None, 2, 5]),
        rpm=rng.choice([None, 120.0, 900.0]),
        tpm=rng.choice([None, 1000, 50_000]),
        retry_budget=rng.choice([None, 0, 30]),
    )
    clock = Clock()
    memory = MemoryStorage(clock)
    client = redis.Redis.from_url(redis_url)
    shared = RedisStorage(client, clock=clock)
    name = f"rules-{seed}"
    held: List[str] = []
    signals = [
        RateLimitSignal(),
        RateLimitSignal(named_cap=rng.randrange(1, 9), concurrency=True),
        RateLimitSignal(None, True),
        RateLimitSignal(None, False, True),
    ]
    try:
        for step in range(250):
            roll = rng.random()
            if roll < 0.35:
                lease, tokens = f"lease-{step}", rng.randrange(0, 1500)
                granted = memory.start(name, config, tokens, lease, 1e9)
                assert shared.start(name, config, tokens, lease, 1e9) == pytest.approx(granted, rel=1e-12)
                if granted == 0.0:
                    held.append(lease)
            elif roll < 0.6 and held:
                lease = held.pop(rng.randrange(len(held)))
                kwargs = dict(
                    reserved=rng.randrange(0, 1500),
                    tokens_used=rng.choice([None, 0, rng.randrange(0, 3000)]),
                    earned=rng.choice([1, 5, 15]),
                    ok=rng.random() < 0.8,
                )
                memory.finish(name, config, lease, **kwargs)
                shared.finish(name, config, lease, **kwargs)
            elif roll < 0.68:
                sig, seconds = rng.choice(signals), rng.choice([0.0, 0.05, 0.5, 3.0])
                assert shared.rate_limited(name, config, seconds, sig) == memory.rate_limited(
                    name, config, seconds, sig
                )
            elif roll < 0.78:
                cost = rng.choice([5, 10])
                assert shared.spend_retry(name, config, cost) == memory.spend_retry(name, config, cost)
            elif roll < 0.82:
                assert shared.retry_hold(name) == pytest.approx(memory.retry_hold(name), rel=1e-12)
            else:
                clock.now += rng.choice([0.001, 0.05, 0.3, 2.0, budget.NAMED_CAP_HOLD])
            assert snapshot_dict(shared, name, config) == pytest.approx(snapshot_dict(memory, name, config), rel=1e-12)
    finally:
        client.close()


def test_keys_carry_one_hash_tag_so_redis_cluster_keeps_a_budget_in_one_slot(redis_url: str) -> None:
    limiter = dp.Limiter(max_in_flight=2, storage=redis_url, name="flash")
    permit = limiter.acquire(timeout=1)
    client = redis.Redis.from_url(redis_url)
    try:
        assert sorted(client.keys("*")) == [b"{deepseek:flash}:leases", b"{deepseek:flash}:state"]
        assert client.zcard("{deepseek:flash}:leases") == 1
        assert 0 < client.ttl("{deepseek:flash}:state") <= redis_scripts.KEY_TTL
    finally:
        limiter.release(permit)
        limiter.close()
        client.close()


def test_a_ready_client_is_wrapped_and_left_open(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    one = dp.Limiter(max_in_flight=1, storage=client, name="ready")
    two = dp.Limiter(max_in_flight=1, storage=RedisStorage(client), name="ready")
    permit = one.acquire(timeout=1)
    with pytest.raises(TimeoutError):
        two.acquire(timeout=0.1)
    one.release(permit)
    two.release(two.acquire(timeout=1))
    one.close()
    two.close()
    assert client.ping()  # the caller's client: not closed by the limiters
    client.close()


def test_uri_options(redis_url: str) -> None:
    storage = dp.Limiter(storage=redis_url + "?on_storage_error=local&socket_timeout=2").storage
    assert isinstance(storage, RedisStorage)
    assert storage.on_storage_error == "local"
    assert storage.client.connection_pool.connection_kwargs["socket_timeout"] == 2.0
    assert "local" in repr(storage)
    storage.close()
    with pytest.raises(dp.ConfigurationError, match="on_storage_error"):
        dp.Limiter(storage=redis_url + "?on_storage_error=ignore")
    tls = RedisStorage.from_uri("rediss://127.0.0.1:1/0")  # nothing is sent until a call
    assert tls.client.connection_pool.connection_class is redis.SSLConnection
    tls.close()


def test_the_core_imports_neither_redis_nor_the_redis_storage_unless_asked() -> None:
    code = (
        "import sys, deepseek_pool as dp\n"
        "dp.Limiter(); dp.DeepSeekPool(dp.DeepSeekClient('sk-x', base_url='http://127.0.0.1:9')).close()\n"
        "assert 'redis' not in sys.modules and 'deepseek_pool.budget.redis_storage' not in sys.modules, sys.modules\n"
        "assert 'celery' not in sys.modules\n"
        "dp.Limiter(storage='redis://127.0.0.1:1/0')\n"
        "assert 'deepseek_pool.budget.redis_storage' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], env=child_env(), check=True, timeout=30)


# -- real processes ------------------------------------------------------------------------------


def test_three_processes_share_a_cap_of_six_and_use_it(redis_url: str, tmp_path: Path, children: list) -> None:
    three_processes_share_a_cap_of_six(redis_url, tmp_path, children)


def test_a_killed_process_gives_its_slots_back_within_its_lease(redis_url: str, children: list) -> None:
    lease = 1.0
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url, str(lease)], env=child_env(), stdout=subprocess.PIPE, text=True
    )
    children.append(holder)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    limiter = dp.Limiter(max_in_flight=3, storage=redis_url, name="held")
    time.sleep(lease * 1.5)  # renewed meanwhile: still held
    assert limiter.stats.in_flight == 3
    with pytest.raises(TimeoutError):
        limiter.acquire(timeout=0.2)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    start = time.monotonic()
    permits = [limiter.acquire(timeout=5) for _ in range(3)]
    assert time.monotonic() - start < lease + 0.5  # within the dead process's lease
    for permit in permits:
        limiter.release(permit)
    limiter.close()


STARTER = textwrap.dedent(
    """
    import sys, time, os
    import deepseek_pool as dp
    uri, go, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    limiter = dp.Limiter(rpm=300, storage=uri, name="rpm")
    deadline = time.monotonic() + 20
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.005)
    for _ in range(n):
        limiter.release(limiter.acquire(timeout=20))
        print(limiter.storage.clock(), flush=True)
    """
)


def test_rpm_is_shared_across_processes(redis_url: str, tmp_path: Path, children: list) -> None:
    go = tmp_path / "go"
    for _ in range(3):
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", STARTER, redis_url, str(go), "4"],
                env=child_env(),
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    time.sleep(1.0)
    go.touch()
    starts = sorted(float(line) for child in children for line in child.communicate(timeout=30)[0].split())
    assert len(starts) == 12
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # 300 rpm: one start every 0.2 s for the three processes together, not for each
    # (a time is read just after its start, so a gap may look a little short).
    assert min(gaps) > 0.15
    assert starts[-1] - starts[0] > 11 * 0.2 * 0.9


def test_a_call_that_outlives_its_lease_keeps_its_slot(redis_url: str) -> None:
    long_call = dp.Limiter(max_in_flight=1, storage=redis_url, name="long", lease_seconds=0.3)
    permit = long_call.acquire()
    client = redis.Redis.from_url(redis_url)
    first_expiry = client.zscore("{deepseek:long}:leases", f"{permit.lease}")
    time.sleep(1.0)  # three lease lifetimes: only renewal keeps it
    assert client.zscore("{deepseek:long}:leases", f"{permit.lease}") > first_expiry
    observer = dp.Limiter(max_in_flight=1, storage=redis_url, name="long", lease_seconds=0.3)
    assert observer.stats.in_flight == 1
    with pytest.raises(TimeoutError):
        observer.acquire(timeout=0.1)
    long_call.release(permit)
    assert observer.stats.in_flight == 0
    long_call.close()
    observer.close()
    client.close()


def test_a_limiter_made_before_a_fork_works_in_the_child(redis_url: str) -> None:
    with FakeDeepSeek(latency=0.01) as fake:
        limiter = dp.Limiter(max_in_flight=4, storage=redis_url, name="fork")
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url)
        with dp.DeepSeekPool(client, max_workers=4, limiter=limiter) as pool:
            assert all(r.ok for r in pool.map(["warm up"] * 8))  # connections and leases exist
            held = limiter.acquire()  # a slot the parent holds across the fork: shared, so the child sees it

            def child() -> bool:
                results = pool.map([f"child {i}" for i in range(12)])
                return all(r.ok for r in results) and pool.limiter.stats.in_flight == 1

            assert run_in_fork(child) == 0
            limiter.release(held)
            assert all(r.ok for r in pool.map(["parent again"] * 4))
        assert limiter.stats.in_flight == 0
        assert limiter.stats.started == 8 + 1 + 12 + 4
        limiter.close()


# -- Redis down mid-run ---------------------------------------------------------------------------


def records(caplog: pytest.LogCaptureFixture, text: str) -> List[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "deepseek_pool.budget.redis_storage" and text in r.getMessage()]


def test_redis_down_with_fail_fails_unsent_calls_clearly_and_keeps_finished_ones(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture, fast_probe: None
) -> None:
    caplog.set_level(logging.WARNING)
    with FakeDeepSeek(latency=0.4) as fake:
        limiter = dp.Limiter(max_in_flight=4, storage=own_redis.url() + "?on_storage_error=fail", name="down")
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url)
        with dp.DeepSeekPool(client, max_workers=8, limiter=limiter) as pool:
            futures = [pool.submit(f"q {i}") for i in range(8)]
            deadline = time.monotonic() + 10
            while fake.stats.requests < 4:  # four in flight, four queued at the cap
                assert time.monotonic() < deadline
                time.sleep(0.01)
            own_redis.stop()
            outcomes = [f.exception(timeout=20) for f in futures]
            answered = [o for o in outcomes if o is None]
            refused = [o for o in outcomes if o is not None]
            assert len(answered) == 4  # in flight when Redis went: answered, release logged and dropped
            assert len(refused) == 4 and all(isinstance(o, dp.StorageUnavailable) for o in refused)
            assert "unreachable" in str(refused[0]) and "on_storage_error" in str(refused[0])
            assert fake.stats.requests == 4  # nothing was sent without the shared budget
            with pytest.raises(dp.StorageUnavailable):
                limiter.stats  # noqa: B018
            assert len(records(caplog, "unreachable")) == 1  # logged once for the outage
            own_redis.start()
            back = pool.map(["back"] * 4)
            assert all(r.ok for r in back), [r.error for r in back]  # Redis answers: calls run again
        assert len(records(caplog, "answers again")) == 1
        assert limiter.stats.in_flight == 0
        limiter.close()


def test_redis_down_with_local_falls_back_to_a_process_budget_and_returns(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture, fast_probe: None
) -> None:
    caplog.set_level(logging.WARNING)
    limiter = dp.Limiter(max_in_flight=2, storage=own_redis.url() + "?on_storage_error=local", name="local")
    storage = limiter.storage
    assert isinstance(storage, RedisStorage)
    with FakeDeepSeek(latency=0.1) as before, FakeDeepSeek(latency=0.1) as during:
        with dp.DeepSeekPool(dp.DeepSeekClient(KEY, base_url=before.base_url), max_workers=6, limiter=limiter) as pool:
            futures = [pool.submit(f"before {i}") for i in range(6)]
            deadline = time.monotonic() + 10
            while before.stats.requests < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            own_redis.stop()  # mid-run: two in flight on Redis leases, four waiting
            assert all(f.result(timeout=20).content for f in futures)  # none lost, none failed
            assert storage.local
        # (the two on Redis leases ran beside the first two local ones: the local budget cannot see them)
        assert before.stats.requests == 6 and before.stats.peak_concurrency <= 4
        with dp.DeepSeekPool(dp.DeepSeekClient(KEY, base_url=during.base_url), max_workers=6, limiter=limiter) as pool:
            assert all(r.ok for r in pool.map([f"during {i}" for i in range(6)]))
            assert during.stats.peak_concurrency <= 2  # the local budget keeps the same cap
            assert len(records(caplog, "falling back")) == 1  # once for the outage, at WARNING
            own_redis.start()
            time.sleep(redis_storage.PROBE_INTERVAL * 2)
            assert all(r.ok for r in pool.map([f"after {i}" for i in range(4)]))
            assert not storage.local
            assert during.stats.peak_concurrency <= 2
    assert len(records(caplog, "answers again")) == 1
    stats = limiter.stats  # from Redis again: a fresh server, so only what ran since it came back
    assert (stats.in_flight, stats.cap) == (0, 2)
    assert 4 <= stats.started <= 5  # (the probe that found it back may have been a start)
    limiter.close()


def test_the_local_fallback_keeps_the_cap_with_no_redis_at_all(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    limiter = dp.Limiter(max_in_flight=2, storage="redis://127.0.0.1:1/0?on_storage_error=local", name=uuid.uuid4().hex)
    permits = [limiter.acquire(timeout=1), limiter.acquire(timeout=1)]
    with pytest.raises(TimeoutError):
        limiter.acquire(timeout=0.1)
    for permit in permits:
        limiter.release(permit)
    assert limiter.stats.in_flight == 0 and limiter.stats.started == 2
    assert len(records(caplog, "falling back")) == 1
    limiter.close()
