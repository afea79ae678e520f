"""The value types of the command's options: each rejects a bad value with one clear sentence."""

from __future__ import annotations

import argparse
import math
from typing import Callable, Tuple

from ..models import ModelPrice


def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def latency_range(text: str) -> Tuple[float, float]:
    low, sep, high = text.partition("-")
    try:
        pair = (float(low), float(high if sep else low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds like 0.2-0.5 or 0.3, got {text!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in pair) or pair[0] > pair[1]:
        raise argparse.ArgumentTypeError(f"expected seconds like 0.2-0.5 (low <= high, both >= 0), got {text!r}")
    return pair


def dollars(text: str) -> float:
    try:
        value = float(text.strip().lstrip("$"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an amount of USD > 0 like 5.00, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected an amount of USD > 0 like 5.00, got {text!r}")
    return value


def model_id(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a model id, got {text!r}")
    return text.strip()


def price(text: str) -> Tuple[str, ModelPrice]:
    model, sep, figures = text.partition("=")
    parts = figures.split(",")
    message = f"expected MODEL=HIT,MISS,OUTPUT in USD per 1M tokens (e.g. my-model=0.01,0.3,1.2), got {text!r}"
    if not sep or not model.strip() or len(parts) != 3:
        raise argparse.ArgumentTypeError(message)
    try:
        hit, miss, output = (float(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not all(math.isfinite(v) and v >= 0 for v in (hit, miss, output)):
        raise argparse.ArgumentTypeError(message)
    return model.strip(), ModelPrice(hit, miss, output, off_peak_factor=1.0)


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def add_cache_option(run: argparse.ArgumentParser) -> None:
    """``run --cache URI`` (and ``--clear-cache``): the response cache of a run."""
    run.add_argument(
        "--cache",
        metavar="URI",
        help="serve requests answered before (the very same body, to the same URL) from a response cache, "
        "not sent and at $0, and keep each complete answer there: sqlite:////var/tmp/ds-cache.db (this "
        "machine), redis://host:6379/0 (many); add ?ttl=SECONDS to forget answers older than that",
    )
    run.add_argument(
        "--clear-cache",
        action="store_true",
        help="empty the --cache store before the run (every answer it holds, other runs' too)",
    )
