"""Context follows the call: each pool call runs in a copy of the ``contextvars`` context it was submitted from."""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

import deepseek_pool as dp
from deepseek_pool.pool.call import PoolCall
from deepseek_pool.testing import FakeDeepSeek
from deepseek_pool.wire.calls import CallControl

TENANT: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("tenant", default=None)
#: Set inside each call: the caller's context must never see it.
INSIDE: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("inside", default=None)
#: Bound on any one wait of these tests.
WAIT = 30
READER_THREAD = "deepseek-stream-reader"


def client_for(fake: FakeDeepSeek, retries: int = 0) -> dp.DeepSeekClient:
    retry = dp.DeepSeekRetry(retries, backoff_factor=0.005, backoff_jitter=0, max_retry_after=0.05)
    return dp.DeepSeekClient(api_key="sk-context", base_url=fake.base_url, max_retries=retry)


def seen_in_chat(client: dp.DeepSeekClient, monkeypatch: pytest.MonkeyPatch) -> List[Tuple[str, Optional[str]]]:
    """Make the client's chat note the tenant it sees, per prompt; a value it sets must not leak out."""
    seen: List[Tuple[str, Optional[str]]] = []
    chat = client.chat

    def recording_chat(messages: Any, **params: Any) -> Any:
        prompt = messages if isinstance(messages, str) else messages[-1]["content"]
        seen.append((prompt, TENANT.get()))
        INSIDE.set(prompt)  # the call's own copy: the caller's context must not see this
        return chat(messages, **params)

    monkeypatch.setattr(client, "chat", recording_chat)
    return seen


@pytest.fixture
def fake() -> Iterator[FakeDeepSeek]:
    with FakeDeepSeek(latency=0.01) as server:
        yield server


def in_thread(body: Callable[[], Any]) -> Any:
    """Run ``body`` in a new thread (a fresh, empty context) and return what it returned."""
    out: List[Any] = []
    thread = threading.Thread(target=lambda: out.append(body()))
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive() and out, "the thread did not finish"
    return out[0]


def test_submit_runs_the_call_in_the_callers_context(fake: FakeDeepSeek, monkeypatch: pytest.MonkeyPatch) -> None:
    client = client_for(fake)
    seen = seen_in_chat(client, monkeypatch)
    results: List[Optional[str]] = []
    with dp.DeepSeekPool(client, max_workers=4, on_result=lambda result: results.append(TENANT.get())) as pool:
        token = TENANT.set("acme")
        try:
            futures = [pool.submit(f"q{i}") for i in range(8)]
            TENANT.set("later")  # the context is the one at submit, not at run time
            for future in futures:
                future.result(timeout=WAIT)
            assert TENANT.get() == "later" and INSIDE.get() is None  # nothing set inside a call came back
        finally:
            TENANT.reset(token)
    client.close()
    assert sorted(seen) == sorted((f"q{i}", "acme") for i in range(8))
    assert results == ["acme"] * 8  # on_result, run by the pool in the worker thread


