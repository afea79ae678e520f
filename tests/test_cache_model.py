"""FakeDeepSeek's model of DeepSeek V4's prompt cache: the rules without sockets, then once over the wire."""

from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest
import requests

from deepseek_pool.testing import FakeDeepSeek
from deepseek_pool.testing import main as serve_fake
from deepseek_pool.testing._cache import CacheRules, PromptCache
from deepseek_pool.testing._protocol import plan_chat

MODELS = frozenset({"deepseek-flash", "deepseek-v4-pro"})
SYSTEM = "You are a careful assistant. " * 300  # about 2,100 tokens as the fake counts them


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Prefixes = Tuple[List[int], List[int]]


def prefixes(*pieces: Tuple[str, int]) -> Prefixes:
    """Keys chained over ``(text, tokens)`` pieces, and the tokens up to each."""
    keys: List[int] = []
    totals: List[int] = []
    key, total = 0, 0
    for text, count in pieces:
        key, total = hash((key, text)), total + count
        keys.append(key)
        totals.append(total)
    return keys, totals


def make(**rules: Any) -> Tuple[PromptCache, Clock]:
    clock = Clock()
    settings: Dict[str, Any] = {"unit_tokens": 256, "min_tokens": 1024, "build_delay": 2.0, "lifetime": 3600.0}
    settings.update(rules)
    return PromptCache(CacheRules(**settings), clock=clock), clock


def ask(cache: PromptCache, request: Prefixes, user: Optional[str] = None) -> int:
    return cache.lookup(user, *request)


def done(cache: PromptCache, request: Prefixes, user: Optional[str] = None) -> None:
    cache.complete(user, *request)


def question(n: int) -> Prefixes:
    return prefixes(("system", 3000), (f"question {n}", 20))


def test_a_shared_prefix_is_a_unit_only_after_two_requests_carrying_it_completed() -> None:
    cache, clock = make()
    first, second, third = question(1), question(2), question(3)
    # Started together, as a batch fanned out at once: neither can hit.
    assert ask(cache, first) == ask(cache, second) == 0
    done(cache, first)
    clock.now += 10
    assert ask(cache, third) == 0  # one completed request makes no shared unit
    done(cache, second)
    clock.now += 1.9
    assert ask(cache, third) == 0  # still being built
    clock.now += 0.1
    assert ask(cache, third) == 3000 - 3000 % 256  # whole 256-token units of the shared prefix


def test_a_hit_needs_a_unit_the_request_fully_matches() -> None:
    cache, clock = make()
    with_report = [prefixes(("system", 1500), ("report A", 1500), (f"q{n}", 20)) for n in range(2)]
    for request in with_report:
        done(cache, request)
    clock.now += 5
    # The unit is system + report A: a request with report B shares 1,500 tokens of it, and misses.
    assert ask(cache, prefixes(("system", 1500), ("report B", 1500), ("q", 20))) == 0
    assert ask(cache, prefixes(("system", 1500), ("report A", 1500), ("q9", 20))) == 2816


def test_a_repeated_request_hits_its_whole_prompt_and_the_answer_after_it() -> None:
    cache, clock = make(unit_tokens=1, min_tokens=0)
    keys, totals = question(1)
    cache.complete(None, keys, totals, answer=(hash((keys[-1], "answer")), totals[-1] + 50))
    clock.now += 2
    assert ask(cache, (keys, totals)) == 3020
    assert cache.lookup(None, [*keys, hash((keys[-1], "answer")), 7], [*totals, 3070, 3080]) == 3070


def test_each_user_id_has_a_cache_of_its_own() -> None:
    cache, clock = make()
    done(cache, question(1), "alice")
    done(cache, question(2), "alice")
    clock.now += 5
    assert ask(cache, question(3), "alice") == 2816
    assert ask(cache, question(3), "bob") == 0
    assert ask(cache, question(3)) == 0
    done(cache, question(4), "bob")  # one request of bob's and one of alice's share nothing
    clock.now += 5
    assert ask(cache, question(5), "bob") == 0


