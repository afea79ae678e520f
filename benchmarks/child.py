"""Run one contender once, in this process, and report what it cost.

The harness starts ``python -m benchmarks.child '<spec json>'``. The child imports
the contender and makes one warm-up call (imports and lazy initialisation are not
per-request costs), prints ``READY``, waits for ``GO`` on stdin (the harness resets
the server's counters in between), runs the timed batch, checks every answer, and
prints ``RESULT <json>``. CPU is this process's user+sys time over the timed batch
(all threads included), and apart from it the consuming thread's own (the one that runs
the contender's loop: for a thread pool the thread that submits and collects, for an
event loop everything); peak RSS is the process's high-water mark.
"""

from __future__ import annotations

import gc
import json
import logging
import resource
import statistics
import sys
import threading
import time
from typing import Any, Dict, List

from benchmarks import protocol
from benchmarks.contenders import CONTENDERS, Spec


class _PoolFullCounter(logging.Handler):
    """Counts urllib3's "Connection pool is full, discarding connection" warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "pool is full" in record.getMessage():
            self.count += 1


def _usage() -> List[float]:
    """user s, system s, voluntary and involuntary context switches (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return [usage.ru_utime, usage.ru_stime, usage.ru_nvcsw, usage.ru_nivcsw]


def _ms(values: List[float]) -> Dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "mean": 1000 * statistics.fmean(ordered),
        "median": 1000 * ordered[len(ordered) // 2],
        "p95": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
    }


class _PeakThreads:
    """The most threads alive at once during the run, sampled every 50 ms (this sampler not counted)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, threading.active_count() - 1)

    def __enter__(self) -> _PeakThreads:
        self.peak = threading.active_count()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def main(argv: List[str]) -> int:
    raw: Dict[str, Any] = json.loads(argv[0])
    contender = CONTENDERS[raw["contender"]]
    spec = Spec(
        raw["base_url"], int(raw["n"]), int(raw["concurrency"]), bool(raw.get("stream", False)), raw.get("ca_file")
    )
    counter = _PoolFullCounter()
    logging.getLogger("urllib3.connectionpool").addHandler(counter)
    run = contender.load()

    warm = run(Spec(spec.base_url, 1, 1, spec.stream, spec.ca_file))
    if warm.contents[0] != protocol.answer_for(0):
        print(f"warm-up call failed: {warm.errors[0] or warm.contents[0]!r}", file=sys.stderr, flush=True)
    gc.collect()
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 2

    before = _usage()
    consumer_before = time.thread_time()
    t0 = time.perf_counter()
    with _PeakThreads() as threads:
        outcome = run(spec)
    wall = time.perf_counter() - t0
    consumer = time.thread_time() - consumer_before
    user, system, voluntary, involuntary = (b - a for a, b in zip(before, _usage()))

    ok = wrong = 0
    errors: Dict[str, int] = {}
    for i in range(spec.n):
        error = outcome.errors[i]
        if error is not None:
            errors[error] = errors.get(error, 0) + 1
        elif outcome.contents[i] == protocol.answer_for(i):
            ok += 1
        else:
            wrong += 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "contender": contender.name,
        "n": spec.n,
        "concurrency": spec.concurrency,
        "stream": spec.stream,
        "wall": wall,
        "cpu": user + system,
        "cpu_user": user,
        "cpu_sys": system,
        "cpu_consumer": consumer,
        "context_switches": int(voluntary + involuntary),
        "ok": ok,
        "wrong": wrong,
        "errors": errors,
        "maxrss_kb": usage.ru_maxrss,
        "peak_threads": threads.peak,
        "pool_full_warnings": counter.count,
        "ttfc_ms": _ms(outcome.ttfc),
        "chunks": outcome.chunks,
        "deepseek_pool": getattr(sys.modules.get("deepseek_pool"), "__file__", None),
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