@pytest.mark.parametrize("how", ["map", "as_completed"])
def test_map_and_as_completed_run_each_call_in_the_iterating_threads_context(
    how: str, fake: FakeDeepSeek, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(fake)
    seen = seen_in_chat(client, monkeypatch)
    with dp.DeepSeekPool(client, max_workers=4) as pool:

        def run(tenant: str) -> int:
            TENANT.set(tenant)
            prompts = [f"{tenant}-{i}" for i in range(12)]
            results = pool.map(prompts) if how == "map" else list(pool.as_completed(prompts))
            assert TENANT.get() == tenant and INSIDE.get() is None
            return sum(result.ok for result in results)

        # Two tenants iterate the same pool at once, each from its own thread.
        answered: List[int] = []
        threads = [threading.Thread(target=lambda t=t: answered.append(run(t))) for t in ("acme", "globex")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert not any(thread.is_alive() for thread in threads)
    client.close()
    assert answered == [12, 12]
    assert len(seen) == 24
    for prompt, tenant in seen:
        assert prompt.split("-")[0] == tenant


def test_on_chunk_runs_in_the_context_of_the_call(fake: FakeDeepSeek) -> None:
    client = client_for(fake)
    chunks: List[Tuple[Optional[str], Optional[str]]] = []

    def on_chunk(result: dp.Result, chunk: Any) -> None:
        chunks.append((result.custom_id, TENANT.get()))

    with dp.DeepSeekPool(client, max_workers=4, on_chunk=on_chunk) as pool:

        def run() -> List[dp.Result]:
            TENANT.set("acme")
            return pool.map([{"custom_id": f"s{i}", "prompt": f"s{i}", "stream": True} for i in range(4)])

        results = in_thread(run)
    client.close()
    assert all(result.ok for result in results)
    assert chunks and {tenant for _, tenant in chunks} == {"acme"}
    assert {custom_id for custom_id, _ in chunks} == {f"s{i}" for i in range(4)}


def test_the_shared_stream_reader_runs_a_calls_hooks_in_its_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool's stream without ``on_chunk`` is read by the reader thread; its hook sees the caller's context."""
    seen: List[Tuple[str, Optional[str]]] = []
    first_token = PoolCall.first_token

    def recording(self: PoolCall, at: float) -> None:
        seen.append((threading.current_thread().name, TENANT.get()))
        first_token(self, at)

    monkeypatch.setattr(PoolCall, "first_token", recording)
    # Chunks come apart from the head, so the reader (not the caller's buffered read) gets them.
    with FakeDeepSeek(stream_chunk_delay=0.01, chunks_per_answer=3) as slow:
        client = client_for(slow)
        with dp.DeepSeekPool(client, max_workers=4) as pool:
            token = TENANT.set("acme")
            try:
                futures = [pool.submit(f"r{i}", stream=True) for i in range(4)]
                for future in futures:
                    assert future.result(timeout=WAIT).content
            finally:
                TENANT.reset(token)
        client.close()
    assert len(seen) == 4
    assert {tenant for _, tenant in seen} == {"acme"}
    assert any(name == READER_THREAD for name, _ in seen), seen  # the reader thread really ran them


def test_a_call_controls_hook_on_the_reader_thread_sees_the_callers_context() -> None:
    """Without a pool: ``client.chat(stream=True, control=...)`` from a thread with a tenant set."""
    seen: List[Tuple[str, Optional[str]]] = []

    class Recording(CallControl):
        def first_token(self, at: float) -> None:
            seen.append((threading.current_thread().name, TENANT.get()))

    with FakeDeepSeek(stream_chunk_delay=0.01, chunks_per_answer=3) as slow:
        client = client_for(slow)

        def call() -> str:
            TENANT.set("globex")
            return client.chat("hi", stream=True, control=Recording()).content

        assert in_thread(call)
        client.close()
    assert seen == [(READER_THREAD, "globex")]


class TenantFilter(logging.Filter):
    """What a logging context does: stamp each record with the ContextVar's value."""

    def __init__(self) -> None:
        super().__init__()
        self.records: List[Tuple[str, str, Optional[str]]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append((record.name, record.getMessage(), TENANT.get()))
        return True


class Quiet(logging.Handler):
    """A handler that runs its filters and writes nowhere (``NullHandler`` skips its filters)."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


@pytest.fixture
def tenant_logs() -> Iterator[TenantFilter]:
    logger = logging.getLogger("deepseek_pool")
    handler = Quiet()
    stamp = TenantFilter()
    handler.addFilter(stamp)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stamp
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_the_pools_log_lines_carry_the_callers_logging_context(tenant_logs: TenantFilter) -> None:
    with FakeDeepSeek(retry_after=0) as server:
        server.script("503")  # a retry, logged by the call's own attempt loop
        client = client_for(server, retries=2)
        with dp.DeepSeekPool(client, max_workers=2) as pool:

            def run() -> List[dp.Result]:
                TENANT.set("acme")
                return pool.map(["one"])

            assert [result.ok for result in in_thread(run)] == [True]
            token = TENANT.set("initech")
            try:
                server.script("402")  # a spent balance: the pool logs that it stops
                with pytest.raises(dp.InsufficientBalanceError):
                    pool.submit("two").result(timeout=WAIT)
            finally:
                TENANT.reset(token)
        client.close()
    retries = [tenant for name, message, tenant in tenant_logs.records if ": retry 1 after " in message]
    stops = [tenant for name, message, tenant in tenant_logs.records if message.startswith("stopping: DeepSeek")]
    assert retries == ["acme"], tenant_logs.records
    assert stops == ["initech"], tenant_logs.records
