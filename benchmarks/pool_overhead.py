"""The pool's own cost per item over ``max_workers`` 16 ... 8,192, and memory per idle worker thread.

``python -m benchmarks.pool_overhead`` runs, for each size, a fresh process that pushes
``--n`` items through ``DeepSeekPool.as_completed`` with a zero-latency stub client
(:class:`benchmarks.scale.CountingClient`: no network), and the same stub through a
plain ``ThreadPoolExecutor.map`` of the same size (the floor). A warm-up pass first
starts every worker thread, so the timed pass measures the steady state: CPU and wall
µs per item. The window is the pool's default (``2 * max_workers``), so it grows with
the size too. Memory per idle thread is the growth of the process's resident set
(``/proc/self/statm``, current, not peak) from before the executor existed to after all
its threads had started and gone idle, divided by the threads started. Threads are
counted by name (``deepseek-pool`` workers, or the floor's own prefix) among those that
appeared during the run, so no other thread of the process is counted as the pool's. A
pool of 128 workers or more runs in a process that made the application's call,
``dp.tune_process(max_workers)``, as the README advises (its figures and PROFILE.md's were
measured so, when the pool still raised the settings by itself); the executor's process
runs with CPython's settings.

Flags: ``--sizes 16,64,...``, ``--n`` items per timed pass, ``--json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

from deepseek_pool.process import HINT_FROM_WORKERS, tune_process

SIZES = (16, 64, 256, 1024, 4096, 8192)
DEFAULT_N = 50_000
#: thread name prefixes of the two kinds' workers (DeepSeekPool names its own "deepseek-pool")
WORKER_PREFIX = {"pool": "deepseek-pool", "executor": "pool-overhead-floor"}
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    """The resident set now, in bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        return 0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _workers_started(prefix: str, before: Set[Optional[int]]) -> int:
    """Threads named ``prefix...`` that were not there before: one executor's workers."""
    return sum(1 for t in threading.enumerate() if t.ident not in before and t.name.startswith(prefix))


def measure(kind: str, workers: int, n: int) -> Dict[str, Any]:
    """One size in this process: ``kind`` is ``pool`` (DeepSeekPool) or ``executor`` (the floor)."""
    from benchmarks.scale import CountingClient
    from deepseek_pool import DeepSeekPool

    client = CountingClient()
    prompts = [f"Overhead prompt {i}" for i in range(max(n, 2 * workers))]
    gc.collect()
    threads_before, rss_before = {t.ident for t in threading.enumerate()}, _rss()
    prefix = WORKER_PREFIX[kind]
    if kind == "pool":
        pool = DeepSeekPool(client, max_workers=workers)

        def one_pass(count: int) -> int:
            return sum(result.ok for result in pool.as_completed(prompts[:count]))

        close = pool.close
    else:
        executor = cf.ThreadPoolExecutor(workers, thread_name_prefix=prefix)

        def one_pass(count: int) -> int:
            return sum(1 for _ in executor.map(client.chat, prompts[:count]))

        def close() -> None:
            executor.shutdown(wait=True)

    # Warm-up: enough items that every worker thread starts (a zero-latency stub finishes
    # items faster than threads start, so keep going until all are there or 20 passes).
    for _ in range(20):
        one_pass(2 * workers)
        if _workers_started(prefix, threads_before) >= workers:
            break
    time.sleep(0.5)  # let every worker block on the empty queue
    gc.collect()
    started = _workers_started(prefix, threads_before)
    rss_idle = _rss()
    cpu0, wall0 = _cpu(), time.perf_counter()
    ok = one_pass(n)
    cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
    close()
    return {
        "kind": kind,
        "workers": workers,
        "n": n,
        "ok": ok,
        "threads": started,
        "cpu_us_per_item": 1e6 * cpu / n,
        "wall_us_per_item": 1e6 * wall / n,
        "kib_per_idle_thread": (rss_idle - rss_before) / 1024 / max(1, started),
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_all(
    sizes: List[int], n: int, timeout: float = 600.0, env: Optional[Dict[str, str]] = None
) -> List[Dict[str, Any]]:
    """Every (size, kind) in its own process, so RSS and threads are that run's alone."""
    rows = []
    for workers in sizes:
        for kind in ("pool", "executor"):
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.pool_overhead", "--one", kind, str(workers), "--n", str(n)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                check=True,
                cwd=str(Path(__file__).resolve().parent.parent),
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def table(rows: List[Dict[str, Any]]) -> List[str]:
    by = {(r["kind"], r["workers"]): r for r in rows}
    lines = [
        "| max_workers | DeepSeekPool CPU µs/item | wall µs/item | ThreadPoolExecutor.map CPU µs/item "
        "| wall µs/item | KiB per idle thread (pool / executor) |",
        "|---|---|---|---|---|---|",
    ]
    for workers in sorted({r["workers"] for r in rows}):
        p, e = by.get(("pool", workers)), by.get(("executor", workers))
        if p is None or e is None:
            continue
        lines.append(
            f"| {workers:,} | {p['cpu_us_per_item']:.1f} | {p['wall_us_per_item']:.1f} | {e['cpu_us_per_item']:.1f} "
            f"| {e['wall_us_per_item']:.1f} | {p['kib_per_idle_thread']:.0f} / {e['kib_per_idle_thread']:.0f} |"
        )
    return lines


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="items per timed pass")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        kind, workers = args.one[0], int(args.one[1])
        if kind == "pool" and workers >= HINT_FROM_WORKERS:
            tune_process(workers)  # this process is the application; it ends with the measurement
        print(json.dumps(measure(kind, workers, args.n)))
        return
    from benchmarks.harness import child_env

    rows = run_all([int(s) for s in args.sizes.split(",")], args.n, env=child_env())
    print(json.dumps(rows) if args.json else "\n".join(table(rows)))


if __name__ == "__main__":
    main()
