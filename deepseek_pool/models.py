"""DeepSeek's model ids and prices, kept as data in one place.

DeepSeek changes models and prices often: update this module, nothing else.
Prices are USD per million tokens (November 2026).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

__all__ = ["DEFAULT_MODEL", "MODELS", "PRICES", "ModelPrice", "estimate_cost", "is_peak"]

#: The model used when neither the call, the client nor ``DEEPSEEK_MODEL`` names one.
DEFAULT_MODEL = "deepseek-flash"

#: Current ids, and older aliases that may still answer (rewritten by the server).
MODELS = ("deepseek-flash", "deepseek-v4-pro")
ALIASES: Mapping[str, str] = {
    "deepseek-chat": "deepseek-flash",
    "deepseek-reasoner": "deepseek-flash",
    "deepseek-v4-flash": "deepseek-flash",
}


@dataclass(frozen=True)
class ModelPrice:
    """Peak-hour prices in USD per 1M tokens; off-peak is ``OFF_PEAK_FACTOR`` of these."""

    input_cache_hit: float
    input_cache_miss: float
    output: float


PRICES: Dict[str, ModelPrice] = {
    "deepseek-flash": ModelPrice(input_cache_hit=0.006, input_cache_miss=0.30, output=1.20),
    "deepseek-v4-pro": ModelPrice(input_cache_hit=0.044, input_cache_miss=1.32, output=3.96),
}

#: Off-peak hours cost half.
OFF_PEAK_FACTOR = 0.5
#: Peak hours (UTC, weekdays), as [start, end) hour pairs.
PEAK_HOURS_UTC = ((1, 4), (6, 10))


def is_peak(when: _dt.datetime) -> bool:
    """Tell whether ``when`` (aware, or naive meaning UTC) falls in DeepSeek's peak hours."""
    if when.tzinfo is not None:
        when = when.astimezone(_dt.timezone.utc)
    if when.weekday() >= 5:
        return False
    return any(start <= when.hour < end for start, end in PEAK_HOURS_UTC)


def estimate_cost(
    model: str,
    *,
    prompt_cache_hit_tokens: int,
    prompt_cache_miss_tokens: int,
    completion_tokens: int,
    when: Optional[_dt.datetime] = None,
) -> Optional[float]:
    """Estimate a call's cost in USD, or None for a model whose price is unknown (never $0)."""
    price = PRICES.get(ALIASES.get(model, model))
    if price is None:
        return None
    when = when or _dt.datetime.now(_dt.timezone.utc)
    factor = 1.0 if is_peak(when) else OFF_PEAK_FACTOR
    total = (
        prompt_cache_hit_tokens * price.input_cache_hit
        + prompt_cache_miss_tokens * price.input_cache_miss
        + completion_tokens * price.output
    )
    return total * factor / 1_000_000
