"""DeepSeekPool against FakeDeepSeek on real sockets: order, loss, limits, cancellation."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import math
import threading
import time
from typing import Any, Dict, Iterator, List

import pytest

import deepseek_pool as dp
from deepseek_pool.budget.limiter import Limiter
from deepseek_pool.pool import window as window_module
from deepseek_pool.pool.pool import DeepSeekPool, Result, parse_request
from deepseek_pool.testing import FakeDeepSeek

KEY = "sk-pool-test-key"


def make_client(fake: FakeDeepSeek, retries: int = 5, **kwargs: Any) -> dp.DeepSeekClient:
    retry = dp.DeepSeekRetry(retries, backoff_factor=0.005, backoff_jitter=0.005, max_retry_after=0.05)
    return dp.DeepSeekClient(KEY, base_url=fake.base_url, max_retries=retry, **kwargs)


def pool_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("deepseek-pool") and t.is_alive()]


@pytest.fixture
def faulty() -> Iterator[FakeDeepSeek]:
    with FakeDeepSeek(faults={"503": 0.08, "429": 0.05, "reset": 0.02, "500": 0.03}, seed=7) as fake:
        yield fake


# -- order and completeness --------------------------------------------------------------


def test_map_keeps_input_order_and_loses_nothing_under_faults(faulty: FakeDeepSeek) -> None:
    prompts = [f"prompt number {i}" for i in range(500)]
    with DeepSeekPool(make_client(faulty, retries=8), max_workers=16) as pool:
        results = pool.map(prompts)
    assert [r.index for r in results] == list(range(500))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    assert [r.completion.content for r in results if r.completion] == [FakeDeepSeek.answer_for(p) for p in prompts]
    assert sum(faulty.stats.faults_injected.values()) > 20  # the faults really happened
    assert sum(r.attempts for r in results) == faulty.stats.requests


def test_as_completed_maps_each_answer_to_its_own_request(fake_deepseek: FakeDeepSeek) -> None:
    requests = [{"custom_id": f"id-{i}", "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(60)]
    seen: Dict[str, str] = {}
    with DeepSeekPool(make_client(fake_deepseek), max_workers=8) as pool:
        for result in pool.as_completed(requests):
            assert result.custom_id is not None and result.completion is not None
            assert result.request is requests[result.index]
            seen[result.custom_id] = result.completion.content
    assert seen == {f"id-{i}": FakeDeepSeek.answer_for(f"q{i}") for i in range(60)}


def test_all_request_shapes_and_custom_id_never_sent(fake_deepseek: FakeDeepSeek) -> None:
    requests: List[Any] = [
        "plain string",
        [{"role": "user", "content": "a list"}],
        {"custom_id": "dict", "messages": [{"role": "user", "content": "a dict"}], "max_tokens": 50},
        {"custom_id": "prompt", "prompt": "a prompt"},
        {
            "custom_id": "batch",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "deepseek-v4-pro", "messages": [{"role": "user", "content": "a batch line"}]},
        },
    ]
    with DeepSeekPool(make_client(fake_deepseek), max_workers=4) as pool:
        results = pool.map(requests)
    assert [r.completion.content for r in results if r.completion] == [
        FakeDeepSeek.answer_for(p) for p in ("plain string", "a list", "a dict", "a prompt", "a batch line")
    ]
    assert [r.custom_id for r in results] == [None, None, "dict", "prompt", "batch"]
    bodies = [r.body for r in fake_deepseek.received]
    assert all("custom_id" not in body for body in bodies)
    assert any(body.get("model") == "deepseek-v4-pro" for body in bodies)
    assert any(body.get("max_tokens") == 50 for body in bodies)


def test_errors_stay_on_their_result_and_never_stop_the_batch(fake_deepseek: FakeDeepSeek) -> None:
    fake_deepseek.script("402")
    requests: List[Any] = ["fine 1", 42, {"messages": []}, {"model": "nope", "prompt": "bad model"}, "fine 2", "fine 3"]
    with DeepSeekPool(make_client(fake_deepseek), max_workers=1, stop_on=()) as pool:
        results = pool.map(requests)
    errors = {r.index: type(r.error) for r in results if not r.ok}
    assert errors == {0: dp.InsufficientBalanceError, 1: TypeError, 2: ValueError, 3: dp.BadRequestError}
    assert [r.ok for r in results[4:]] == [True, True]
    sent = [r.body["messages"][0]["content"] for r in fake_deepseek.received]
    assert sent == ["fine 1", "bad model", "fine 2", "fine 3"]  # invalid items never reached the server
    with pytest.raises(dp.InsufficientBalanceError):
        results[0].unwrap()


def test_parse_request_rejects_bad_shapes_clearly() -> None:
    with pytest.raises(ValueError, match="needs 'messages'"):
        parse_request({"custom_id": "x"})
    with pytest.raises(ValueError, match="unsupported batch url"):
        parse_request({"custom_id": "x", "url": "/v1/embeddings", "body": {"messages": []}})
    with pytest.raises(TypeError, match="custom_id must be a str"):
        parse_request({"custom_id": 5, "prompt": "x"})


# -- limits ------------------------------------------------------------------------------


def test_concurrency_never_exceeds_workers_or_in_flight_and_connections_follow_workers() -> None:
    with FakeDeepSeek(latency=0.03) as fake:
        with DeepSeekPool(make_client(fake), max_workers=12) as pool:
            assert all(r.ok for r in pool.map([f"q{i}" for i in range(120)]))
        assert fake.stats.peak_concurrency <= 12
        assert fake.stats.peak_concurrency >= 8
        assert fake.stats.connections_opened <= 12

        fake.reset()
        with DeepSeekPool(make_client(fake), max_workers=12, max_in_flight=5) as pool:
            assert all(r.ok for r in pool.map([f"q{i}" for i in range(60)]))
        assert 3 <= fake.stats.peak_concurrency <= 5


def test_one_limiter_caps_two_pools_together() -> None:
    limiter = Limiter(max_in_flight=4)
    with FakeDeepSeek(latency=0.03) as fake:
        client = make_client(fake)
        with (
            DeepSeekPool(client, max_workers=8, limiter=limiter) as a,
            DeepSeekPool(client, max_workers=8, limiter=limiter) as b,
        ):
            fa = [a.submit(f"a{i}") for i in range(30)]
            fb = [b.submit(f"b{i}") for i in range(30)]
            cf.wait(fa + fb, timeout=30)
        assert all(f.result().content for f in fa + fb)
        assert fake.stats.peak_concurrency <= 4


def test_rpm_spaces_starts_evenly(fake_deepseek: FakeDeepSeek) -> None:
    rpm = 1200  # 20 per second: one start every 50 ms
    with DeepSeekPool(make_client(fake_deepseek), max_workers=8, rpm=rpm) as pool:
        results = pool.map([f"q{i}" for i in range(30)])
    starts = sorted(r.started_at for r in results if r.started_at is not None)
    assert len(starts) == 30
    per_second = math.ceil(rpm / 60)
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + 1.0) <= per_second
    assert starts[-1] - starts[0] >= (30 - per_second) * 60 / rpm * 0.9


def test_tpm_reserves_before_and_corrects_after() -> None:
    # Each call reserves max_tokens=3000 plus its prompt, so a 6,000-token budget lets two
    # start; the others wait until a finished call gives back what it did not use (its
    # real usage is tiny), which takes one latency, not the 30 s of a full refill.
    with FakeDeepSeek(latency=0.2) as fake:
        start = time.monotonic()
        with DeepSeekPool(make_client(fake), max_workers=4, tpm=6_000) as pool:
            futures = [pool.submit("x", max_tokens=3000) for _ in range(4)]
            assert all(f.result(timeout=10).content for f in futures)
        assert fake.stats.peak_concurrency <= 2
        assert time.monotonic() - start < 3.0


def test_the_accounts_cap_is_learnt_from_its_429s_by_the_whole_pool() -> None:
    """A 429 naming the cap lowers the shared cap for every thread; compare with no cool-down."""

    def run(cool: bool) -> int:
        with FakeDeepSeek(latency=0.01, max_concurrency=4) as fake:
            limiter = Limiter(retry_budget=None)
            retry = dp.DeepSeekRetry(10, backoff_factor=0.01, backoff_jitter=0.01)
            client = dp.DeepSeekClient(KEY, base_url=fake.base_url, max_retries=retry)
            with DeepSeekPool(client, max_workers=16, limiter=limiter, cool_down=cool) as pool:
                results = pool.map([f"q{i}" for i in range(200)])
            assert all(r.ok for r in results)
            assert fake.stats.peak_concurrency <= 16
            return fake.stats.by_status.get(429, 0)

    with_cool_down = run(True)
    without = run(False)
    assert with_cool_down * 2 < without, (with_cool_down, without)
    assert with_cool_down <= 16 - 4 + 4  # the first wave over the cap, then hardly any


def test_sporadic_429s_hold_the_pool_only_briefly() -> None:
    """A 429 that says nothing about concurrency must not stall every thread."""
    with FakeDeepSeek(latency=0.01, faults={"429": 0.2}, seed=3) as fake:
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url, max_retries=dp.DeepSeekRetry(6, backoff_factor=0.01))
        with DeepSeekPool(client, max_workers=16) as pool:
            start = time.monotonic()
            results = pool.map([f"q{i}" for i in range(200)])
            elapsed = time.monotonic() - start
        assert all(r.ok for r in results)
        assert pool.limiter.stats.cap is None  # no cap was invented
        # 200 calls of 10 ms on 16 threads take ~0.15 s; a pool-wide stop per 429 would take seconds
        assert elapsed < 2.0


def test_retry_budget_stops_hammering_a_failing_api() -> None:
    with FakeDeepSeek(faults={"503": 1.0}) as fake:
        with DeepSeekPool(make_client(fake, retries=5), max_workers=8, retry_budget=50) as pool:
            results = pool.map([f"q{i}" for i in range(100)])
        assert not any(r.ok for r in results)
        assert isinstance(results[-1].error, dp.ServiceUnavailableError)
        assert "budget" in str(results[-1].error)
        # 100 first attempts + about 50/5 paid retries, instead of 100 x 6 requests
        assert fake.stats.requests <= 100 + 50 // 5 + 8


def test_retry_budget_leaves_a_batch_that_recovers_alone() -> None:
    with FakeDeepSeek() as fake:
        fake.script(*(["503", "ok", "ok", "ok"] * 50))
        with DeepSeekPool(make_client(fake), max_workers=1, retry_budget=50) as pool:
            results = pool.map([f"q{i}" for i in range(150)])
        assert all(r.ok for r in results)
        assert pool.stats.retried == 50
        assert pool.limiter.stats.retries_refused == 0


# -- laziness and cancellation -------------------------------------------------------------


class _StubClient:
    """Answers instantly without a network: for memory and scheduling properties only."""

    model = "stub"
    call_timeout = None

    def reserve_connections(self, threads: int) -> None:
        pass

    def release_connections(self, threads: int) -> None:
        pass

    def ensure_pool_size(self, threads: int) -> None:
        pass

    def chat(self, messages: Any, **params: Any) -> dp.ChatCompletion:
        return dp.ChatCompletion({"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]})

    def close(self) -> None:
        pass


class _SlowStubClient(_StubClient):
    """Answers prompts ``"slow <i>"`` after 0.25 + 0.03 * i s, others at once."""

    def chat(self, messages: Any, **params: Any) -> dp.ChatCompletion:
        if isinstance(messages, str) and messages.startswith("slow"):
            time.sleep(0.25 + 0.03 * int(messages.split()[1]))
        return super().chat(messages, **params)


@pytest.fixture
def naps(monkeypatch: pytest.MonkeyPatch) -> List[float]:
    """The collecting waits of as_completed (they still sleep)."""
    taken: List[float] = []

    def nap(seconds: float) -> None:
        taken.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(window_module, "_sleep", nap)
    monkeypatch.setattr(window_module, "COLLECT_AFTER", 1)  # a call of collect_interval or more is slow
    return taken


def test_after_a_slow_result_as_completed_collects_those_finishing_around_it(naps: List[float]) -> None:
    # Four calls finishing 30 ms apart: after the first result, one wait of 0.2 s takes the
    # other three in the same wake-up instead of blocking for each.
    with DeepSeekPool(_SlowStubClient(), max_workers=4, collect_interval=0.2) as pool:  # type: ignore[arg-type]
        results = list(pool.as_completed(f"slow {i}" for i in range(4)))
    assert sorted(r.index for r in results if r.ok) == [0, 1, 2, 3]
    assert naps == [0.2]


def test_fast_results_and_collect_interval_0_never_wait(naps: List[float]) -> None:
    with DeepSeekPool(_SlowStubClient(), max_workers=4, collect_interval=0.1) as pool:  # type: ignore[arg-type]
        assert all(r.ok for r in pool.as_completed(f"fast {i}" for i in range(200)))
    assert naps == []  # calls shorter than the threshold: their results come as they finish
    with DeepSeekPool(_SlowStubClient(), max_workers=4, collect_interval=0) as pool:  # type: ignore[arg-type]
        assert all(r.ok for r in pool.map(f"slow {i}" for i in range(4)))
    assert naps == []


@pytest.mark.parametrize("bad", [-0.1, 1.5, "5ms", True, None])
def test_a_bad_collect_interval_is_named(bad: Any) -> None:
    with pytest.raises(ValueError, match="collect_interval"):
        DeepSeekPool(_StubClient(), max_workers=2, collect_interval=bad)  # type: ignore[arg-type]


def test_a_huge_lazy_input_is_consumed_through_a_bounded_window() -> None:
    consumed = 0
    yielded = 0
    max_ahead = 0

    def requests() -> Iterator[str]:
        nonlocal consumed
        for i in range(100_000):
            consumed += 1
            yield f"q{i}"

    with DeepSeekPool(_StubClient(), max_workers=4) as pool:  # type: ignore[arg-type]
        for result in pool.as_completed(requests()):
            yielded += 1
            max_ahead = max(max_ahead, consumed - yielded)
            assert result.ok
    assert yielded == 100_000
    assert max_ahead <= pool.window


def test_breaking_early_sends_only_about_a_window() -> None:
    with FakeDeepSeek(latency=0.05) as fake:
        start = time.monotonic()
        with DeepSeekPool(make_client(fake), max_workers=4) as pool:
            for i, _ in enumerate(pool.as_completed(f"q{n}" for n in range(10_000))):
                if i == 4:
                    break
        assert time.monotonic() - start < 2.0
        assert fake.stats.requests <= 5 + pool.window
    assert not pool_threads()


def test_keyboard_interrupt_cancels_pending_and_leaves_no_worker() -> None:
    with FakeDeepSeek(latency=0.05) as fake:
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt), DeepSeekPool(make_client(fake), max_workers=4) as pool:
            for i, _ in enumerate(pool.as_completed(f"q{n}" for n in range(10_000))):
                if i == 3:
                    raise KeyboardInterrupt
        assert time.monotonic() - start < 2.0
        assert fake.stats.requests <= 4 + pool.window
    assert not pool_threads()


def test_exception_exit_cancels_submitted_calls_that_have_not_started() -> None:
    with FakeDeepSeek(latency=0.1) as fake:
        with pytest.raises(RuntimeError), DeepSeekPool(make_client(fake), max_workers=2) as pool:
            futures = [pool.submit(f"q{i}") for i in range(50)]
            raise RuntimeError("boom")
        assert sum(f.cancelled() for f in futures) >= 40
        assert fake.stats.requests <= 10
    assert not pool_threads()


def test_normal_exit_waits_for_submitted_calls(fake_deepseek: FakeDeepSeek) -> None:
    with DeepSeekPool(make_client(fake_deepseek), max_workers=3) as pool:
        futures = [pool.submit(f"q{i}") for i in range(20)]
    assert all(f.done() and not f.cancelled() for f in futures)
    assert [f.result().content for f in futures] == [FakeDeepSeek.answer_for(f"q{i}") for i in range(20)]


def test_submit_futures_work_with_wait_and_asyncio(fake_deepseek: FakeDeepSeek) -> None:
    with DeepSeekPool(make_client(fake_deepseek), max_workers=4) as pool:
        future = pool.submit("sync")
        done, _ = cf.wait([future], timeout=10)
        assert future in done

        async def main() -> List[str]:
            answers = await asyncio.gather(*(asyncio.wrap_future(pool.submit(f"a{i}")) for i in range(5)))
            return [a.content for a in answers]

        assert asyncio.run(main()) == [FakeDeepSeek.answer_for(f"a{i}") for i in range(5)]
        failing = pool.submit([{"content": "no role"}])
        with pytest.raises(ValueError, match="role"):
            failing.result(timeout=10)


def test_a_pool_never_shuts_down_an_executor_it_was_given(fake_deepseek: FakeDeepSeek) -> None:
    with cf.ThreadPoolExecutor(4) as executor:
        with DeepSeekPool(make_client(fake_deepseek), max_workers=4, executor=executor) as pool:
            assert pool.map(["a", "b"])[1].ok
        assert executor.submit(lambda: 41 + 1).result(timeout=5) == 42


def test_closed_pool_refuses_work(fake_deepseek: FakeDeepSeek) -> None:
    pool = DeepSeekPool(make_client(fake_deepseek), max_workers=2)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit("x")


def test_pool_builds_its_client_from_the_environment(deepseek_env: FakeDeepSeek) -> None:
    with DeepSeekPool(max_workers=2) as pool:
        assert pool.submit("env").result(timeout=10).content == FakeDeepSeek.answer_for("env")
        assert pool.client.pool_maxsize >= 2


def test_bad_pool_options_are_clear_errors(fake_deepseek: FakeDeepSeek) -> None:
    client = make_client(fake_deepseek)
    with pytest.raises(ValueError, match="max_workers"):
        DeepSeekPool(client, max_workers=0)
    with pytest.raises(ValueError, match="limiter"):
        DeepSeekPool(client, limiter=Limiter(), rpm=10)


# -- streaming, hooks, counters ---------------------------------------------------------------


def test_streaming_requests_are_aggregated_with_chunk_callback_and_first_token() -> None:
    chunks: Dict[int, int] = {}
    lock = threading.Lock()

    def on_chunk(result: Result, chunk: dp.ChatChunk) -> None:
        with lock:
            chunks[result.index] = chunks.get(result.index, 0) + 1

    with FakeDeepSeek(latency=0.02) as fake:
        fake.script("trickle:3")
        with DeepSeekPool(make_client(fake), max_workers=4, on_chunk=on_chunk) as pool:
            results = pool.map([{"prompt": f"s{i}", "stream": True} for i in range(8)])
    assert [r.completion.content for r in results if r.completion] == [
        FakeDeepSeek.answer_for(f"s{i}") for i in range(8)
    ]
    assert all(r.first_token is not None and 0.015 <= r.first_token <= r.elapsed for r in results)
    assert sorted(chunks) == list(range(8)) and min(chunks.values()) > 2


def test_on_result_hook_and_counters(fake_deepseek: FakeDeepSeek) -> None:
    fake_deepseek.script("503", "ok")
    seen: List[int] = []
    requests: List[Any] = [f"q{i}" for i in range(5)] + [{"prompt": "x", "model": "no-such-model"}]
    with DeepSeekPool(make_client(fake_deepseek), max_workers=1, on_result=lambda r: seen.append(r.index)) as pool:
        results = pool.map(requests)
    stats = pool.stats
    assert sorted(seen) == list(range(6))
    assert (stats.submitted, stats.done, stats.ok, stats.failed, stats.retried) == (6, 6, 5, 1, 1)
    assert stats.usage.total_tokens == sum(
        r.completion.usage.total_tokens for r in results if r.completion and r.completion.usage
    )
    assert stats.usage.total_tokens > 0
    # The pool sums usage into its own object in place: a snapshot taken earlier keeps its numbers.
    with DeepSeekPool(make_client(fake_deepseek), max_workers=1) as pool:
        pool.map(["u0"])
        before = pool.stats.usage
        first = before.total_tokens
        pool.map(["u1", "u2"])
    assert before.total_tokens == first > 0
    assert pool.stats.usage.total_tokens > first


def test_a_failing_on_result_hook_never_breaks_the_batch(fake_deepseek: FakeDeepSeek) -> None:
    def bad_hook(result: Result) -> None:
        raise RuntimeError("hook bug")

    with DeepSeekPool(make_client(fake_deepseek), max_workers=2, on_result=bad_hook) as pool:
        assert all(r.ok for r in pool.map(["a", "b", "c"]))


def test_options_the_pool_owns_are_refused(fake_deepseek: FakeDeepSeek) -> None:
    with DeepSeekPool(make_client(fake_deepseek), max_workers=2) as pool, pytest.raises(TypeError, match="on_retry"):
        pool.submit("x", on_retry=print).result(timeout=10)
    assert fake_deepseek.stats.requests == 0
