"""The cost cell: what warming, off-peak hours and the response cache take off a batch's bill.

``python -m benchmarks.run --cells cost`` (or ``python -m benchmarks.cost``) runs
``--items`` requests sharing a system prompt of about ``--prefix-tokens`` tokens against one
FakeDeepSeek whose prompt cache follows DeepSeek V4's rules, all started at once (one
worker per item), each row under its own ``user_id`` so no row inherits another's cache
(the batch itself is :mod:`benchmarks.warming`'s):

- **cold**: no warming, at the peak rate: the billed prompt cost of the batch as it is;
- **warmed**: ``warm_prefix=True``: the billed prompt cost (goal: at least 90 % lower than
  cold) and the wall time warming adds (goal: under 10 s);
- **warmed, off-peak only**: ``off_peak_only`` on a test clock that starts the batch in a
  peak window (the pool holds it until the window ends, at once on that clock) and a spend
  cap on the same clock: the rate is the one the cap settled the calls at;
- **rerun, response cache on**: the warmed batch run again on a pool with ``cache=``: the
  requests it sent and what it cost (goal: none, $0).

Prompt cost is priced at ``deepseek-flash``'s price from the tokens the fake reported hit
and missed, at the rate the row ran at.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import deepseek_pool as dp
from benchmarks.warming import FLASH, dollars, requests
from deepseek_pool.money.offpeak import JumpingClock, OffPeakOnly
from deepseek_pool.pool.warming import WarmPrefix
from deepseek_pool.testing import FakeDeepSeek

#: A Monday at the start of the 06:00-10:00 UTC peak window: the off-peak row waits it out.
PEAK_START = dt.datetime(2026, 12, 7, 6, 0, tzinfo=dt.UTC)


def _batch(base_url: str, args: argparse.Namespace, user_id: str, **pool_options: Any) -> Dict[str, Any]:
    """One batch through a fresh client and pool; its tokens, wall time and what the pool saw."""
    client = dp.DeepSeekClient("sk-bench", base_url=base_url)
    started = time.monotonic()
    try:
        with dp.DeepSeekPool(client, max_workers=args.workers, **pool_options) as pool:
            results = list(pool.as_completed(requests(args.items, args.prefix_tokens, user_id)))
            usage = pool.stats.usage
            spent = pool.spend.spent if pool.spend is not None else None
    finally:
        client.close()
    failed = sum(not r.ok for r in results)
    if failed:
        raise SystemExit(f"{failed} calls of the {user_id} batch failed")
    return {
        "hit": usage.prompt_cache_hit_tokens,
        "miss": usage.prompt_cache_miss_tokens,
        "completion": usage.completion_tokens,
        "seconds": time.monotonic() - started,
        "spent": spent,
        "cached": sum(bool(getattr(r, "cached", False)) for r in results),
    }


def _row(name: str, batch: Dict[str, Any], rate: float, **extra: Any) -> Dict[str, Any]:
    hit, miss = batch["hit"], batch["miss"]
    return {
        "row": name,
        "hit_tokens": hit,
        "miss_tokens": miss,
        "hit_share": hit / (hit + miss) if hit + miss else None,
        "prompt_usd": dollars(hit, miss) * rate,
        "rate": rate,
        "wall_s": round(batch["seconds"], 2),
        **extra,
    }


def run_cell(args: argparse.Namespace, log: Any = None) -> List[Dict[str, Any]]:
    """The rows of the cost cell (see the module docstring)."""
    say = log or (lambda _line: None)
    warm = WarmPrefix(wait=args.warm_wait)
    rows: List[Dict[str, Any]] = []
    tuning = dp.tune_process(args.workers)  # an application's call: thousands of threads on few cores
    try:
        with FakeDeepSeek(
            latency=args.latency, cache_build_delay=args.build_delay, cache_unit_tokens=256, max_received=10
        ) as fake:
            before = fake.stats.requests
            rows.append(_row("cold", _batch(fake.base_url, args, "cold"), 1.0, requests=fake.stats.requests - before))
            say(f"cost: cold done, {rows[-1]['prompt_usd']:.4f} USD of prompt")
            before = fake.stats.requests
            warmed = _batch(fake.base_url, args, "warmed", warm_prefix=warm)
            rows.append(_row("warmed", warmed, 1.0, requests=fake.stats.requests - before))
            say(f"cost: warmed done, {rows[-1]['prompt_usd']:.4f} USD of prompt")

            # Off-peak only, on a clock that starts in a peak window; the spend cap reads the same
            # clock, so the rate is the one it settled at: its spend over the same usage at the peak rate.
            clock = JumpingClock(PEAK_START)
            before = fake.stats.requests
            gate = OffPeakOnly(clock=clock)
            off = _batch(fake.base_url, args, "off-peak", warm_prefix=warm, max_cost=1000.0, off_peak_only=gate)
            at_peak = dollars(off["hit"], off["miss"]) + off["completion"] * FLASH.output / 1e6
            rate = off["spent"] / at_peak
            sent = fake.stats.requests - before
            rows.append(_row("warmed, off-peak only", off, rate, requests=sent, held_until=f"{clock.now():%H:%M} UTC"))
            say(f"cost: off-peak done, billed at {rate:.0%} of the peak rate")

            # The opt-in response cache: a finished batch run again sends nothing and costs $0.
            with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
                uri = "sqlite:///" + str(Path(tmp).resolve() / "responses.db")
                _batch(fake.base_url, args, "cached", warm_prefix=warm, cache=uri)
                before = fake.stats.requests
                again = _batch(fake.base_url, args, "cached", warm_prefix=warm, cache=uri, max_cost=1000.0)
                row = _row("rerun, response cache on", again, 1.0, requests=fake.stats.requests - before)
                row.update(spent_usd=again["spent"], cached=again["cached"])
                rows.append(row)
            say(f"cost: rerun sent {rows[-1]['requests']} requests, spent {rows[-1]['spent_usd']} USD")
    finally:
        tuning.restore()
    return rows


def table(rows: Sequence[Dict[str, Any]], meta: Optional[Dict[str, Any]] = None) -> List[str]:
    """The cost cell as a markdown table, with the goals checked."""
    lines = [
        "| batch | requests sent | prompt tokens hit | billed prompt cost | vs cold | wall time |",
        "|---|---|---|---|---|---|",
    ]
    cold = next((r for r in rows if r["row"] == "cold"), None)
    for row in rows:
        share = "-" if row["hit_share"] is None else f"{row['hit_share']:.1%}"
        versus = "" if cold is None or not cold["prompt_usd"] else f"{row['prompt_usd'] / cold['prompt_usd'] - 1:+.1%}"
        cost = f"${row['prompt_usd']:.4f}"
        if row.get("rate", 1.0) != 1.0:
            cost += f" (billed at {row['rate']:.0%} of the peak rate, held until {row.get('held_until')})"
        if "spent_usd" in row:
            cost = f"${row['spent_usd']:.4f} counted by the spend cap, {row['cached']} answers from the cache"
        lines.append(f"| {row['row']} | {row['requests']:,} | {share} | {cost} | {versus} | {row['wall_s']:.1f} s |")
    by = {row["row"]: row for row in rows}
    if "cold" in by and "warmed" in by:
        lower = 1 - by["warmed"]["prompt_usd"] / by["cold"]["prompt_usd"]
        added = by["warmed"]["wall_s"] - by["cold"]["wall_s"]
        lines += [
            "",
            f"Warming: prompt cost {lower:.1%} lower (goal: at least 90 %), "
            f"wall time {added:+.1f} s (goal: under 10 s).",
        ]
    if meta:
        lines += ["", meta.get("setup", "")]
    return lines


def parser() -> argparse.ArgumentParser:
    parsed = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__.split("\n", 1)[0])
    parsed.add_argument("--items", type=int, default=2000)
    parsed.add_argument("--prefix-tokens", type=int, default=3000)
    parsed.add_argument("--workers", type=int, help="threads (default: one per item, all started at once)")
    parsed.add_argument("--latency", type=float, default=1.0, help="seconds per answer (default 1)")
    parsed.add_argument("--build-delay", type=float, default=2.0, help="seconds to build a cache unit (default 2)")
    parsed.add_argument("--warm-wait", type=float, default=WarmPrefix().wait, help="warming's wait (default 3)")
    parsed.add_argument("--json", action="store_true", help="print the rows as JSON (the benchmark runner reads it)")
    return parsed


def setup(args: argparse.Namespace) -> str:
    return (
        f"{args.items:,} items sharing a ~{args.prefix_tokens:,}-token system prompt, {args.workers:,} workers, "
        f"{args.latency} s per answer, cache units built in {args.build_delay} s, FakeDeepSeek's V4 cache model; "
        "prompt cost at deepseek-flash's price."
    )


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    args.workers = args.workers or args.items
    rows = run_cell(args, log=None if args.json else print)
    if args.json:
        print(json.dumps({"rows": rows, "setup": setup(args)}))
    else:
        print("\n".join(table(rows, {"setup": setup(args)})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
