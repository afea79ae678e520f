"""deepseek_pool.contrib.celery: the chunk runner, and a real Celery worker under one Redis budget.

The worker is ``celery -A celery_app worker --pool prefork --concurrency 2`` running
examples/celery_app.py itself, with the session's redis-server as broker, result backend
and limiter storage, against a FakeDeepSeek whose concurrency cap answers 429 above it.
Every wait has a timeout; the worker is stopped (and killed if need be) at the end.

Stopping a worker mid-batch (issue 25): SIGTERM, Celery's warm shutdown, finishes the
running chunks and gives the rest back at once, so a second worker completes the batch
with every call sent once; a worker killed outright (SIGKILL to its session) leaves its
chunks to kombu's visibility timeout (set short here through the example's
``CELERY_VISIBILITY_TIMEOUT``), after which they are run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

import deepseek_pool as dp
from deepseek_pool.batch.runner import run_lines
from deepseek_pool.testing import FakeDeepSeek

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
KEY = "sk-celery-test"

pytestmark = pytest.mark.timeout(90)


def parse(lines: List[str]) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in lines]


# -- the chunk runner (no Celery needed) ---------------------------------------------------------


def test_a_chunk_comes_back_one_line_per_input_line_in_order_and_never_raises() -> None:
    chunk = [
        json.dumps({"custom_id": "a", "messages": [{"role": "user", "content": "one"}]}),
        '"a bare prompt"',  # no custom_id: its line number in the whole input
        "",  # blank: skipped, as run_batch skips it
        "{not json",
        json.dumps({"custom_id": "b", "method": "POST", "url": "/chat/completions", "body": {"messages": "two"}}),
        json.dumps({"custom_id": "c", "messages": []}),  # not a request
        json.dumps({"custom_id": "d", "messages": "fails"}) + "\n",
    ]
    with FakeDeepSeek() as fake:
        fake.script("ok", "ok", "ok", "402")  # the fourth request sent is refused
        with dp.DeepSeekPool(dp.DeepSeekClient(KEY, base_url=fake.base_url, max_retries=0), max_workers=1) as pool:
            out = parse(run_lines(chunk, pool, first_line=41))
    assert [line["custom_id"] for line in out] == ["a", "42", "44", "b", "c", "d"]
    assert [line["response"]["status_code"] if line["response"] else None for line in out] == [
        200,
        200,
        None,
        200,
        None,
        402,
    ]
    assert out[2]["error"]["code"] == "JSONDecodeError" and "line 44" in out[2]["error"]["message"]
    assert out[4]["error"]["code"] == "ValueError"
    assert out[5]["error"]["code"] == "InsufficientBalanceError"
    assert all(line["id"].startswith("batch_req_") for line in out)


def test_a_chunk_whose_limiter_cannot_reach_redis_answers_every_line_with_the_error() -> None:
    pytest.importorskip("redis")
    limiter = dp.Limiter(max_in_flight=2, storage="redis://127.0.0.1:1/0", name="gone")  # nobody listens there
    with (
        FakeDeepSeek() as fake,
        dp.DeepSeekPool(dp.DeepSeekClient(KEY, base_url=fake.base_url), limiter=limiter) as pool,
    ):
        out = parse(run_lines(['"x"', '"y"'], pool))
        assert fake.stats.requests == 0
    assert [line["error"]["code"] for line in out] == ["StorageUnavailable", "StorageUnavailable"]
    limiter.close()


def test_chunks_count_lines_across_chunks(tmp_path: Path) -> None:
    celery_contrib = pytest.importorskip("deepseek_pool.contrib.celery", reason="celery is not installed")
    path = tmp_path / "in.jsonl"
    path.write_text("".join(f'"q{i}"\r\n' for i in range(7)), encoding="utf-8")
    assert list(celery_contrib.chunks(path, 3)) == [
        (1, ['"q0"', '"q1"', '"q2"']),
        (4, ['"q3"', '"q4"', '"q5"']),
        (7, ['"q6"']),
    ]
    with pytest.raises(ValueError, match="chunk_size"):
        list(celery_contrib.chunks(path, 0))


# -- a real worker -------------------------------------------------------------------------------


@pytest.fixture
def celery_binary() -> str:
    pytest.importorskip("celery", reason="celery is not installed (pip install 'deepseek-pool[celery]')")
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'deepseek-pool[redis]')")
    binary = shutil.which("celery")
    if binary is None:
        pytest.skip("the celery command is not on PATH")
    return binary


@pytest.fixture
def worker_env(redis_server: Any, redis_url: str) -> Iterator[Dict[str, str]]:
    import redis

    for db in (1, 2):
        client = redis.Redis.from_url(redis_server.url(db))
        client.flushdb()
        client.close()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(EXAMPLES), env.get("PYTHONPATH", "")])
    env.update(
        DEEPSEEK_API_KEY=KEY,
        CELERY_BROKER_URL=redis_server.url(1),
        CELERY_RESULT_BACKEND=redis_server.url(2),
        DEEPSEEK_LIMITER_STORAGE=redis_url,
        DEEPSEEK_LIMITER_NAME=f"celery-{uuid.uuid4().hex}",
    )
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env.pop(name, None)
    yield env


def start_worker(binary: str, env: Dict[str, str], log: Path, concurrency: int = 2) -> subprocess.Popen[bytes]:
    """``celery -A celery_app worker`` (prefork) in a session of its own, its output in ``log``."""
    with open(log, "ab") as log_file:
        return subprocess.Popen(
            [
                binary,
                "-A",
                "celery_app",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                str(concurrency),
                "--loglevel",
                "INFO",
                "--hostname",
                f"test-{uuid.uuid4().hex[:8]}@127.0.0.1",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=EXAMPLES,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[Any], *, group: bool = True) -> None:
    """Whatever happened: SIGTERM, then SIGKILL (to its whole session: prefork children too)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
    if group:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


