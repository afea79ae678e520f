"""DeepSeek's model ids and prices, kept as data in one place.

DeepSeek changes models and prices often: update this module, nothing else.
Prices are USD per million tokens (November 2026).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

__all__ = ["DEFAULT_MODEL", "MODELS", "PRICES", "ModelPrice", "cost_of", "estimate_cost", "is_peak", "price_of"]

#: The model used when neither the call, the client nor ``DEEPSEEK_MODEL`` names one.
DEFAULT_MODEL = "deepseek-flash"

#: Current ids, and older aliases that may still answer (rewritten by the server).
MODELS = ("deepseek-flash", "deepseek-v4-pro")
ALIASES: Mapping[str, str] = {
    "deepseek-chat": "deepseek-flash",
    "deepseek-reasoner": "deepseek-flash",
    "deepseek-v4-flash": "deepseek-flash",
}


#: Off-peak hours cost half.
OFF_PEAK_FACTOR = 0.5


@dataclass(frozen=True)
class ModelPrice:
    """Peak-hour prices in USD per 1M tokens; off-peak is ``off_peak_factor`` of these.

    A price you give yourself (for a model or server the table does not know) is usually
    the same at all hours: ``ModelPrice(0.1, 0.5, 2.0, off_peak_factor=1.0)``.
    """

    input_cache_hit: float
    input_cache_miss: float
    output: float
    off_peak_factor: float = OFF_PEAK_FACTOR


PRICES: Dict[str, ModelPrice] = {
    "deepseek-flash": ModelPrice(input_cache_hit=0.006, input_cache_miss=0.30, output=1.20),
    "deepseek-v4-pro": ModelPrice(input_cache_hit=0.044, input_cache_miss=1.32, output=3.96),
}

#: Peak hours (UTC, weekdays), as [start, end) hour pairs.
PEAK_HOURS_UTC = ((1, 4), (6, 10))


def is_peak(when: _dt.datetime) -> bool:
    """Tell whether ``when`` (aware, or naive meaning UTC) falls in DeepSeek's peak hours."""
    if when.tzinfo is not None:
        when = when.astimezone(_dt.UTC)
    if when.weekday() >= 5:
        return False
    return any(start <= when.hour < end for start, end in PEAK_HOURS_UTC)


def price_of(model: str, prices: Optional[Mapping[str, ModelPrice]] = None) -> Optional[ModelPrice]:
    """The price of ``model``: from ``prices`` (given by the user) first, else the table; None if unknown."""
    if prices:
        given = prices.get(model)
        if given is not None:
            return given
    return PRICES.get(ALIASES.get(model, model))


def cost_of(
    price: ModelPrice,
    *,
    prompt_cache_hit_tokens: int,
    prompt_cache_miss_tokens: int,
    completion_tokens: int,
    when: Optional[_dt.datetime] = None,
) -> float:
    """USD for these tokens at ``price``, at the peak or off-peak rate of ``when`` (default: now)."""
    when = when or _dt.datetime.now(_dt.UTC)
    factor = 1.0 if is_peak(when) else price.off_peak_factor
    total = (
        prompt_cache_hit_tokens * price.input_cache_hit
        + prompt_cache_miss_tokens * price.input_cache_miss
        + completion_tokens * price.output
    )
    return total * factor / 1_000_000


def estimate_cost(
    model: str,
    *,
    prompt_cache_hit_tokens: int,
    prompt_cache_miss_tokens: int,
    completion_tokens: int,
    when: Optional[_dt.datetime] = None,
    prices: Optional[Mapping[str, ModelPrice]] = None,
) -> Optional[float]:
    """Estimate a call's cost in USD, or None for a model whose price is unknown (never $0)."""
    price = price_of(model, prices)
    if price is None:
        return None
    return cost_of(
        price,
        prompt_cache_hit_tokens=prompt_cache_hit_tokens,
        prompt_cache_miss_tokens=prompt_cache_miss_tokens,
        completion_tokens=completion_tokens,
        when=when,
    )
