"""Relays stop paying when the listener leaves (issue 25): deepseek_pool.contrib.relay and the web examples.

The servers are real and listen on 127.0.0.1: uvicorn for FastAPI, Werkzeug's threaded
server (Flask's own) for Flask, gunicorn for Django. Clients are raw sockets that send a
request, read a little and hang up. DeepSeek is a FakeDeepSeek whose answers start with
seconds of keep-alive lines (its ``trickle`` fault, as DeepSeek sends while it queues or
thinks): it notices a closed connection at its next line, so ``stats.in_flight`` falling to
0 long before the answer was due shows that the relay closed the upstream connection, and
``stats.requests`` staying put shows that nothing was sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

import deepseek_pool as dp
from deepseek_pool.contrib.relay import (
    KEEPALIVE_COMMENT,
    PEER_POLL,
    ClientDisconnected,
    arelay_sse,
    await_call,
    client_socket,
    open_stream,
    peer_gone,
    relay_sse,
)
from deepseek_pool.testing import FakeDeepSeek

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
KEY = "sk-relay-test"
#: Seconds of keep-alive lines before each answer: the thinking phase.
SILENCE = 4.0
TRICKLE_INTERVAL = 0.05
#: The relays' keep-alive interval in these tests.
KEEPALIVE = 0.2
#: A client hangs up this long after sending its request.
HANG_UP_AFTER = 0.5
#: Within this long of the hang-up, the fake must have seen every upstream connection closed.
CLOSED_WITHIN = 1.5

pytestmark = pytest.mark.timeout(60)


def thinking_fake(**options: Any) -> FakeDeepSeek:
    """Every answer starts with SILENCE seconds of keep-alive lines, then comes quickly."""
    lines = int(SILENCE / TRICKLE_INTERVAL)
    return FakeDeepSeek(
        faults={f"trickle:{lines}": 1.0}, trickle_interval=TRICKLE_INTERVAL, stream_chunk_delay=0.005, **options
    )


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - started


def fake_env(monkeypatch: pytest.MonkeyPatch, fake: FakeDeepSeek) -> None:
    """The examples use the real-API branch, pointed at the fake."""
    monkeypatch.setenv("DEEPSEEK_API_KEY", KEY)
    monkeypatch.setenv("DEEPSEEK_BASE_URL", fake.base_url)


def hang_up_clients(port: int, path: str, count: int, read_for: float = HANG_UP_AFTER) -> List[bytes]:
    """``count`` raw HTTP clients: each sends GET ``path``, reads for ``read_for`` s, and closes."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
        sockets.append(sock)
    received = [b""] * count
    end = time.monotonic() + read_for
    for sock in sockets:
        sock.setblocking(False)
    while time.monotonic() < end:
        for i, sock in enumerate(sockets):
            with contextlib.suppress(BlockingIOError):
                received[i] += sock.recv(65536)
        time.sleep(0.01)
    for sock in sockets:
        sock.close()
    return received


# -- the relay itself ---------------------------------------------------------------------------


def test_relay_sends_keepalive_comments_while_the_upstream_is_silent_then_every_token() -> None:
    with thinking_fake() as fake, dp.DeepSeekClient(KEY, base_url=fake.base_url) as client:
        stream = client.chat_stream("Why?", thinking=True)
        started = time.monotonic()
        texts = list(relay_sse(stream, keepalive=KEEPALIVE))
        took = time.monotonic() - started
    silent = [t for t in texts if t == KEEPALIVE_COMMENT]
    assert took >= SILENCE
    assert len(silent) >= SILENCE / KEEPALIVE * 0.6  # one per interval of the silence (load may stretch some)
    first_event = next(i for i, t in enumerate(texts) if t != KEEPALIVE_COMMENT)
    assert all(t == KEEPALIVE_COMMENT for t in texts[:first_event])  # the silence came first
    body = "".join(texts)
    assert body.endswith('event: done\ndata: ""\n\n')
    assert "event: reasoning" in body and "event: content" in body


