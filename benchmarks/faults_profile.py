"""Where deepseek_pool's time goes in the faults cell: limiter waits, retry waits, refusals.

Runs the faults cell (N=2000, C=64, L=50 ms, 10 % 503, 5 % 429, 2 % resets) in this
process against the load server, for the urllib3 floor and for ``DeepSeekPool`` with
its defaults and with one policy changed at a time, and sums per run the seconds
threads spent waiting in ``Limiter.acquire`` (new starts held by cool-downs) and in
``Limiter.wait_before_retry`` (the backoff before a retry, and any cool-down hold),
plus cool-downs and refused retries. Thread-seconds are summed over all threads: with
C threads, ``x`` thread-seconds of waiting cost about ``x / C`` seconds of wall time.

``python -m benchmarks.faults_profile [--n 2000] [--rounds 1]``
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any, Dict, List, Optional

from benchmarks import protocol
from benchmarks.contenders import Spec, urllib3_threads
from benchmarks.harness import FAULTS, LoadServer


def _pool_run(base_url: str, n: int, concurrency: int, **options: Any) -> Dict[str, Any]:
    from deepseek_pool import DeepSeekClient, DeepSeekPool, DeepSeekRetry

    backoff = options.pop("backoff_factor", None)
    retry = DeepSeekRetry() if backoff is None else DeepSeekRetry(backoff_factor=backoff)
    client = DeepSeekClient(protocol.API_KEY, base_url=base_url, model=protocol.MODEL, timeout=60.0, max_retries=retry)
    waits = {"retry_wait": 0.0, "retry_waits": 0}
    lock = threading.Lock()
    ok = failed = 0
    kinds: Dict[str, int] = {}
    with client, DeepSeekPool(client, max_workers=concurrency, **options) as pool:
        limiter = pool.limiter
        inner = limiter.wait_before_retry

        def timed(delay: float, **kw: Any) -> None:
            t0 = time.monotonic()
            try:
                inner(delay, **kw)
            finally:
                with lock:
                    waits["retry_wait"] += time.monotonic() - t0
                    waits["retry_waits"] += 1

        limiter.wait_before_retry = timed  # type: ignore[method-assign]
        before = limiter.stats
        t0 = time.perf_counter()
        for result in pool.as_completed(protocol.prompt_for(i) for i in range(n)):
            if result.ok:
                ok += 1
            else:
                failed += 1
                kind = type(result.error).__name__
                kinds[kind] = kinds.get(kind, 0) + 1
        wall = time.perf_counter() - t0
        stats = limiter.stats
    return {
        "wall": wall,
        "ok": ok,
        "failed": kinds,
        "acquire_wait": stats.wait_seconds - before.wait_seconds,
        "acquires_held": stats.throttled - before.throttled,
        "cool_downs": stats.cool_downs - before.cool_downs,
        "retries": stats.retries - before.retries,
        "retries_refused": stats.retries_refused - before.retries_refused,
        **waits,
    }


VARIANTS: Dict[str, Dict[str, Any]] = {
    "defaults": {},
    "cool_down=False": {"cool_down": False},
    "retry_budget=None": {"retry_budget": None},
    "backoff_factor=0.25": {"backoff_factor": 0.25},
    "cool_down=False, backoff 0.25": {"cool_down": False, "backoff_factor": 0.25},
    "backoff_factor=0.05": {"backoff_factor": 0.05},
    "cool_down=False, backoff 0.05": {"cool_down": False, "backoff_factor": 0.05},
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults_profile", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    config = {"latency": 0.05, "faults": FAULTS}
    print(
        "| run | wall s | x floor | ok | failed | thread-s held in acquire (starts) | retry waits, thread-s (count) "
        "| cool-downs | retries | refused |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with LoadServer() as server:
        for rnd in range(args.rounds):
            server.reset({**config, "seed": 1000 + rnd})
            t0 = time.perf_counter()
            floor = urllib3_threads.run(Spec(server.base_url, args.n, args.concurrency))
            floor_wall = time.perf_counter() - t0
            floor_ok = sum(1 for i, c in enumerate(floor.contents) if c == protocol.answer_for(i))
            print(
                f"| urllib3 floor | {floor_wall:.2f} | 1.00 | {floor_ok} | {args.n - floor_ok} | | | | | |", flush=True
            )
            for label, options in VARIANTS.items():
                server.reset({**config, "seed": 1000 + rnd})
                r = _pool_run(server.base_url, args.n, args.concurrency, **options)
                failed = ", ".join(f"{k} {v}" for k, v in sorted(r["failed"].items())) or "0"
                print(
                    f"| {label} | {r['wall']:.2f} | {r['wall'] / floor_wall:.2f} | {r['ok']} | {failed} "
                    f"| {r['acquire_wait']:.1f} ({r['acquires_held']}) | {r['retry_wait']:.1f} ({r['retry_waits']}) "
                    f"| {r['cool_downs']} | {r['retries']} | {r['retries_refused']} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
