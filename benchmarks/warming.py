"""What warming the prompt cache saves: a batch sharing a long prefix, cold and warmed, on FakeDeepSeek.

``python -m benchmarks.warming`` runs ``--items`` requests that share a system prompt of
about ``--prefix-tokens`` tokens (each with its own short question) through a
``DeepSeekPool`` twice against one FakeDeepSeek whose prompt cache follows DeepSeek V4's
rules (:mod:`deepseek_pool.testing._cache`): once cold, once with ``warm_prefix``, each run
under its own ``user_id`` so neither inherits the other's cache. It prints the prompt
tokens that hit and missed, the prompt cost at the ``deepseek-flash`` peak price, and the
wall times. The issue's goal: prompt cost at least 90 % lower, warming adding under 10 s.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Dict, Iterator, Tuple

import deepseek_pool as dp
from deepseek_pool.models import PRICES
from deepseek_pool.pool.warming import WarmPrefix
from deepseek_pool.testing import FakeDeepSeek

FLASH = PRICES["deepseek-flash"]


def requests(items: int, prefix_tokens: int, user_id: str) -> Iterator[Dict[str, Any]]:
    system = "You review pull requests against the house rules that follow. " * (prefix_tokens * 4 // 64)
    for n in range(items):
        question = f"Review change {n}: does it follow the rules?"
        yield {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
               "max_tokens": 20, "user_id": user_id}  # fmt: skip


def run(base_url: str, args: argparse.Namespace, warm: bool) -> Tuple[int, int, float]:
    """(hit tokens, miss tokens, seconds) of one batch, warm-up calls included."""
    client = dp.DeepSeekClient("sk-bench", base_url=base_url)
    settings: Any = WarmPrefix(wait=args.warm_wait) if warm else False
    started = time.monotonic()
    with dp.DeepSeekPool(client, max_workers=args.workers, warm_prefix=settings) as pool:
        failed = sum(not r.ok for r in pool.as_completed(requests(args.items, args.prefix_tokens, f"run-{warm}")))
        usage = pool.stats.usage
    client.close()
    if failed:
        raise SystemExit(f"{failed} calls failed")
    return usage.prompt_cache_hit_tokens, usage.prompt_cache_miss_tokens, time.monotonic() - started


def dollars(hit: int, miss: int) -> float:
    return (hit * FLASH.input_cache_hit + miss * FLASH.input_cache_miss) / 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--prefix-tokens", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per answer (default 1)")
    parser.add_argument("--build-delay", type=float, default=2.0, help="seconds to build a cache unit (default 2)")
    parser.add_argument("--warm-wait", type=float, default=WarmPrefix().wait, help="warming's wait (default 3)")
    parser.add_argument("--unit-tokens", type=int, default=256, help="cache granularity (default 256, V4's probe)")
    args = parser.parse_args()
    tuning = dp.tune_process(args.workers)  # an application's call: thousands of threads on few cores
    with FakeDeepSeek(
        latency=args.latency, cache_build_delay=args.build_delay, cache_unit_tokens=args.unit_tokens, max_received=10
    ) as fake:
        rows = {"cold": run(fake.base_url, args, False), "warmed": run(fake.base_url, args, True)}
    tuning.restore()
    print(
        f"{args.items} items sharing a ~{args.prefix_tokens}-token system prompt, {args.workers} workers, "
        f"{args.latency}s per answer, units built in {args.build_delay}s, hits in {args.unit_tokens}-token units"
    )
    for name, (hit, miss, seconds) in rows.items():
        share, cost = hit / (hit + miss), dollars(hit, miss)
        print(f"{name:>7}: {hit:>10,} hit {miss:>10,} missed ({share:.1%} hit)  ${cost:.4f}  {seconds:.1f}s")
    cold, warmed = (dollars(h, m) for h, m, _ in rows.values())
    all_missed = dollars(0, sum(rows["cold"][:2]))
    print(f"prompt cost with warming: {1 - warmed / cold:.1%} lower than cold, {1 - warmed / all_missed:.1%} lower "
          f"than if nothing hit; wall time {rows['warmed'][2] - rows['cold'][2]:+.1f}s")  # fmt: skip


if __name__ == "__main__":
    main()