def test_closing_a_relay_mid_silence_closes_the_upstream_connection_at_once() -> None:
    with thinking_fake() as fake, dp.DeepSeekClient(KEY, base_url=fake.base_url) as client:
        relay = relay_sse(client.chat_stream("Why?"), keepalive=KEEPALIVE)
        assert next(relay) == KEEPALIVE_COMMENT
        assert fake.stats.in_flight == 1
        relay.close()
        wait_until(lambda: fake.stats.in_flight == 0, CLOSED_WITHIN, "the fake still serves the stream")
        time.sleep(0.3)
        assert fake.stats.requests == 1  # and nothing was sent again


def test_closing_a_relay_never_iterated_closes_its_stream() -> None:
    with thinking_fake() as fake, dp.DeepSeekClient(KEY, base_url=fake.base_url) as client:
        relay = relay_sse(client.chat_stream("Why?"), keepalive=KEEPALIVE)
        relay.close()  # a client that left before the first byte: the server closes the body unread
        wait_until(lambda: fake.stats.in_flight == 0, CLOSED_WITHIN, "the fake still serves the stream")


def test_a_stream_that_breaks_midway_ends_with_an_error_event() -> None:
    with FakeDeepSeek() as fake, dp.DeepSeekClient(KEY, base_url=fake.base_url) as client:
        fake.script("cut:5")
        texts = list(relay_sse(client.chat_stream("hi"), keepalive=KEEPALIVE))
    assert texts[-1].startswith("event: error\n") and "APIConnectionError" in texts[-1]


def test_async_relay_cancelled_aborts_and_keeps_alive_meanwhile() -> None:
    with thinking_fake() as fake, dp.DeepSeekClient(KEY, base_url=fake.base_url) as client:

        async def scenario() -> List[str]:
            stream = await open_stream(client, "Why?")
            got: List[str] = []

            async def consume() -> None:
                async for text in arelay_sse(stream, keepalive=KEEPALIVE):
                    got.append(text)

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(1.0)
            task.cancel()  # what Starlette does when the client disconnects
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return got

        got = asyncio.run(scenario())
        assert got and all(text == KEEPALIVE_COMMENT for text in got) and len(got) >= 3
        wait_until(lambda: fake.stats.in_flight == 0, CLOSED_WITHIN, "the fake still serves the stream")
        assert fake.stats.requests == 1


def test_an_async_relay_dropped_unread_closes_its_stream() -> None:
    with thinking_fake() as fake, dp.DeepSeekClient(KEY, base_url=fake.base_url) as client:
        relay = arelay_sse(client.chat_stream("Why?"), keepalive=KEEPALIVE)
        del relay  # a response cancelled before its body began
        gc.collect()
        wait_until(lambda: fake.stats.in_flight == 0, CLOSED_WITHIN, "the fake still serves the stream")


def test_pool_abort_breaks_a_running_call_and_drops_a_queued_one() -> None:
    with (
        thinking_fake() as fake,
        dp.DeepSeekPool(dp.DeepSeekClient(KEY, base_url=fake.base_url), max_workers=1) as pool,
    ):
        running = pool.submit("first")
        queued = pool.submit("second")
        wait_until(lambda: fake.stats.in_flight == 1, 5, "the first call did not start")
        assert pool.abort(queued) and queued.cancelled()
        assert pool.abort(running)
        with pytest.raises(dp.APIConnectionError):
            running.result(timeout=CLOSED_WITHIN)
        wait_until(lambda: fake.stats.in_flight == 0, CLOSED_WITHIN, "the fake still serves the call")
        assert fake.stats.requests == 1  # the queued call was never sent, the running one not again
        done = pool.submit("third")
        assert done.result(timeout=SILENCE + 5).content == FakeDeepSeek.answer_for("third")
        assert not pool.abort(done)  # already finished