def batch_input(tmp_path: Path, items: int) -> Path:
    source = tmp_path / "prompts.jsonl"
    source.write_text(
        "".join(json.dumps({"custom_id": f"item-{i}", "messages": f"q {i}"}) + "\n" for i in range(items))
    )
    return source


def fan_out(env: Dict[str, str], source: Path, output: Path, chunk_size: int) -> subprocess.Popen[str]:
    """The example's own client: sends every chunk, waits for all of them, writes the output."""
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / "celery_app.py"), str(source), str(output), str(chunk_size)],
        cwd=EXAMPLES,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def check_every_item_once(output: Path, items: int) -> None:
    out = parse(output.read_text(encoding="utf-8").splitlines())
    assert sorted(line["custom_id"] for line in out) == sorted(f"item-{i}" for i in range(items))
    assert all(line["error"] is None and line["response"]["status_code"] == 200 for line in out)


def test_a_worker_given_sigterm_mid_batch_finishes_its_chunks_and_the_next_worker_does_the_rest(
    celery_binary: str, worker_env: Dict[str, str], tmp_path: Path
) -> None:
    """Celery's warm shutdown: the running chunks finish (every call answered, none cut, none
    sent twice), the chunks taken but not started go back to the queue at once, and each
    process closes its pool; a new worker answers the rest. Nothing lost, nothing doubled."""
    items, chunk_size = 60, 5
    source, output, log = batch_input(tmp_path, items), tmp_path / "results.jsonl", tmp_path / "worker.log"
    with FakeDeepSeek(latency=0.3) as fake:
        env = dict(worker_env, DEEPSEEK_BASE_URL=fake.base_url, DEEPSEEK_THREADS="4")
        first = start_worker(celery_binary, env, log)
        client = fan_out(env, source, output, chunk_size)
        second = None
        try:
            wait_for(lambda: fake.stats.requests >= 12 and fake.stats.in_flight > 0, 30, "the batch did not start")
            first.send_signal(signal.SIGTERM)  # warm shutdown, mid-batch, calls in flight
            assert first.wait(timeout=20) == 0
            stopped_at = fake.stats.requests
            assert fake.stats.in_flight == 0  # every call it had sent was answered before it exited
            assert stopped_at % chunk_size == 0 and stopped_at < items  # whole chunks only, and not all
            assert fake.stats.by_status == {200: stopped_at}
            second = start_worker(celery_binary, env, log)
            stdout, _ = client.communicate(timeout=40)
            assert client.returncode == 0, stdout + log.read_text(errors="replace")
        finally:
            stop(client, group=False)
            stop(first)
            if second is not None:
                stop(second)
        check_every_item_once(output, items)
        assert fake.stats.requests == items  # no chunk was run twice
    text = log.read_text(errors="replace")
    assert "Warm shutdown" in text
    assert text.count("closed the DeepSeek pool of worker process") >= 2  # the first worker's two processes


