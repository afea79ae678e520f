"""What a Limiter's storage costs per call: microseconds per ``acquire`` + ``release``.

For each storage (``memory://``, ``sqlite:////<tmp>/budget.db``) and each thread count
(1 and 64), ``ops`` acquire/release pairs are made on one ``Limiter`` with a ceiling
that is never reached (``max_in_flight`` above the thread count), so every pair runs
the whole path of the cap gate without waiting for a slot. Reported per pair: wall
microseconds (at 64 threads, the wall time over every thread's pairs: the throughput
a process gets from that storage) and CPU microseconds of the process.

``python -m benchmarks.storage_cost [--ops 20000] [--threads 1,64] [--json]``
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

STORAGES = ("memory", "sqlite")
DEFAULT_OPS = {"memory": 200_000, "sqlite": 20_000}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(uri: str, threads: int, ops: int) -> Dict[str, Any]:
    """``ops`` acquire+release pairs over ``threads`` threads on one Limiter of ``uri``."""
    from deepseek_pool import Limiter

    limiter = Limiter(max_in_flight=max(1000, 2 * threads), storage=uri, name="storage-cost")
    try:
        per_thread = max(1, ops // threads)
        for _ in range(min(100, per_thread)):  # warm-up: the schema, the first lease, the renewer
            limiter.release(limiter.acquire())
        barrier = threading.Barrier(threads + 1, timeout=30)

        def work() -> None:
            acquire, release = limiter.acquire, limiter.release
            barrier.wait()
            for _ in range(per_thread):
                release(acquire())

        workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
        for worker in workers:
            worker.start()
        barrier.wait()
        cpu0, t0 = _cpu(), time.perf_counter()
        for worker in workers:
            worker.join(timeout=600)
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
        done = per_thread * threads
        if any(worker.is_alive() for worker in workers):
            raise TimeoutError(f"{uri} at {threads} threads did not finish within 600 s")
        return {
            "storage": uri.split("://", 1)[0] + "://",
            "threads": threads,
            "ops": done,
            "wall_us": 1e6 * wall / done,
            "cpu_us": 1e6 * cpu / done,
            "in_flight_after": limiter.stats.in_flight,
        }
    finally:
        limiter.close()


def run(ops: Optional[Dict[str, int]] = None, threads: Sequence[int] = (1, 64)) -> List[Dict[str, Any]]:
    """Every storage at every thread count; a fresh sqlite file for each measurement."""
    ops = {**DEFAULT_OPS, **(ops or {})}
    rows = []
    for storage in STORAGES:
        for count in threads:
            with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
                uri = "memory://" if storage == "memory" else "sqlite:///" + str(Path(tmp).resolve() / "budget.db")
                rows.append(measure(uri, count, ops[storage]))
    return rows


def table(rows: Sequence[Dict[str, Any]]) -> List[str]:
    lines = [
        "| storage | threads | acquire + release, µs wall | µs CPU | pairs |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| `{row['storage']}` | {row['threads']} | {row['wall_us']:.1f} | {row['cpu_us']:.1f} | {row['ops']:,} |"
        )
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.storage_cost", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ops", type=int, help="pairs per measurement (default 200,000 memory, 20,000 sqlite)")
    parser.add_argument("--threads", default="1,64", help="comma-separated thread counts")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (the benchmark runner reads it)")
    args = parser.parse_args(argv)
    ops = {name: args.ops for name in STORAGES} if args.ops else None
    rows = run(ops, [int(t) for t in args.threads.split(",")])
    print(json.dumps(rows) if args.json else "\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