def test_pool_abort_ends_a_call_waiting_for_the_limiter_at_once_unsent() -> None:
    with (
        thinking_fake() as fake,
        dp.DeepSeekPool(dp.DeepSeekClient(KEY, base_url=fake.base_url), max_workers=2, max_in_flight=1) as pool,
    ):
        running = pool.submit("first")
        waiting = pool.submit("second")
        wait_until(lambda: fake.stats.in_flight == 1, 5, "the first call did not start")
        wait_until(lambda: pool.limiter.stats.waiting == 1, 5, "the second call is not at the limiter")
        assert pool.abort(waiting)
        with pytest.raises(dp.APIConnectionError, match="aborted"):
            waiting.result(timeout=CLOSED_WITHIN)  # before: refused only when the first ended (SILENCE s)
        assert pool.abort(running)
        with pytest.raises(dp.APIConnectionError):
            running.result(timeout=CLOSED_WITHIN)
        assert fake.stats.requests == 1


def test_await_call_aborts_when_the_awaiting_task_is_cancelled() -> None:
    with (
        thinking_fake() as fake,
        dp.DeepSeekPool(dp.DeepSeekClient(KEY, base_url=fake.base_url), max_workers=2) as pool,
    ):

        async def scenario() -> None:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(await_call(pool, pool.submit("slow")), 0.5)

        asyncio.run(scenario())
        wait_until(lambda: fake.stats.in_flight == 0, CLOSED_WITHIN, "the fake still serves the call")
        assert fake.stats.requests == 1


def test_await_call_aborts_when_receive_reports_a_disconnect() -> None:
    with (
        thinking_fake() as fake,
        dp.DeepSeekPool(dp.DeepSeekClient(KEY, base_url=fake.base_url), max_workers=2) as pool,
    ):

        async def scenario() -> None:
            messages = [{"type": "http.request", "body": b"", "more_body": False}]

            async def receive() -> Dict[str, Any]:
                if messages:
                    return messages.pop()
                await asyncio.sleep(0.5)
                return {"type": "http.disconnect"}

            with pytest.raises(ClientDisconnected):
                await await_call(pool, pool.submit("slow"), receive)

        asyncio.run(scenario())
        wait_until(lambda: fake.stats.in_flight == 0, CLOSED_WITHIN, "the fake still serves the call")
        assert fake.stats.requests == 1


# -- FastAPI under uvicorn ------------------------------------------------------------------------


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module


@contextlib.contextmanager
def uvicorn_serving(app: Any) -> Iterator[int]:
    uvicorn = pytest.importorskip("uvicorn")
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="uvicorn-test")
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 10, "uvicorn did not start")
        assert server.started
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(15)
        listener.close()
    assert not thread.is_alive()


