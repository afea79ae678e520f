"""Warming the prompt cache: the shared prefix found, two warm-up calls, the wait, then the batch hits."""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

import deepseek_pool as dp
from deepseek_pool.cli.commands import main
from deepseek_pool.pool.warming import WarmPrefix, shared_prefix, warm_first
from deepseek_pool.testing import FakeDeepSeek

KEY = "sk-test"
SYSTEM = {"role": "system", "content": "You grade essays by the rubric below, strictly. " * 250}  # ~3,000 tokens
TOOL = {"type": "function", "function": {"name": "grade", "parameters": {"type": "object", "properties": {}}}}


def item(n: int, **params: Any) -> Dict[str, Any]:
    return {"custom_id": f"essay-{n}", "messages": [SYSTEM, {"role": "user", "content": f"Essay {n}"}], **params}


def test_the_shared_prefix_is_the_leading_messages_of_the_largest_group() -> None:
    requests: List[Any] = [item(n, max_tokens=50 + n) for n in range(4)]
    requests += [item(9, tools=[TOOL]), "a lone question"]
    prefix = shared_prefix(requests)
    assert prefix is not None
    assert prefix.messages == (SYSTEM,) and prefix.context == {} and prefix.sharing == 4
    assert prefix.next_role == "user" and 2500 < prefix.tokens < 4000
    with_tools = shared_prefix([item(n, tools=[TOOL], model="deepseek-v4-pro") for n in range(3)])
    assert with_tools is not None and with_tools.context == {"tools": [TOOL], "model": "deepseek-v4-pro"}
    assert with_tools.tokens > prefix.tokens
    assert shared_prefix([item(1), item(2)]) is None  # two requests: a warm-up would cost what it saves
    assert shared_prefix([f"question {n}" for n in range(5)]) is None  # nothing leads them all


def test_warming_takes_no_more_than_the_window_of_a_lazy_input() -> None:
    taken: List[int] = []

    def lazy() -> Iterator[str]:
        for n in range(100):
            taken.append(n)
            yield f"question {n}"

    class NoPool:
        _closing = None

        def submit(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("nothing to warm, nothing sent")

    requests = warm_first(NoPool(), lazy(), 8, WarmPrefix())  # type: ignore[arg-type]
    assert next(requests) == "question 0" and len(taken) == 8
    assert list(requests)[-1] == "question 99"


def run(fake: FakeDeepSeek, warm: Any, items: int = 32) -> List[dp.Result]:
    client = dp.DeepSeekClient(KEY, base_url=fake.base_url)
    with dp.DeepSeekPool(client, max_workers=items, warm_prefix=warm) as pool:
        results = pool.map(item(n) for n in range(items))
        assert all(r.ok for r in results)
        share = pool.stats.cache_hit_share
        assert share is not None and 0 <= share <= 1
    client.close()
    return results


def hits(results: List[dp.Result]) -> List[int]:
    return [r.completion.usage.prompt_cache_hit_tokens for r in results if r.completion and r.completion.usage]


def test_a_warmed_batch_hits_its_shared_prefix_and_a_cold_one_does_not() -> None:
    with FakeDeepSeek(latency=0.2, cache_build_delay=0.5) as fake:
        cold = run(fake, False)
        assert sum(hits(cold)) == 0  # all started before any two completed
        assert len(fake.received) == 32
        fake.reset()
        warmed = run(fake, WarmPrefix(wait=0.6))
        warm_ups = fake.received[:2]
        assert [r.body["max_tokens"] for r in warm_ups] == [1, 1]
        assert [r.body["messages"][0] for r in warm_ups] == [SYSTEM, SYSTEM]
        assert warm_ups[0].body["messages"][1] != warm_ups[1].body["messages"][1]  # so the prefix is what they share
        assert len(fake.received) == 34
        assert min(hits(warmed)) >= 2816  # the ~3,000-token system prompt, in whole 256-token units
        miss = sum(r.completion.usage.prompt_cache_miss_tokens for r in warmed if r.completion and r.completion.usage)
        assert miss < 0.1 * sum(r.completion.usage.prompt_tokens for r in cold if r.completion and r.completion.usage)


def test_a_prefix_too_short_to_be_cached_is_not_warmed(caplog: pytest.LogCaptureFixture) -> None:
    short = {"role": "system", "content": "Be brief."}
    with FakeDeepSeek() as fake:
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url)
        with (
            caplog.at_level(logging.INFO, "deepseek_pool.pool.warming"),
            dp.DeepSeekPool(client, max_workers=4, warm_prefix=True) as pool,
        ):
            results = pool.map([short, {"role": "user", "content": f"q{n}"}] for n in range(5))
        client.close()
        assert all(r.ok for r in results) and len(fake.received) == 5
    assert "below the 1024 DeepSeek caches; not warming" in caplog.text


def test_a_failed_warm_up_is_logged_and_the_batch_runs_cold(caplog: pytest.LogCaptureFixture) -> None:
    with FakeDeepSeek() as fake:
        fake.script("402")  # the first warm-up fails and is not retried
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url)
        with (
            caplog.at_level(logging.WARNING),
            dp.DeepSeekPool(client, max_workers=4, warm_prefix=WarmPrefix(wait=0), stop_on=()) as pool,
        ):
            results = pool.map(item(n) for n in range(4))
        client.close()
    assert all(r.ok for r in results) and len(fake.received) == 5
    assert "warming the prompt cache failed (InsufficientBalance" in caplog.text


def test_warm_prefix_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="wait"):
        WarmPrefix(wait=-1)
    with pytest.raises(ValueError, match="min_tokens"):
        WarmPrefix(min_tokens=1.5)  # type: ignore[arg-type]
    with dp.DeepSeekClient(KEY, base_url="http://127.0.0.1:9") as client, pytest.raises(TypeError, match="warm_"):
        dp.DeepSeekPool(client, warm_prefix="yes")  # type: ignore[arg-type]


def test_a_stopped_run_sends_no_warm_up() -> None:
    stop = threading.Event()
    stop.set()

    class Refuses:
        _closing = threading.Event()

        def submit(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a drained run sends nothing")

    requests = [item(n) for n in range(5)]
    assert list(warm_first(Refuses(), requests, 8, WarmPrefix(), stop)) == requests  # type: ignore[arg-type]


def test_run_warm_prefix_warms_before_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(item(n)) + "\n" for n in range(6)))
    with FakeDeepSeek(cache_build_delay=0.05) as fake:
        monkeypatch.setenv("DEEPSEEK_API_KEY", KEY)
        monkeypatch.setenv("DEEPSEEK_BASE_URL", fake.base_url)
        assert main(["run", str(inp), "-o", str(tmp_path / "out.jsonl"), "--warm-prefix"]) == 0
        assert [r.body.get("max_tokens") for r in fake.received[:3]] == [1, 1, None]
        assert len(fake.received) == 8
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert all(line["response"]["body"]["usage"]["prompt_cache_hit_tokens"] >= 2816 for line in lines)
    assert re.search(r"\((9\d)% cache hits\)", capsys.readouterr().err)  # the summary shows it worked
