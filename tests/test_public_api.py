"""The public namespace: ``__all__`` agrees with it, and the design card's names exist."""

from __future__ import annotations
import __future__

import inspect
import re
import types
from pathlib import Path
from typing import List

import pytest

import deepseek_pool as dp

DESIGN = Path(__file__).resolve().parents[2] / "shared" / "design.md"


def test_all_names_exist_and_every_public_name_is_in_all() -> None:
    missing = [name for name in dp.__all__ if not hasattr(dp, name)]
    assert not missing
    public = {
        name
        for name, value in vars(dp).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, type(__future__.annotations))
    }
    assert public - set(dp.__all__) == set()
    assert len(dp.__all__) == len(set(dp.__all__))


def test_every_exported_class_and_function_has_a_docstring() -> None:
    undocumented = [
        name
        for name in dp.__all__
        if (inspect.isclass(getattr(dp, name)) or inspect.isfunction(getattr(dp, name)))
        and not inspect.getdoc(getattr(dp, name))
    ]
    assert not undocumented


def design_names() -> List[str]:
    if not DESIGN.exists():
        pytest.skip(f"{DESIGN} is not beside this checkout")
    return sorted(set(re.findall(r"\bdp\.([A-Za-z_]\w*)", DESIGN.read_text(encoding="utf-8"))))


def test_names_the_design_card_promises_exist() -> None:
    names = design_names()
    assert "DeepSeekClient" in names and "DeepSeekPool" in names  # the card was really read
    assert [name for name in names if not hasattr(dp, name)] == []


def parameters(func: object) -> List[str]:
    return list(inspect.signature(func).parameters)  # type: ignore[arg-type]


def test_signatures_and_attributes_of_the_design_card() -> None:
    client_params = parameters(dp.DeepSeekClient)
    for name in ("api_key", "base_url", "timeout", "max_retries", "pool_maxsize", "headers", "rate_limit_group"):
        assert name in client_params
    for method in ("chat", "chat_stream", "fim", "models", "balance"):
        assert callable(getattr(dp.DeepSeekClient, method))
    assert parameters(dp.DeepSeekClient.chat)[:3] == ["self", "messages", "model"]
    assert parameters(dp.DeepSeekClient.fim)[:3] == ["self", "prompt", "suffix"]

    pool_params = parameters(dp.DeepSeekPool)
    assert pool_params[:1] == ["client"]
    for name in ("max_workers", "max_in_flight", "rpm", "tpm"):
        assert name in pool_params
    for method in ("submit", "as_completed", "map"):
        assert callable(getattr(dp.DeepSeekPool, method))

    completion = dp.ChatCompletion({"choices": []})
    for name in ("content", "reasoning_content", "tool_calls", "finish_reason", "model", "id", "usage", "raw"):
        assert hasattr(completion, name)
    chunk = dp.ChatChunk({"choices": []})
    for name in ("content", "reasoning_content", "finish_reason", "usage", "raw"):
        assert hasattr(chunk, name)
    usage = dp.Usage()
    for name in (
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_cache_hit_tokens",
        "prompt_cache_miss_tokens",
        "reasoning_tokens",
    ):
        assert hasattr(usage, name)
    result = dp.Result(0, None, "x")
    for name in ("index", "custom_id", "request", "completion", "error", "ok"):
        assert hasattr(result, name)
    timeout = dp.Timeout(connect=1, read=2, total=3)
    assert (timeout.connect, timeout.read, timeout.total) == (1, 2, 3)
    error = dp.RateLimitError("slow down", status_code=429, body={}, request_id="r")
    assert (error.status_code, error.body, error.request_id) == (429, {}, "r")


def test_a_path_readme_documented_before_the_layers_still_imports() -> None:
    """0.1's README showed ``deepseek_pool.redis_storage``; it now lives in the budget layer."""
    pytest.importorskip("redis")
    from deepseek_pool.budget.redis_storage import RedisStorage
    from deepseek_pool.redis_storage import RedisStorage as documented_before

    assert documented_before is RedisStorage
