"""Every example in examples/ runs, offline, through its framework's own test client or server.

The examples start their own FakeDeepSeek when ``DEEPSEEK_API_KEY`` is unset (conftest
clears it), so these tests drive them exactly as a user's first run would; module
constants such as ``OFFLINE_LATENCY`` are patched to keep the tests short.
"""

from __future__ import annotations

import asyncio
import atexit
import csv
import importlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: The fake's latency where a test measures concurrency: long enough to tell one latency from several.
LATENCY = 0.2


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Import an example module by name (examples/ is not a package)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module


def parse_sse(text: str) -> List[Tuple[str, Any]]:
    """(event, decoded data) pairs of a server-sent event stream whose data is JSON."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def idea_prompts(topic: str, n: int) -> List[str]:
    return [f"Give idea {i + 1} of {n} for a blog post about {topic}, in one sentence." for i in range(n)]


def check_fan_out(payload: Dict[str, Any], topic: str, n: int) -> None:
    """Each answer is the one for its own prompt, in order."""
    prompts = idea_prompts(topic, n)
    assert payload["ok"] == n
    assert [a["prompt"] for a in payload["answers"]] == prompts
    assert [a["answer"] for a in payload["answers"]] == [FakeDeepSeek.answer_for(p) for p in prompts]


def check_relayed_stream(events: List[Tuple[str, Any]], prompt: str) -> None:
    """Reasoning pieces first, then content pieces, then done; nothing lost or reordered."""
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done"
    assert kinds.index("content") > kinds.index("reasoning")
    assert "reasoning" not in kinds[kinds.index("content") :]
    assert len(kinds) > 10  # relayed piece by piece, not as one block
    assert "".join(d for k, d in events if k == "reasoning") == FakeDeepSeek.reasoning_for(prompt)
    assert "".join(d for k, d in events if k == "content") == FakeDeepSeek.answer_for(prompt)


# -- Flask ----------------------------------------------------------------------------------


@pytest.fixture
def flask_app(examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    pytest.importorskip("flask")
    module = examples("flask_app")
    monkeypatch.setattr(module, "OFFLINE_LATENCY", LATENCY)
    monkeypatch.setattr(module, "OFFLINE_CHUNK_DELAY", 0.0)
    registered: List[Callable[[], None]] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    app = module.create_app()
    backend = app.extensions["deepseek"]
    assert registered == [backend.close]  # the pool is closed at interpreter exit
    try:
        yield app
    finally:
        backend.close()


def test_flask_view_fans_out_through_one_process_wide_pool(flask_app: Any) -> None:
    backend = flask_app.extensions["deepseek"]
    fake = backend.fake
    client = flask_app.test_client()
    started = time.monotonic()
    response = client.get("/ideas?topic=tea&n=8")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    check_fan_out(response.get_json(), "tea", 8)
    assert fake.stats.peak_concurrency == 8  # all eight calls were in flight together
    assert elapsed < 3 * LATENCY  # one latency or so, where one by one would take eight
    assert all(r.body["thinking"] == {"type": "disabled"} and r.body["max_tokens"] == 200 for r in fake.received)
    # A second request goes through the same pool and connections: nothing is rebuilt.
    assert client.get("/ideas?topic=rain&n=3").status_code == 200
    assert flask_app.extensions["deepseek"] is backend and backend.pool.stats.submitted == 11
    assert fake.stats.connections_opened <= 8
    assert client.get("/ideas?n=0").status_code == 400
    assert client.get(f"/ideas?n={flask_app.view_functions['ideas'].__globals__['MAX_FAN_OUT'] + 1}").status_code == 400


def test_flask_fan_out_keeps_each_failure_in_its_slot(flask_app: Any) -> None:
    backend = flask_app.extensions["deepseek"]
    backend.fake.script("402")  # insufficient balance: never retried
    payload = flask_app.test_client().get("/ideas?n=3").get_json()
    assert payload["ok"] == 2
    errors = [a["error"] for a in payload["answers"] if "error" in a]
    assert len(errors) == 1 and errors[0].startswith("InsufficientBalanceError: 402")


def test_flask_fan_out_answers_in_time_even_when_calls_are_slow(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("flask")
    module = examples("flask_app")
    monkeypatch.setattr(module, "OFFLINE_LATENCY", 0.3)
    monkeypatch.setattr(module, "VIEW_TIMEOUT", 0.05)
    monkeypatch.setattr(atexit, "register", lambda f: f)
    app = module.create_app()
    try:
        started = time.monotonic()
        payload = app.test_client().get("/ideas?n=2").get_json()
        assert time.monotonic() - started < 0.25
        assert [a["error"] for a in payload["answers"]] == ["timed out", "timed out"]
    finally:
        app.extensions["deepseek"].close()


def test_flask_stream_relays_reasoning_then_answer_as_server_sent_events(flask_app: Any) -> None:
    prompt = "Why is the sky blue?"
    response = flask_app.test_client().get("/stream", query_string={"prompt": prompt})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    check_relayed_stream(parse_sse(response.get_data(as_text=True)), prompt)


def test_flask_stream_errors_before_and_during_the_stream(flask_app: Any) -> None:
    fake = flask_app.extensions["deepseek"].fake
    client = flask_app.test_client()
    fake.script("402")
    response = client.get("/stream?prompt=hi")
    assert response.status_code == 502 and "InsufficientBalanceError" in response.get_json()["error"]
    fake.script("cut:5")  # the connection drops after five events
    events = parse_sse(client.get("/stream?prompt=hi").get_data(as_text=True))
    assert events[-1][0] == "error" and "APIConnectionError" in events[-1][1]
    assert len(events) == 5


# -- Django ---------------------------------------------------------------------------------


def test_django_pool_built_at_ready_serves_views_and_closes_at_exit(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("django")
    import django
    from django.apps import apps
    from django.test import Client

    views = examples("django_views")
    monkeypatch.setattr(views, "OFFLINE_LATENCY", LATENCY)
    monkeypatch.setattr(views, "OFFLINE_CHUNK_DELAY", 0.0)
    registered: List[Callable[[], None]] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "django_settings")
    django.setup()  # runs DeepSeekConfig.ready() once, as at a server's start
    backend = apps.get_app_config("django_views").backend
    assert registered == [backend.close]
    try:
        pool = backend.pool
        assert isinstance(pool, dp.DeepSeekPool) and pool.max_workers == 32  # settings.DEEPSEEK_MAX_WORKERS
        client = Client(SERVER_NAME="localhost")
        started = time.monotonic()
        response = client.get("/ideas", {"topic": "tea", "n": 6})
        assert response.status_code == 200
        assert time.monotonic() - started < 3 * LATENCY
        check_fan_out(response.json(), "tea", 6)
        assert backend.fake.stats.peak_concurrency == 6

        response = client.get("/stream", {"prompt": "Hello Django"})
        assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
        body = b"".join(response.streaming_content).decode()
        response.close()
        check_relayed_stream(parse_sse(body), "Hello Django")
        assert client.get("/ideas", {"n": "many"}).status_code == 400
        assert apps.get_app_config("django_views").backend.pool is pool  # one pool for the process
    finally:
        registered[0]()  # what atexit does at shutdown
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit("after shutdown")


# -- FastAPI --------------------------------------------------------------------------------


def test_fastapi_health_answers_while_50_calls_are_in_flight_and_50_finish_in_one_latency(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    import uvicorn

    latency = 0.6
    module = examples("fastapi_bridge")
    monkeypatch.setattr(module, "OFFLINE_LATENCY", latency)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(module.app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="uvicorn-test")
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        fake = module.app.state.deepseek.fake

        async def scenario() -> Tuple[float, float, List[Any], Dict[str, Any], int]:
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, trust_env=False) as http:
                started = time.monotonic()
                calls = [asyncio.ensure_future(http.get("/ask", params={"prompt": f"q{i}"})) for i in range(50)]
                while fake.stats.in_flight < 50:  # every call is now waiting at DeepSeek
                    assert time.monotonic() - started < 5, f"only {fake.stats.in_flight} calls in flight"
                    await asyncio.sleep(0.01)
                before = time.monotonic()
                health = await http.get("/health")
                health_time = time.monotonic() - before
                still_in_flight = fake.stats.in_flight
                answers = await asyncio.wait_for(asyncio.gather(*calls), 10)
                return time.monotonic() - started, health_time, answers, health.json(), still_in_flight

        elapsed, health_time, answers, health, still_in_flight = asyncio.run(scenario())
        # The loop was free: /health answered at once while all 50 calls were still at DeepSeek.
        assert health == {"status": "ok", "in_flight": 50}
        assert still_in_flight == 50 and health_time < latency / 4
        # 50 requests took about one latency (one by one they would take 50 * 0.6 = 30 s).
        assert [a.json()["answer"] for a in answers] == [FakeDeepSeek.answer_for(f"q{i}") for i in range(50)]
        assert fake.stats.peak_concurrency == 50
        assert elapsed < 2 * latency
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()
    assert not thread.is_alive()
    assert module.app.state.deepseek.fake.stats.in_flight == 0


def test_fastapi_fan_out_stream_and_errors(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    module = examples("fastapi_bridge")
    monkeypatch.setattr(module, "OFFLINE_LATENCY", 0.0)
    monkeypatch.setattr(module, "OFFLINE_CHUNK_DELAY", 0.0)
    with TestClient(module.app) as client:  # runs the lifespan: pool built, then closed
        backend = module.app.state.deepseek
        response = client.get("/ideas", params={"topic": "tea", "n": 4})
        assert response.status_code == 200
        check_fan_out(response.json(), "tea", 4)
        response = client.get("/stream", params={"prompt": "Stream me"})
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        check_relayed_stream(parse_sse(response.text), "Stream me")
        backend.fake.script("402")
        response = client.get("/ask", params={"prompt": "hi"})
        assert response.status_code == 502 and response.json()["error"].startswith("InsufficientBalanceError")
        backend.fake.script("402")
        assert client.get("/stream", params={"prompt": "hi"}).status_code == 502
        assert client.get("/ideas", params={"n": 0}).status_code == 422
    with pytest.raises(RuntimeError, match="closed"):
        backend.pool.submit("after shutdown")


# -- the servers, started as a user would ---------------------------------------------------


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def example_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEK_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def test_server_examples_run_as_scripts_answer_and_stop_on_ctrl_c() -> None:
    """``python examples/X.py`` serves on loopback, answers, and exits cleanly on Ctrl-C."""
    pytest.importorskip("flask")
    pytest.importorskip("django")
    pytest.importorskip("uvicorn")
    servers = {}
    for name in ("flask_app", "fastapi_bridge", "django_views"):
        port = free_port()
        args = [sys.executable, str(EXAMPLES / f"{name}.py")]
        if name == "django_views":
            args += ["runserver", "--noreload", f"127.0.0.1:{port}"]
        process = subprocess.Popen(
            args, env=example_env(PORT=str(port)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        servers[name] = (process, port)
    try:
        for name, (process, port) in servers.items():
            deadline = time.monotonic() + 20
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ideas?n=2", timeout=5) as response:
                        check_fan_out(json.load(response), "tea", 2)
                        break
                except OSError:
                    assert process.poll() is None, f"{name} exited: {process.communicate()[0]}"
                    assert time.monotonic() < deadline, f"{name} did not answer"
                    time.sleep(0.05)
        for process, _ in servers.values():
            process.send_signal(signal.SIGINT)
        for name, (process, _) in servers.items():
            output = process.communicate(timeout=15)[0]
            assert process.returncode == 0, f"{name} exited with {process.returncode}:\n{output}"
            assert "Traceback" not in output, output
    finally:
        for process, _ in servers.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


# -- batch script ---------------------------------------------------------------------------


def test_batch_script_answers_every_row_once_and_resumes_after_a_crash(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = examples("batch_script")
    monkeypatch.setattr(module, "OFFLINE_LATENCY", 0.0)
    source = tmp_path / "prompts.csv"
    prompts = {f"row-{i}": f"What is {i} + {i}?" for i in range(40)}
    with open(source, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "prompt"])
        writer.writerows(prompts.items())
    output = tmp_path / "out.jsonl"
    out = io.StringIO()
    assert module.main([str(source), "-o", str(output), "--workers", "8"], out=out) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in records) == sorted(prompts)
    assert all(r["ok"] and r["answer"] == FakeDeepSeek.answer_for(prompts[r["custom_id"]]) for r in records)
    assert "40 answered, 0 failed" in out.getvalue()

    # A crash: only the first 15 lines were written, the 16th half-way. A rerun sends the rest.
    lines = output.read_text().splitlines(keepends=True)
    output.write_text("".join(lines[:15]) + lines[15][:20])
    out = io.StringIO()
    assert module.main([str(source), "-o", str(output)], out=out) == 0
    assert "25 answered, 0 failed, 15 already done" in out.getvalue()
    records = [json.loads(line) for line in output.read_text().splitlines()]  # the cut line is gone
    assert sorted(r["custom_id"] for r in records) == sorted(prompts)  # every row answered exactly once
    assert all(r["ok"] and r["answer"] == FakeDeepSeek.answer_for(prompts[r["custom_id"]]) for r in records)


def test_batch_script_reads_jsonl_shapes_and_keeps_errors_as_lines(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = examples("batch_script")
    monkeypatch.setattr(module, "OFFLINE_LATENCY", 0.0)
    source = tmp_path / "prompts.jsonl"
    lines = [
        json.dumps("a bare string"),
        json.dumps({"prompt": "a prompt", "custom_id": "p"}),
        json.dumps({"messages": [{"role": "user", "content": "messages"}], "max_tokens": 50}),
        json.dumps(
            {
                "custom_id": "b",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": "a batch line"}]},
            }
        ),
        json.dumps({"custom_id": "bad", "messages": []}),  # rejected: an error line, the rest still run
        "{not json",
    ]
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.jsonl"
    assert module.main([str(source), "-o", str(output)], out=io.StringIO()) == 1  # one item failed
    records = {r["custom_id"]: r for r in map(json.loads, output.read_text().splitlines())}
    assert set(records) == {"1", "p", "3", "b", "bad"}
    assert records["1"]["answer"] == FakeDeepSeek.answer_for("a bare string")
    assert records["b"]["answer"] == FakeDeepSeek.answer_for("a batch line")
    assert not records["bad"]["ok"] and "ValueError" in records["bad"]["error"]


def test_batch_script_runs_as_a_script_offline(tmp_path: Path) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(12)))
    output = tmp_path / "results.jsonl"
    process = subprocess.run(
        [sys.executable, str(EXAMPLES / "batch_script.py"), str(source), "-o", str(output), "--workers", "12"],
        env=example_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 0, process.stderr
    assert "FakeDeepSeek" in process.stdout and "12 answered, 0 failed" in process.stdout
    answers = {r["custom_id"]: r["answer"] for r in map(json.loads, output.read_text().splitlines())}
    assert answers == {str(i + 1): FakeDeepSeek.answer_for(f"question {i}") for i in range(12)}


# -- streaming to a terminal ----------------------------------------------------------------


class Terminal(io.StringIO):
    """Records each write; claims to be a terminal so colours are used."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def isatty(self) -> bool:
        return self.tty


