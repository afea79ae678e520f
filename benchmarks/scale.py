"""The scale cell: a lazy input of N requests through ``DeepSeekPool``, peak RSS reported.

The client is a counting stub (a ``DeepSeekClient`` whose ``chat`` returns a ready
answer without touching the network), so the run measures the pool itself: its
window, futures, results and limiter, not a server. If memory grew with the input, a
1,000,000-request run would show it against a 10,000-request run.

Run one size: ``python -m benchmarks.scale --n 1000000 --workers 64`` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from deepseek_pool import ChatCompletion, DeepSeekClient, DeepSeekPool

_RAW: Dict[str, Any] = {
    "id": "stub",
    "object": "chat.completion",
    "model": "deepseek-flash",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
}


class CountingClient(DeepSeekClient):
    """A client that answers every chat at once and counts the calls."""

    def __init__(self) -> None:
        super().__init__("sk-stub", base_url="http://127.0.0.1:9")  # never connected to
        self.calls = 0
        self._count_lock = threading.Lock()

    def chat(self, messages: Any, **params: Any) -> ChatCompletion:
        with self._count_lock:
            self.calls += 1
        return ChatCompletion(_RAW)


def run(n: int, workers: int) -> Dict[str, Any]:
    def requests() -> Iterator[str]:
        for i in range(n):
            yield f"Scale prompt {i}"

    client = CountingClient()
    ok = 0
    start = time.perf_counter()
    with DeepSeekPool(client, max_workers=workers) as pool:
        for result in pool.as_completed(requests()):
            ok += result.ok
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "n": n,
        "workers": workers,
        "ok": ok,
        "calls": client.calls,
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "maxrss_mb": usage.ru_maxrss / 1024,
    }


def run_sizes(
    sizes: Sequence[int],
    workers: int,
    timeout: float,
    env: Optional[Dict[str, str]] = None,
    cwd: Optional[Path] = None,
) -> List[Dict[str, Any]]:
    """Each size in its own process, so each peak RSS is that run's alone."""
    results = []
    for n in sizes:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.scale", "--n", str(n), "--workers", str(workers)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=True,
            cwd=str(cwd or Path(__file__).resolve().parent.parent),
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="one scale run (see the module docstring)")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.n, args.workers)))


if __name__ == "__main__":
    main()