def test_chunks_of_a_killed_worker_come_back_after_the_visibility_timeout(
    celery_binary: str, worker_env: Dict[str, str], tmp_path: Path
) -> None:
    """A worker whose main process dies (SIGKILL to its whole session) never gives its taken
    chunks back: they wait in Redis for kombu's visibility_timeout, then go to a live
    worker. Every line still comes back exactly once; the killed chunks' calls are sent again."""
    items, chunk_size, visibility = 40, 5, 3
    source, output, log = batch_input(tmp_path, items), tmp_path / "results.jsonl", tmp_path / "worker.log"
    with FakeDeepSeek(latency=0.3) as fake:
        env = dict(
            worker_env,
            DEEPSEEK_BASE_URL=fake.base_url,
            DEEPSEEK_THREADS="4",
            CELERY_VISIBILITY_TIMEOUT=str(visibility),
        )
        first = start_worker(celery_binary, env, log)
        client = fan_out(env, source, output, chunk_size)
        second = None
        try:
            wait_for(lambda: fake.stats.requests >= 7 and fake.stats.in_flight > 0, 30, "the batch did not start")
            os.killpg(first.pid, signal.SIGKILL)  # the machine is gone: no warm shutdown, no ack
            first.wait(timeout=10)
            killed = time.monotonic()
            second = start_worker(celery_binary, env, log)
            stdout, _ = client.communicate(timeout=40)
            took = time.monotonic() - killed
            assert client.returncode == 0, stdout + log.read_text(errors="replace")
        finally:
            stop(client, group=False)
            stop(first)
            if second is not None:
                stop(second)
        check_every_item_once(output, items)
        assert fake.stats.requests > items  # the chunks cut short were run again
        assert took >= visibility  # and waited for the visibility timeout first


def test_a_celery_fan_out_answers_every_line_once_under_one_shared_cap(
    celery_binary: str, worker_env: Dict[str, str], tmp_path: Path
) -> None:
    cap = 4
    items = 48
    source = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"custom_id": f"item-{i}", "messages": f"question {i}"}) for i in range(items)]
    lines.insert(10, "{broken")  # a bad line comes back as an error line, once, like any other
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "results.jsonl"
    log = tmp_path / "worker.log"
    with FakeDeepSeek(latency=0.1, max_concurrency=cap) as fake:
        env = dict(worker_env, DEEPSEEK_BASE_URL=fake.base_url, DEEPSEEK_MAX_IN_FLIGHT=str(cap), DEEPSEEK_THREADS="8")
        with open(log, "wb") as log_file:
            worker = subprocess.Popen(
                [
                    celery_binary,
                    "-A",
                    "celery_app",
                    "worker",
                    "--pool",
                    "prefork",
                    "--concurrency",
                    "2",
                    "--loglevel",
                    "INFO",
                    "--hostname",
                    f"test-{uuid.uuid4().hex[:8]}@127.0.0.1",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                cwd=EXAMPLES,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            # The example's own fan-out: chunks of 7 over the two worker processes.
            client = subprocess.run(
                [sys.executable, str(EXAMPLES / "celery_app.py"), str(source), str(output), "7"],
                cwd=EXAMPLES,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert client.returncode == 0, client.stderr + log.read_text(errors="replace")
            assert f"{items + 1} result lines" in client.stdout
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)  # warm shutdown: worker_process_shutdown runs
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)
        out = parse(output.read_text(encoding="utf-8").splitlines())
        ids = [line["custom_id"] for line in out]
        assert sorted(ids) == sorted([f"item-{i}" for i in range(items)] + ["11"])  # every line exactly once
        ok = [line for line in out if line["error"] is None]
        assert len(ok) == items and all(line["response"]["status_code"] == 200 for line in ok)
        assert fake.stats.peak_concurrency <= cap  # two processes x 8 threads, one shared cap of 4
        assert fake.stats.peak_concurrency >= cap - 1  # and the cap is used
        assert fake.stats.by_status.get(429, 0) == 0
        assert fake.stats.requests == items
    text = log.read_text(errors="replace")
    assert text.count("built the DeepSeek pool of worker process") == 2  # once in each process, after it started
    assert text.count("closed the DeepSeek pool of worker process") == 2  # and closed at its shutdown
