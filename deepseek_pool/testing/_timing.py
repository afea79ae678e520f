"""How long the fake waits: the latency a user gives, and seconds as a header writes them."""

from __future__ import annotations

import random
from typing import Callable, Optional, Tuple, Union

__all__ = ["Latency", "format_seconds", "latency_function"]

#: Fixed latency in seconds, a ``(low, high)`` uniform range, or a function of the seeded RNG.
Latency = Union[float, Tuple[float, float], Callable[[random.Random], float]]


def latency_function(latency: Latency) -> Optional[Callable[[random.Random], float]]:
    if callable(latency):
        return latency
    if isinstance(latency, tuple):
        low, high = (float(x) for x in latency)
        if not 0.0 <= low <= high:
            raise ValueError(f"latency range must satisfy 0 <= low <= high, got {latency!r}")
        return lambda rng: rng.uniform(low, high)
    seconds = float(latency)
    if seconds < 0.0:
        raise ValueError(f"latency must be >= 0, got {latency!r}")
    return (lambda rng: seconds) if seconds else None


def format_seconds(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)
