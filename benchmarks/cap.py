"""The cap cell: several processes against one account cap, sharing a budget or not.

The load server answers 429 "concurrency limit of <cap> based on your remaining
balance" at once to any request that arrives while ``cap`` are being answered, as
DeepSeek does (and ``FakeDeepSeek(max_concurrency=N)``). ``processes`` processes of
``workers`` threads each (one ``DeepSeekPool`` each) share ``n`` chat calls, by default
unevenly (weights 4:3:2:1, as the workers of a web app rarely get equal load). Arms:

* ``shared``: each process its own ``Limiter(max_in_flight=ceiling,
  storage="sqlite:////<tmp>/budget.db", name=...)``, all on one file: one budget;
  the ceiling is above the real cap, which the budget learns from the first 429s;
* ``split``: the static split users make by hand, ``Limiter(max_in_flight=cap //
  processes)`` in memory;
* ``alone``: no sharing, each process a memory limiter without a ceiling that learns
  the cap from 429s by itself.

Per arm: the share of requests answered 429, calls completed, and the makespan (from
the common start, which every process waits for, to the last process's last answer)
against the ideal ``n * latency / cap``. Every wait is bounded; every child is killed
at the end.

A cell with ``mixed`` (a :class:`~benchmarks.cap_shares.SharesCell`) runs the shares part
too (:mod:`benchmarks.cap_shares`: an interactive pool beside an uneven batch with a quiet
spell, with and without guaranteed shares).

Run alone: ``python -m benchmarks.cap [--n 4000] [--arms shared,split,alone,interactive,mixed,mixed-unshared]``.
A child is ``python -m benchmarks.cap --child '<spec json>'`` (the harness starts them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks import cap_shares, protocol
from benchmarks.cap_shares import SharesCell

ARMS = ("shared", "split", "alone")
ARM_LABELS = {
    "shared": "one sqlite:// budget, shared",
    "split": "static split, cap // processes each (memory://)",
    "alone": "no sharing: each process learns the cap alone (memory://)",
}
#: Seconds between the GO line and the common start, so every process is waiting by then.
START_MARGIN = 0.5


@dataclass(frozen=True)
class CapCell:
    """One configuration of the cap cell."""

    n: int = 4000
    cap: int = 100
    processes: int = 4
    workers: int = 64
    latency: float = 0.2
    jitter: float = 0.25
    #: the ``max_in_flight`` of the shared arm: above the real cap (the account's cap fell with its balance)
    ceiling: int = 200
    weights: Tuple[int, ...] = (4, 3, 2, 1)
    #: the shares part, an interactive pool beside a batch (None: not run)
    mixed: Optional[SharesCell] = None

    @property
    def ideal(self) -> float:
        """Seconds with every one of the ``cap`` slots busy all the time."""
        return self.n * self.latency / self.cap

    def shares(self) -> List[int]:
        """Calls per process, in proportion to ``weights`` (cycled to ``processes``), summing to ``n``."""
        weights = [self.weights[i % len(self.weights)] for i in range(self.processes)]
        total = sum(weights)
        counts = [self.n * w // total for w in weights]
        counts[0] += self.n - sum(counts)
        return counts

    def server_config(self, seed: int) -> Dict[str, Any]:
        return {"latency": self.latency, "jitter": self.jitter, "max_concurrency": self.cap, "seed": seed}


FULL_CAP = CapCell(mixed=SharesCell())
QUICK_CAP = CapCell(n=1600, latency=0.1, mixed=SharesCell(phase=800, quiet=2.0))


def _limiter(spec: Dict[str, Any]) -> Any:
    import deepseek_pool as dp

    arm = spec["arm"]
    if arm == "shared":
        return dp.Limiter(max_in_flight=spec["ceiling"], storage=spec["storage"], name="cap-bench")
    if arm == "split":
        return dp.Limiter(max_in_flight=max(1, spec["cap"] // spec["processes"]))
    if arm == "alone":
        return dp.Limiter()
    raise ValueError(f"unknown arm {arm!r}")


def child(spec: Dict[str, Any]) -> int:
    """One process of an arm: warm up, wait for the common start, run its share, report."""
    from deepseek_pool import DeepSeekClient, DeepSeekPool

    limiter = _limiter(spec)
    client = DeepSeekClient(protocol.API_KEY, base_url=spec["base_url"], model=protocol.MODEL, timeout=60.0)
    offset, n = int(spec["offset"]), int(spec["n"])
    with client, DeepSeekPool(client, max_workers=int(spec["workers"]), limiter=limiter) as pool:
        warm = list(pool.as_completed([protocol.prompt_for(offset)]))
        if not warm[0].ok:
            print(f"warm-up call failed: {warm[0].error!r}", file=sys.stderr, flush=True)
        print("READY", flush=True)
        line = sys.stdin.readline().split()
        if len(line) != 2 or line[0] != "GO":
            return 2
        start = float(line[1])
        pause = start - time.time()
        if pause > 0:
            time.sleep(min(pause, 10.0))
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        ok = wrong = 0
        errors: Dict[str, int] = {}
        for result in pool.as_completed(protocol.prompt_for(offset + i) for i in range(n)):
            if not result.ok:
                kind = type(result.error).__name__
                errors[kind] = errors.get(kind, 0) + 1
            elif result.completion is not None and result.completion.content == protocol.answer_for(
                offset + result.index
            ):
                ok += 1
            else:
                wrong += 1
        end = time.time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stats = limiter.stats
    print(
        "RESULT "
        + json.dumps(
            {
                "n": n,
                "ok": ok,
                "wrong": wrong,
                "errors": errors,
                "start": start,
                "end": end,
                "cpu": usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime,
                "cap": stats.cap,
                "throttled": stats.throttled,
                "wait_seconds": stats.wait_seconds,
                "retries_refused": stats.retries_refused,
            }
        ),
        flush=True,
    )
    return 0


def spawn_child(flag: str, spec: Dict[str, Any], errors: Any, cwd: Path, env: Dict[str, str]) -> Tuple[Any, Any]:
    """Start one child of the cap cell (``--child`` or ``--shares-child``); it and its line reader."""
    from benchmarks.harness import _Lines  # the harness imports this module: import it late

    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.cap", flag, json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        cwd=str(cwd),
        env=env,
    )
    assert process.stdout is not None
    return process, _Lines(process.stdout)


def run_arm(
    server: Any,
    cell: CapCell,
    arm: str,
    rep: int,
    *,
    timeout: float,
    env: Dict[str, str],
    cwd: Path,
) -> Dict[str, Any]:
    """One arm once: ``cell.processes`` children started together; never raises for their failure."""
    server.reset({"latency": 0.0})  # warm-up calls: plain, fast
    processes: List[subprocess.Popen[str]] = []
    readers: List[Any] = []
    row: Dict[str, Any] = {"arm": arm, "rep": rep, "n": cell.n, "ideal": cell.ideal}
    with tempfile.TemporaryDirectory(prefix="bench-cap-") as tmp:
        storage = "sqlite:///" + str(Path(tmp).resolve() / "budget.db")
        errors_file = open(Path(tmp) / "stderr.txt", "w+")  # noqa: SIM115  # closed below, after the children
        try:
            offset = 0
            for share in cell.shares():
                spec = {
                    "arm": arm,
                    "base_url": server.base_url,
                    "n": share,
                    "offset": offset,
                    "workers": cell.workers,
                    "cap": cell.cap,
                    "processes": cell.processes,
                    "ceiling": cell.ceiling,
                    "storage": storage,
                }
                offset += share
                process, lines = spawn_child("--child", spec, errors_file, cwd, env)
                processes.append(process)
                readers.append(lines)
            for lines in readers:
                lines.next(timeout, "READY")
            server.reset(cell.server_config(seed=2000 + rep))
            start = time.time() + START_MARGIN
            for process in processes:
                assert process.stdin is not None
                process.stdin.write(f"GO {start!r}\n")
                process.stdin.flush()
            results = [json.loads(lines.next(timeout, "RESULT ")[len("RESULT ") :]) for lines in readers]
            stats = server.stats()
            for process in processes:
                process.wait(timeout=30)
        except (TimeoutError, EOFError, OSError, ValueError, subprocess.TimeoutExpired) as err:
            errors_file.seek(0)
            detail = errors_file.read().strip().splitlines()[-3:]
            row["error"] = f"{type(err).__name__}: {err}: {' | '.join(detail)}"
            return row
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)
                if process.stdin is not None:
                    with contextlib.suppress(OSError):  # the child is gone: nothing to flush to
                        process.stdin.close()
            for lines in readers:
                lines.close()
            errors_file.close()
    errors: Dict[str, int] = {}
    for result in results:
        for kind, count in result["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    makespan = max(r["end"] for r in results) - start
    requests = int(stats["requests"])
    rejected = int(stats["faults"]["cap"])
    row.update(
        ok=sum(r["ok"] for r in results),
        wrong=sum(r["wrong"] for r in results),
        errors=errors,
        requests=requests,
        rejected=rejected,
        share_429=rejected / requests if requests else math.nan,
        makespan=makespan,
        efficiency=cell.ideal / makespan if makespan > 0 else math.nan,
        per_process=[round(r["end"] - start, 3) for r in results],
        cpu_ms_per_request=1000 * sum(r["cpu"] for r in results) / cell.n,
        max_answering=stats.get("max_answering"),
        caps=[r["cap"] for r in results],
        retries_refused=sum(r["retries_refused"] for r in results),
    )
    return row


def summarize(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per arm, the run with the median makespan (so that its counts add up), and how many runs failed;
    then the shares part's arms (:func:`benchmarks.cap_shares.summarize`)."""
    out = []
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        good = sorted((r for r in mine if "error" not in r), key=lambda r: r["makespan"])
        if not mine:
            continue
        if not good:
            out.append({"arm": arm, "runs": len(mine), "failed_runs": len(mine), "error": mine[0]["error"]})
            continue
        middle = dict(good[len(good) // 2])
        middle.update(runs=len(mine), failed_runs=len(mine) - len(good))
        out.append(middle)
    return out + cap_shares.summarize(rows)


def run_cell(
    cell: CapCell,
    arms: Sequence[str],
    reps: int,
    *,
    server: Any,
    timeout: float,
    env: Dict[str, str],
    cwd: Path,
    log: Optional[Callable[[str], None]] = None,
) -> List[Dict[str, Any]]:
    """Every arm ``reps`` times, interleaved; the raw rows. A cell with ``mixed`` runs the
    shares part's arms too, unless ``arms`` names some of them."""
    plan = list(arms)
    if cell.mixed is not None and not set(plan) & set(cap_shares.ARMS):
        plan += cap_shares.ARMS
    rows = []
    for rep in range(reps):
        for arm in plan:
            if arm in cap_shares.ARMS:
                if cell.mixed is None:
                    raise ValueError(f"arm {arm!r} needs a cell with mixed=SharesCell(...)")
                row = cap_shares.run_arm(server, cell, cell.mixed, arm, rep, timeout=timeout, env=env, cwd=cwd)
            else:
                row = run_arm(server, cell, arm, rep, timeout=timeout, env=env, cwd=cwd)
            rows.append(row)
            if log:
                log(describe(row))
    return rows


def describe(row: Dict[str, Any]) -> str:
    if row["arm"] in cap_shares.ARMS:
        return cap_shares.describe(row)
    if "error" in row:
        return f"cap     {row['arm']:17} rep {row['rep']}: FAILED {row['error']}"
    return (
        f"cap     {row['arm']:17} rep {row['rep']}: makespan {row['makespan']:.2f}s "
        f"(ideal {row['ideal']:.2f}s, efficiency {row['efficiency']:.2f}), "
        f"429 {100 * row['share_429']:.1f} % of {row['requests']}, ok {row['ok']}/{row['n']}"
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cap", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shares-child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=FULL_CAP.n)
    parser.add_argument("--latency", type=float, default=FULL_CAP.latency)
    parser.add_argument("--even", action="store_true", help="equal shares instead of 4:3:2:1")
    parser.add_argument("--arms", default=",".join(ARMS + cap_shares.ARMS))
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    if args.shares_child:
        return cap_shares.child(json.loads(args.shares_child))
    from benchmarks import harness

    arms = [a.strip() for a in args.arms.split(",")]
    mixed = FULL_CAP.mixed if set(arms) & set(cap_shares.ARMS) else None
    cell = CapCell(n=args.n, latency=args.latency, weights=(1,) if args.even else FULL_CAP.weights, mixed=mixed)
    with harness.LoadServer() as server:
        rows = run_cell(
            cell,
            arms,
            args.reps,
            server=server,
            timeout=args.timeout,
            env=harness.child_env(),
            cwd=harness.REPO,
            log=lambda line: print(line, flush=True),
        )
    print(json.dumps({"cell": asdict(cell), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
