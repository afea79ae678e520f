"""A fork from C (uWSGI's default mode) runs no ``os.register_at_fork`` hook: fork safety must not need one.

A script, run in a subprocess so that pytest is never forked, makes a module-level
client, pool and sqlite limiter, uses them (pooled keep-alive connections, the watchdog,
the stream reader, the executor's threads and the lease renewer all exist), then forks
with libc's ``fork()`` through ctypes (``PyDLL``, which holds the GIL as a C caller must).
Parent and child both call a FakeDeepSeek that the test started, at once: every answer
must be the one for its own prompt, nothing may hang, the shared cap must hold (the fake
answers 429 above it) and the two processes' leases must differ. The same holds under a
real uWSGI in its default mode (no ``--lazy-apps``), when the ``uwsgi`` command is on
PATH (``pip install uwsgi``).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

import deepseek_pool as dp
from deepseek_pool import forks
from deepseek_pool.budget.storage import MemoryStorage
from deepseek_pool.testing import FakeDeepSeek

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs libc fork()")

ROOT = Path(__file__).resolve().parent.parent
CAP = 4
CALLS = 24  # per process, half of them streamed

FORKER = textwrap.dedent(
    """
    import ctypes, faulthandler, json, os, sys, time
    import deepseek_pool as dp
    from deepseek_pool.testing import FakeDeepSeek

    base_url, uri, out, cap, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    limiter = dp.Limiter(max_in_flight=cap, storage=uri, name="c-fork", lease_seconds=3.0)
    client = dp.DeepSeekClient("sk-c-fork", base_url=base_url, max_retries=0, timeout=10.0, limiter=limiter)
    pool = dp.DeepSeekPool(client, max_workers=2 * cap, limiter=limiter)

    # Before the fork: keep-alive connections in the pool, a watchdog, a stream reader,
    # executor threads, a lease renewer, and leases taken in the sqlite budget.
    warm = pool.map([{"messages": f"warm {i}", "stream": i % 2 == 0} for i in range(4 * cap)])
    assert all(r.ok for r in warm), [r.error for r in warm if not r.ok]
    assert client.chat("warm stream", stream=True).content == FakeDeepSeek.answer_for("warm stream")

    def run(role):
        prompts = [f"{role} {os.getpid()} prompt {i}" for i in range(calls)]
        started = time.monotonic()
        results = pool.map([{"messages": p, "stream": i % 2 == 0} for i, p in enumerate(prompts)])
        direct = client.chat(f"{role} direct", stream=True).content  # the stream reader, outside the pool
        permit = limiter.acquire(timeout=10)
        lease = permit.lease
        limiter.release(permit)
        wrong = [
            (p, r.completion.content)
            for p, r in zip(prompts, results)
            if r.ok and r.completion.content != FakeDeepSeek.answer_for(p)
        ]
        report = {
            "pid": os.getpid(),
            "ok": sum(r.ok for r in results),
            "errors": [repr(r.error) for r in results if not r.ok],
            "wrong": wrong,
            "direct_right": direct == FakeDeepSeek.answer_for(f"{role} direct"),
            "lease_prefix": lease.split(":")[0],
            "seconds": time.monotonic() - started,
        }
        with open(os.path.join(out, role + ".json"), "w") as file:
            json.dump(report, file)

    # PyDLL keeps the GIL across the call, as C code that forks a Python process must (CDLL
    # lets it go: the child could wake with the GIL held by a thread it does not have).
    # No os.register_at_fork hook runs, and neither does CPython's own after-fork repair: a
    # thread waiting for the GIL at the fork leaves the child a GIL whose condition variable
    # waits for that thread for ever (seen in gdb: 1 run in 6 under load). That is CPython's
    # hazard, not the library's; uWSGI avoids it with --py-call-osafterfork or --lazy-apps.
    # The sleep lets every woken thread take its turn and go back to its wait first.
    time.sleep(0.1)
    pid = ctypes.PyDLL(None).fork()
    if pid == 0:
        faulthandler.dump_traceback_later(30, exit=True)  # a hang shows where, in the test's output
        code = 1
        try:
            run("child")
            pool.close()
            limiter.close()
            code = 0
        finally:
            os._exit(code)  # CPython, told of no fork, would join the parent's threads at exit
    run("parent")
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            sys.exit("the child hung")
        time.sleep(0.02)
    if status != 0:
        sys.exit(f"the child failed (wait status {status})")
    pool.close()
    limiter.close()
    """
)


def test_processes_forked_from_c_never_share_connections_threads_or_leases(tmp_path: Path) -> None:
    script = tmp_path / "forker.py"
    script.write_text(FORKER)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with FakeDeepSeek(latency=0.03, max_concurrency=CAP) as fake:
        budget = f"sqlite:///{tmp_path / 'budget.db'}"
        done = subprocess.run(
            [sys.executable, str(script), fake.base_url, budget, str(tmp_path), str(CAP), str(CALLS)],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        stats = fake.stats
    assert done.returncode == 0, done.stderr
    parent = json.loads((tmp_path / "parent.json").read_text())
    child = json.loads((tmp_path / "child.json").read_text())
    for report in (parent, child):
        assert report["errors"] == [] and report["ok"] == CALLS, report
        assert report["wrong"] == [], report  # never the answer to another process's request
        assert report["direct_right"], report
    assert parent["pid"] != child["pid"]
    assert parent["lease_prefix"] != child["lease_prefix"]
    assert stats.by_status.get(429, 0) == 0, stats  # the sqlite cap held across both processes
    assert stats.peak_concurrency <= CAP, stats


# -- the mechanism, without a fork: another process id is enough ---------------------------


def test_a_new_process_id_resets_a_shared_storage_once_not_once_per_limiter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two limiters on one storage: the second to notice the new process must not drop the first's lease."""
    storage = MemoryStorage()
    first = dp.Limiter(max_in_flight=2, storage=storage, name="shared")
    second = dp.Limiter(max_in_flight=2, storage=storage, name="shared")
    parents = first.acquire()  # a call of the parent's, in flight at the fork
    prefix = parents.lease.split(":")[0]
    monkeypatch.setattr(forks, "current", lambda: -7)  # as if forked from C: no hook ran
    held = first.acquire(timeout=0)  # the parent's lease is gone from this process's budget
    assert held.lease.split(":")[0] != prefix
    other = second.acquire(timeout=0)  # resets the limiter, not the storage again
    assert first.stats.in_flight == 2
    with pytest.raises(TimeoutError):
        second.acquire(timeout=0)  # the cap still counts the first limiter's call
    first.release(held)
    second.release(other)
    assert first.stats.in_flight == 0