def test_fastapi_under_uvicorn_40_clients_that_hang_up_stop_their_40_calls(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fastapi")
    module = examples("fastapi_bridge")
    with thinking_fake() as fake:
        fake_env(monkeypatch, fake)
        with uvicorn_serving(module.app) as port:
            hang_up_clients(port, "/ask?prompt=think", 40)
            assert fake.stats.requests == 40
            took = wait_until(lambda: fake.stats.in_flight == 0, CLOSED_WITHIN, "calls still at DeepSeek")
            time.sleep(0.5)
            assert fake.stats.requests == 40  # none sent again
            assert module.app.state.deepseek.pool.stats.in_flight == 0
            assert took < SILENCE - HANG_UP_AFTER - 1  # long before the answers were due


def test_fastapi_under_uvicorn_a_fan_out_whose_client_hangs_up_stops_every_call(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fastapi")
    module = examples("fastapi_bridge")
    with thinking_fake() as fake:
        fake_env(monkeypatch, fake)
        with uvicorn_serving(module.app) as port:
            hang_up_clients(port, "/ideas?topic=tea&n=10", 2)
            assert fake.stats.requests == 20
            wait_until(lambda: fake.stats.in_flight == 0, CLOSED_WITHIN, "calls still at DeepSeek")
            time.sleep(0.5)
            assert fake.stats.requests == 20


def test_fastapi_under_uvicorn_stream_keeps_alive_and_a_hang_up_aborts_it(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fastapi")
    module = examples("fastapi_bridge")
    monkeypatch.setattr(module, "KEEPALIVE", KEEPALIVE)
    with thinking_fake() as fake:
        fake_env(monkeypatch, fake)
        with uvicorn_serving(module.app) as port:
            received = hang_up_clients(port, "/stream?prompt=think", 5, read_for=1.5)
            for body in received:
                assert body.startswith(b"HTTP/1.1 200") and b"text/event-stream" in body
                assert body.count(KEEPALIVE_COMMENT.encode()) >= 2  # the silence was kept alive
                assert b"event: content" not in body
            wait_until(lambda: fake.stats.in_flight == 0, CLOSED_WITHIN, "streams still at DeepSeek")
            time.sleep(0.3)
            assert fake.stats.requests == 5


# -- Flask under Werkzeug's threaded server ---------------------------------------------------------


@contextlib.contextmanager
def werkzeug_serving(app: Any) -> Iterator[int]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="werkzeug-test", daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def test_flask_under_werkzeug_stream_keeps_alive_and_a_hang_up_aborts_it(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("flask")
    module = examples("flask_app")
    monkeypatch.setattr(module, "KEEPALIVE", KEEPALIVE)
    import atexit

    monkeypatch.setattr(atexit, "register", lambda *_: None)
    with thinking_fake() as fake:
        fake_env(monkeypatch, fake)
        app = module.create_app()
        try:
            with werkzeug_serving(app) as port:
                received = hang_up_clients(port, "/stream?prompt=think", 5, read_for=1.0)
                for body in received:
                    assert b" 200 " in body.split(b"\r\n", 1)[0]
                    assert body.count(KEEPALIVE_COMMENT.encode()) >= 1
                # Werkzeug learns of the hang-up at its next write (a keep-alive comment).
                wait_until(lambda: fake.stats.in_flight == 0, CLOSED_WITHIN, "streams still at DeepSeek")
                time.sleep(0.3)
                assert fake.stats.requests == 5
        finally:
            app.extensions["deepseek"].close()


def test_flask_under_werkzeug_notices_a_hang_up_in_a_silence_through_the_client_socket(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep-alive comments too rare to find it (30 s): the relay sees the closed socket itself."""
    pytest.importorskip("flask")
    module = examples("flask_app")
    monkeypatch.setattr(module, "KEEPALIVE", 30.0)
    import atexit

    monkeypatch.setattr(atexit, "register", lambda *_: None)
    with thinking_fake() as fake:
        fake_env(monkeypatch, fake)
        app = module.create_app()
        try:
            with werkzeug_serving(app) as port:
                received = hang_up_clients(port, "/stream?prompt=think", 3)
                assert all(KEEPALIVE_COMMENT.encode() not in body for body in received)  # nothing written yet
                wait_until(lambda: fake.stats.in_flight == 0, PEER_POLL + CLOSED_WITHIN, "streams still at DeepSeek")
                assert fake.stats.requests == 3
        finally:
            app.extensions["deepseek"].close()


def test_peer_gone_tells_a_closed_client_from_a_waiting_one() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        served, _ = listener.accept()
        served.settimeout(30)  # as some servers set: a look must still not wait
        with served:
            started = time.monotonic()
            assert not peer_gone(served)
            assert time.monotonic() - started < 0.5
            assert not peer_gone(served)  # connected, silent
            client.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request is not a hang-up
            time.sleep(0.05)
            assert not peer_gone(served)
            assert served.recv(100).startswith(b"GET")  # and its bytes were left for the server
            client.close()
            wait_until(lambda: peer_gone(served), 2, "the closed client was not noticed")
    assert client_socket({"werkzeug.socket": served}) is served
    assert client_socket({"wsgi.input": None}) is None


# -- Django under gunicorn --------------------------------------------------------------------------


def gunicorn_binary() -> str:
    pytest.importorskip("django")
    pytest.importorskip("gunicorn", reason="gunicorn is not installed (pip install gunicorn)")
    binary = shutil.which("gunicorn")
    if binary is None:
        pytest.skip("the gunicorn command is not on PATH")
    return binary


@contextlib.contextmanager
def gunicorn_django(fake: FakeDeepSeek, tmp_path: Path, *extra: str) -> Iterator[Tuple[int, subprocess.Popen]]:
    binary = gunicorn_binary()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEK_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(EXAMPLES), env.get("PYTHONPATH", "")]),
        DJANGO_SETTINGS_MODULE="django_settings",
        DEEPSEEK_API_KEY=KEY,
        DEEPSEEK_BASE_URL=fake.base_url,
        RELAY_KEEPALIVE=str(KEEPALIVE),
    )
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 -- closed below
    command = [binary, "--bind", f"127.0.0.1:{port}", "--workers", "1", "--worker-class", "gthread"]
    command += ["--threads", "8", *extra, "django.core.wsgi:get_wsgi_application()"]
    server = subprocess.Popen(command, cwd=EXAMPLES, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: server.poll() is not None or answers(port), 30, "gunicorn did not start")
        assert server.poll() is None, (tmp_path / "gunicorn.log").read_text(errors="replace")
        yield port, server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def answers(port: int) -> bool:
    """The worker serves (the arbiter's socket accepts before its worker has loaded the app):
    ``/ideas?n=0`` is refused with a 400 without any call to DeepSeek."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /ideas?n=0 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        return sock.recv(64).startswith(b"HTTP/1.0 400")
    return False


def test_django_under_gunicorn_stream_keeps_alive_and_a_hang_up_aborts_it(tmp_path: Path) -> None:
    with thinking_fake() as fake, gunicorn_django(fake, tmp_path) as (port, _):
        received = hang_up_clients(port, "/stream?prompt=think", 3, read_for=1.5)
        for body in received:
            assert body.startswith(b"HTTP/1.1 200") and body.count(KEEPALIVE_COMMENT.encode()) >= 1
        wait_until(lambda: fake.stats.in_flight == 0, CLOSED_WITHIN + 1, "streams still at DeepSeek")
        time.sleep(0.3)
        assert fake.stats.requests == 3


def test_gunicorn_worker_given_sigterm_mid_request_finishes_the_relayed_answer(tmp_path: Path) -> None:
    """Warm shutdown: gunicorn stops accepting, lets the request in flight finish (up to
    --graceful-timeout), then the worker exits, its pool closed at exit."""
    with (
        FakeDeepSeek(latency=1.0, stream_chunk_delay=0.01) as fake,
        gunicorn_django(fake, tmp_path, "--graceful-timeout", "20") as (port, server),
    ):
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        # HTTP/1.0: the body is not chunked, and ends when the connection does.
        sock.sendall(b"GET /stream?prompt=Hello HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        wait_until(lambda: fake.stats.in_flight == 1, 10, "the call did not reach DeepSeek")
        server.send_signal(signal.SIGTERM)  # the arbiter passes it on to its worker: a graceful stop
        body = b""
        with contextlib.closing(sock):
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                body += piece
        assert server.wait(timeout=20) == 0
    text = body.decode()
    assert text.startswith("HTTP/1.0 200") or text.startswith("HTTP/1.1 200")
    assert 'event: done\ndata: ""' in text
    content = "".join(
        line[len("data: ") :].strip('"')
        for block in text.split("\n\n")
        if block.startswith("event: content")
        for line in block.splitlines()
        if line.startswith("data: ")
    )
    assert content == FakeDeepSeek.answer_for("Hello").replace("\n", "\\n")
    assert fake.stats.requests == 1 and fake.stats.by_status == {200: 1}