def test_unused_units_are_forgotten_after_their_lifetime_and_a_hit_keeps_them() -> None:
    cache, clock = make(lifetime=100.0)
    done(cache, question(1))
    done(cache, question(2))
    clock.now += 2 + 90
    assert ask(cache, question(3)) == 2816  # used at 90 s: lives another 100
    clock.now += 90
    assert ask(cache, question(4)) == 2816
    clock.now += 100
    assert ask(cache, question(5)) == 0


def test_hits_come_in_whole_units_from_the_minimum() -> None:
    rules = CacheRules(unit_tokens=256, min_tokens=1024)
    assert [rules.billable_hit(n) for n in (0, 1000, 1023, 1024, 1300, 3000)] == [0, 0, 0, 1024, 1280, 2816]
    assert CacheRules(unit_tokens=64, min_tokens=0).billable_hit(100) == 64
    with pytest.raises(ValueError, match="cache_build_delay"):
        CacheRules(build_delay=-1)
    with pytest.raises(ValueError, match="cache_unit_tokens"):
        FakeDeepSeek(cache_unit_tokens=0)


def chat_prefixes(**body: Any) -> Tuple[Optional[str], List[int], List[int]]:
    plan = plan_chat({"model": "deepseek-flash", **body}, MODELS, sorted(MODELS), beta=False)
    assert plan.cache_tokens[-1] == plan.prompt_tokens
    return plan.cache_scope, plan.cache_keys, plan.cache_tokens


def test_the_fakes_prefixes_start_with_the_model_and_tools() -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    plain = chat_prefixes(messages=messages)
    assert chat_prefixes(messages=messages) == plain
    assert chat_prefixes(messages=messages, user_id="u1")[0] == "u1"
    assert chat_prefixes(messages=messages, tools=[tool])[1][0] != plain[1][0]
    assert chat_prefixes(messages=messages, model="deepseek-v4-pro")[1][0] != plain[1][0]
    other_question = chat_prefixes(messages=[messages[0], {"role": "user", "content": "ho"}])
    assert other_question[1][0] == plain[1][0] and other_question[1][1] != plain[1][1]


def post(fake: FakeDeepSeek, text: str, user_id: Optional[str] = None) -> Dict[str, Any]:
    body: Dict[str, Any] = {
        "model": "deepseek-flash",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
    }
    if user_id is not None:
        body["user_id"] = user_id
    response = requests.post(
        fake.base_url + "/chat/completions", json=body, headers={"Authorization": "Bearer k"}, timeout=10
    )
    response.raise_for_status()
    usage: Dict[str, Any] = response.json()["usage"]
    assert usage["prompt_cache_hit_tokens"] + usage["prompt_cache_miss_tokens"] == usage["prompt_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_cache_hit_tokens"]
    return usage


def test_over_the_wire_requests_sent_together_miss_and_later_ones_hit() -> None:
    with FakeDeepSeek(latency=0.2, cache_build_delay=0.8) as fake:
        with cf.ThreadPoolExecutor(2) as executor:
            together = list(executor.map(lambda n: post(fake, f"question {n}"), range(2)))
        assert [u["prompt_cache_hit_tokens"] for u in together] == [0, 0]
        assert post(fake, "too soon")["prompt_cache_hit_tokens"] == 0
        time.sleep(0.85)
        later = post(fake, "question 3")
        system_tokens = 4 + (len(SYSTEM) + 3) // 4  # the fake's count: 4 per message + characters / 4
        assert later["prompt_cache_hit_tokens"] == system_tokens - system_tokens % 256 > 0
        assert later["prompt_cache_miss_tokens"] == later["prompt_tokens"] - later["prompt_cache_hit_tokens"]
        assert post(fake, "question 3", user_id="someone else")["prompt_cache_hit_tokens"] == 0
        fake.reset()
        assert post(fake, "question 4")["prompt_cache_hit_tokens"] == 0


def test_serve_fake_refuses_a_negative_build_delay(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_fake(["--cache-build-delay", "-1"]) == 2
    assert "cache_build_delay must be >= 0" in capsys.readouterr().err