# -- real uWSGI, default mode: the app is loaded in the master, workers are forked from C --------

UWSGI_APP = textwrap.dedent(
    """
    import json, os
    from urllib.parse import parse_qs
    import deepseek_pool as dp
    from deepseek_pool.testing import FakeDeepSeek

    CAP = int(os.environ["C_FORK_CAP"])
    limiter = dp.Limiter(max_in_flight=CAP, storage=os.environ["C_FORK_BUDGET"], name="uwsgi", lease_seconds=3.0)
    client = dp.DeepSeekClient(
        "sk-uwsgi", base_url=os.environ["C_FORK_BASE_URL"], max_retries=0, timeout=10.0, limiter=limiter
    )
    pool = dp.DeepSeekPool(client, max_workers=2 * CAP, limiter=limiter)
    # In the master, before uWSGI forks: connections, threads and leases exist.
    assert all(r.ok for r in pool.map([{"messages": f"warm {i}", "stream": i % 2 == 0} for i in range(2 * CAP)]))
    assert client.chat("warm stream", stream=True).content == FakeDeepSeek.answer_for("warm stream")


    def application(environ, start_response):
        query = parse_qs(environ.get("QUERY_STRING", ""))
        tag, calls = query["tag"][0], int(query["calls"][0])
        prompts = [f"{tag} {os.getpid()} prompt {i}" for i in range(calls)]
        results = pool.map([{"messages": p, "stream": i % 2 == 0} for i, p in enumerate(prompts)])
        direct = client.chat(f"{tag} direct", stream=True).content
        permit = limiter.acquire(timeout=10)
        limiter.release(permit)
        report = {
            "pid": os.getpid(),
            "ok": sum(r.ok for r in results),
            "errors": [repr(r.error) for r in results if not r.ok],
            "wrong": [
                p for p, r in zip(prompts, results) if r.ok and r.completion.content != FakeDeepSeek.answer_for(p)
            ],
            "direct_right": direct == FakeDeepSeek.answer_for(f"{tag} direct"),
            "lease_prefix": permit.lease.split(":")[0],
        }
        body = json.dumps(report).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    """
)
UWSGI_REQUESTS = 16
UWSGI_CALLS = 12  # per request


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("uWSGI did not start listening") from None
            time.sleep(0.05)


def test_uwsgi_default_mode_workers_never_share_connections_threads_or_leases(tmp_path: Path) -> None:
    binary = shutil.which("uwsgi")
    if binary is None:
        pytest.skip("the uwsgi command is not on PATH (pip install uwsgi)")
    (tmp_path / "c_fork_app.py").write_text(UWSGI_APP)
    port = free_port()
    log = tmp_path / "uwsgi.log"
    with FakeDeepSeek(latency=0.03, max_concurrency=CAP) as fake:
        env = dict(
            os.environ,
            C_FORK_CAP=str(CAP),
            C_FORK_BUDGET=f"sqlite:///{tmp_path / 'budget.db'}",
            C_FORK_BASE_URL=fake.base_url,
            PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        command = [binary, "--master", "--processes", "2", "--http-socket", f"127.0.0.1:{port}"]
        # --skip-atexit: CPython, unaware of a fork from C, would join the master's executor
        # threads at a worker's exit and wait out uWSGI's 60 s reload mercy.
        command += ["--module", "c_fork_app:application", "--die-on-term", "--skip-atexit"]
        with open(log, "wb") as log_file:
            server = subprocess.Popen(
                command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_for_port(port, server)

            def get(i: int) -> dict:  # type: ignore[type-arg]
                url = f"http://127.0.0.1:{port}/?tag=r{i}&calls={UWSGI_CALLS}"
                with urllib.request.urlopen(url, timeout=30) as answer:
                    return json.loads(answer.read())  # type: ignore[no-any-return]

            with cf.ThreadPoolExecutor(8) as requests:
                reports = list(requests.map(get, range(UWSGI_REQUESTS)))
            stats = fake.stats
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)
    assert server.returncode == 0, log.read_text()
    for report in reports:
        assert report["errors"] == [] and report["ok"] == UWSGI_CALLS, report
        assert report["wrong"] == [] and report["direct_right"], report
    prefixes = {report["pid"]: report["lease_prefix"] for report in reports}
    assert len(prefixes) == 2 and len(set(prefixes.values())) == 2, prefixes  # both workers served, each its own leases
    assert stats.by_status.get(429, 0) == 0, stats
    assert stats.peak_concurrency <= CAP, stats