def test_streaming_terminal_shows_reasoning_dimmed_then_the_answer(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = examples("streaming_terminal")
    monkeypatch.setattr(module, "OFFLINE_LATENCY", 0.0)
    monkeypatch.setattr(module, "OFFLINE_CHUNK_DELAY", 0.0)
    prompt = "Why is the sky blue?"
    terminal = Terminal(tty=True)
    assert module.main([prompt], out=terminal) == 0
    text = terminal.getvalue()
    thinking, answer = text.index("--- thinking ---"), text.index("--- answer ---")
    assert thinking < answer
    reasoning = text[thinking:answer]
    assert module.DIM in reasoning and module.DIM not in text[answer:]
    shown = reasoning.replace(module.DIM, "").replace(module.RESET, "")
    assert shown.strip().endswith(FakeDeepSeek.reasoning_for(prompt))
    assert FakeDeepSeek.answer_for(prompt) in text[answer:]
    assert "tokens in" in text and "reasoning)" in text  # the usage of the final chunk
    assert terminal.writes > 20  # written piece by piece as the stream arrives

    plain = Terminal(tty=False)
    assert module.main(["--no-thinking", "Say hi"], out=plain) == 0
    assert "--- thinking ---" not in plain.getvalue() and "\033[" not in plain.getvalue()
    assert FakeDeepSeek.answer_for("Say hi") in plain.getvalue()


def test_streaming_terminal_reports_a_broken_stream(
    examples: Callable[[str], ModuleType], fake_deepseek: FakeDeepSeek
) -> None:
    module = examples("streaming_terminal")
    fake_deepseek.script("cut:4")
    client = dp.DeepSeekClient("sk-test", base_url=fake_deepseek.base_url, max_retries=0)
    with client, pytest.raises(dp.APIConnectionError):
        module.stream_answer(client, "hi", thinking=True, out=Terminal(tty=False))


# -- worker processes -----------------------------------------------------------------------


def test_worker_processes_each_build_their_own_pool_and_fan_out(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = examples("worker_processes")
    monkeypatch.setattr(module, "OFFLINE_LATENCY", 0.05)
    assert module._pool is None  # importing the module builds nothing
    out = io.StringIO()
    budget = tmp_path / "budget.db"
    assert module.main(out=out, storage=f"sqlite:///{budget}") == 0
    shared = dp.Limiter(storage=f"sqlite:///{budget}", name="deepseek-account")
    stats = shared.stats
    shared.close()
    assert stats.started == len(module.sample_documents()) * 5  # every call went through the one budget
    assert stats.in_flight == 0
    lines = [line for line in out.getvalue().splitlines() if line.startswith("Report")]
    assert len(lines) == len(module.sample_documents())
    pids = {line.split("(process ")[1].split(")")[0] for line in lines}
    assert len(pids) == module.PROCESSES and str(os.getpid()) not in pids
    document = module.sample_documents()[0]
    summaries = [FakeDeepSeek.answer_for(f"Summarize in one sentence: {s}") for s in document["sections"]]
    combined = FakeDeepSeek.answer_for("Combine into one paragraph:\n" + "\n".join(summaries))
    assert lines[0].endswith(combined)
