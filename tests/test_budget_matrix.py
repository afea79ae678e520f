"""The invariant "peak in flight at the server <= cap", over storages x faults x process models.

Each cell runs real processes against one FakeDeepSeek, which counts the requests it is
working on at each instant (``peak_concurrency``), a killed client's included, as DeepSeek
counts them. The survivors run either as threads of one process or as processes forked
from one that made the limiter and client before the fork (gunicorn ``--preload``, Celery
prefork). Faults:

* ``sigkill``: a holder process is killed while its calls fill the cap at the server;
* ``locked``: another writer holds the sqlite database's lock, past ``busy_timeout``, three
  times while the survivors run (admissions may fail unsent; releases are absorbed);
* ``restart``: the redis-server is killed and started again, empty, mid-run (``fail`` mode);
* ``clock``: each survivor's wall clock steps 10 minutes (back for threads, forward for
  forks) mid-run. sqlite runs on the host's boot clock and Redis on the server's, so
  neither may stall or pass the cap (a step of Redis's own clock: tests/test_storage_faults.py).

``memory://`` is one process's budget, so it has only the clock cell: processes of their
own share nothing through it (docs/scaling.rst). Every cell checks: the peak never passed
the cap (and reached it, where nothing failed: the cap is used, not split), every answer
is the right one, the only errors are the fault's own (StorageUnavailable: not sent), and
the run ended in time.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest

from deepseek_pool.testing import FakeDeepSeek

from .redisserver import RedisServer, redis_server_binary
from .test_processes import child_env

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and POSIX signals"),
    pytest.mark.timeout(60),
]

CAP = 3
LATENCY = 0.25
#: The survivors' bound on a call, from the moment the pool accepts it (queueing included).
CALL_TIMEOUT = 10.0
#: The holder's: a killed holder's sqlite slots come back at its calls' deadlines.
HOLDER_CALL_TIMEOUT = 1.0
#: Each survivor's share: 12 calls for threads (one process), 6 per forked process (two).
CALLS = {"threads": 12, "fork": 6}

WORKER = textwrap.dedent(
    """
    import json, os, sys, threading, time
    import deepseek_pool as dp
    from deepseek_pool.testing import FakeDeepSeek

    cfg = json.loads(sys.argv[1])
    limiter = dp.Limiter(max_in_flight=cfg["cap"], storage=cfg["uri"], name="matrix", lease_seconds=cfg["lease"])
    client = dp.DeepSeekClient("sk-matrix", base_url=cfg["base_url"], call_timeout=cfg["call_timeout"], max_retries=0)

    def step_the_wall_clock():
        real = time.time
        time.sleep(0.3)
        time.time = lambda: real() + cfg["step"]

    def run(tag, calls):
        if cfg["step"]:
            threading.Thread(target=step_the_wall_clock, daemon=True).start()
        deadline = time.monotonic() + 20
        while not os.path.exists(cfg["go"]) and time.monotonic() < deadline:
            time.sleep(0.005)
        prompts = [f"{tag} call {i}" for i in range(calls)]
        with dp.DeepSeekPool(client, max_workers=2 * cfg["cap"], limiter=limiter) as pool:
            results = pool.map(prompts)
        outcome = {"ok": 0, "wrong": 0, "errors": {}}
        for prompt, result in zip(prompts, results):
            if result.ok:
                right = result.completion.content == FakeDeepSeek.answer_for(prompt)
                outcome["ok" if right else "wrong"] += 1
            else:
                name = type(result.error).__name__
                outcome["errors"][name] = outcome["errors"].get(name, 0) + 1
        print(json.dumps(outcome), flush=True)

    if cfg["role"] == "holder":
        with dp.DeepSeekPool(client, max_workers=cfg["cap"], limiter=limiter) as pool:
            pool.map([f"held {i}" for i in range(cfg["cap"])])
    elif cfg["model"] == "fork":
        print("ready", flush=True)
        pids = []
        for k in range(2):
            pid = os.fork()
            if pid == 0:
                try:
                    run(f"{os.getpid()}", cfg["calls"])
                finally:
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
    else:
        print("ready", flush=True)
        run(f"{os.getpid()}", cfg["calls"])
    """
)

CELLS = [
    ("memory", "clock", "threads"),
    *[("sqlite", fault, model) for fault in ("sigkill", "locked", "clock") for model in ("threads", "fork")],
    *[("redis", fault, model) for fault in ("sigkill", "restart", "clock") for model in ("threads", "fork")],
]


@pytest.fixture
def redis_for_cell(request: pytest.FixtureRequest) -> Iterator[Optional[RedisServer]]:
    if request.node.callspec.params["storage"] != "redis":
        yield None
        return
    pytest.importorskip("redis")
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.close()


def spawn(children: list, cfg: Dict[str, Any]) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", WORKER, json.dumps(cfg)], env=child_env(), stdout=subprocess.PIPE, text=True
    )
    children.append(child)
    return child


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def lock_the_database(path: str, times: int, hold: float, gap: float) -> threading.Thread:
    """Another writer takes the write lock ``times`` times, ``hold`` seconds each."""

    def run() -> None:
        db = sqlite3.connect(path, isolation_level=None, timeout=5)
        try:
            for _ in range(times):
                db.execute("BEGIN IMMEDIATE")
                time.sleep(hold)
                db.execute("COMMIT")
                time.sleep(gap)
        finally:
            db.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def restart(server: RedisServer, after: float, down: float) -> threading.Thread:
    def run() -> None:
        time.sleep(after)
        server.stop()
        time.sleep(down)
        server.start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("storage", "fault", "model"), CELLS)
def test_the_server_never_sees_more_than_the_cap(
    storage: str, fault: str, model: str, tmp_path: Path, children: list, redis_for_cell: Optional[RedisServer]
) -> None:
    db = str(tmp_path / "budget.db")
    if storage == "memory":
        uri = "memory://"
    elif storage == "sqlite":
        uri = f"sqlite:///{db}" + ("?busy_timeout=0.1" if fault == "locked" else "")
    else:
        assert redis_for_cell is not None
        uri = redis_for_cell.url() + "?on_storage_error=fail"
    go = tmp_path / "go"
    with FakeDeepSeek(latency=LATENCY) as fake:
        cfg: Dict[str, Any] = {
            "uri": uri,
            "cap": CAP,
            "lease": 0.9 if storage == "redis" else 0.3,
            "base_url": fake.base_url,
            "call_timeout": CALL_TIMEOUT,
            "go": str(go),
            "model": model,
            "role": "survivor",
            "calls": CALLS[model],
            "step": (-600.0 if model == "threads" else 600.0) if fault == "clock" else 0.0,
        }
        survivors = spawn(children, cfg)
        assert survivors.stdout is not None and survivors.stdout.readline().strip() == "ready"
        helper: Optional[threading.Thread] = None
        if fault == "sigkill":
            # sqlite: leases far shorter than the holder's calls at the server, so only their
            # deadline holds its slots; Redis knows no deadline: its leases must outlast a call
            # (docs/scaling.rst).
            lease = 0.9 if storage == "redis" else 0.1
            holder_cfg = {**cfg, "role": "holder", "step": 0.0, "lease": lease, "call_timeout": HOLDER_CALL_TIMEOUT}
            holder = spawn(children, holder_cfg)
            wait_until(lambda: fake.stats.in_flight >= CAP)  # the holder's calls fill the cap at the server
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
        elif fault == "locked":
            helper = lock_the_database(db, times=3, hold=0.3, gap=0.2)
        elif fault == "restart":
            assert redis_for_cell is not None
            helper = restart(redis_for_cell, after=0.3, down=0.0)
        started = time.monotonic()
        go.touch()
        out, _ = survivors.communicate(timeout=30)
        elapsed = time.monotonic() - started
        if helper is not None:
            helper.join(10)
        outcomes = [json.loads(line) for line in out.splitlines() if line.strip()]
        stats = fake.stats

    assert len(outcomes) == (2 if model == "fork" else 1), out
    allowed = {"StorageUnavailable"} if fault in ("locked", "restart") else set()
    for outcome in outcomes:
        assert outcome["wrong"] == 0, outcomes
        assert set(outcome["errors"]) <= allowed, outcomes
    assert sum(o["ok"] for o in outcomes) >= 1, outcomes  # a process may meet only the outage
    assert stats.peak_concurrency <= CAP, (stats, outcomes)
    if not allowed:
        assert stats.peak_concurrency == CAP  # the cap is used, not split
        assert sum(o["ok"] for o in outcomes) == 12
    assert elapsed < 15.0, elapsed  # nothing stalled (a clock step of 600 s would)
