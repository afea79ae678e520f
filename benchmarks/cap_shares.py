"""The cap cell's shares part: an interactive pool beside a batch on one account cap, with a quiet spell.

The load server answers 429 "concurrency limit of <cap>" above ``cap`` in flight (see
:mod:`benchmarks.cap`). The load is uneven between the two kinds of work:
``batch_processes`` processes of ``batch_workers`` threads run a heavy batch, in two
phases with a quiet spell between them; one more process runs a light interactive pool
fed by an open Poisson stream of ``interactive_rate`` calls a second from the common
start until the batch ends. Every process has its own
``Limiter(max_in_flight=ceiling, storage="sqlite:////<tmp>/budget.db")`` on one file, the
ceiling above the real cap (which the budget learns from the first 429s). Arms:

* ``interactive``: the interactive process alone, as long as a batch would take: its
  latency without the batch;
* ``mixed``: both, with ``shares={"interactive": interactive_share, "batch": 0}`` and each
  pool on its share (``DeepSeekPool(limiter=..., share=...)``);
* ``mixed-unshared``: both on the same budget without shares, what shares buy.

Reported per arm: the share of requests answered 429 (and of those after the quiet
spell, when a cap that grew while nobody used it would send a burst into the server),
the efficiency (the calls answered while the batch ran, times the latency, over the cap
times the time the batch ran: 1.0 keeps every slot busy), the cap at the end of the
quiet spell, and the interactive calls' latency (submit to answer; p50, p95, p99, and in
the steady state, once the budget has learnt the cap).

Run alone: ``python -m benchmarks.cap --arms interactive,mixed,mixed-unshared``.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchmarks import protocol

ARMS = ("interactive", "mixed", "mixed-unshared")
ARM_LABELS = {
    "interactive": "the interactive pool alone",
    "mixed": "interactive + batch, shares (interactive guaranteed)",
    "mixed-unshared": "interactive + batch, one budget without shares",
}
#: Seconds between the GO line and the start it names, so every process is waiting by then.
START_MARGIN = 0.5
#: What a table shows where an arm has no figure.
DASH = chr(8211)
#: Interactive calls' prompts start here, apart from the batch's.
INTERACTIVE_OFFSET = 10_000_000


@dataclass(frozen=True)
class SharesCell:
    """The shares part of a cap cell (the server's cap, latency and ceiling are the cell's)."""

    phase: int = 3000  # batch calls in each of the two phases
    batch_processes: int = 3
    batch_workers: int = 64
    weights: Tuple[int, ...] = (1,)
    quiet: float = 3.0  # seconds between the phases, the batch idle
    interactive_rate: float = 10.0  # calls a second, Poisson
    interactive_workers: int = 16
    interactive_share: float = 0.06  # of the cap, guaranteed (6 of 100: 3x the 2 calls it runs on average)
    #: seconds from the start in which the budget learns the cap from the first 429s (a cool-down
    #: holds every call then, interactive ones too); the steady-state latency leaves them out
    settle: float = 1.0

    def split(self) -> List[int]:
        """Calls per batch process in one phase, in proportion to ``weights``."""
        weights = [self.weights[i % len(self.weights)] for i in range(self.batch_processes)]
        counts = [self.phase * w // sum(weights) for w in weights]
        counts[0] += self.phase - sum(counts)
        return counts


def _limiter(spec: Dict[str, Any]) -> Any:
    import deepseek_pool as dp

    if spec["arm"] == "mixed":
        shares = {"interactive": spec["interactive_share"], "batch": 0}
        return dp.Limiter(max_in_flight=spec["ceiling"], storage=spec["storage"], name="shares", shares=shares)
    return dp.Limiter(max_in_flight=spec["ceiling"], storage=spec["storage"], name="shares")


def _wait_for_go(prefix: str = "GO") -> Optional[float]:
    """Read ``GO <start>`` (or ``STOP``) from stdin, sleep until the start; None on STOP or EOF."""
    line = sys.stdin.readline().split()
    if len(line) != 2 or line[0] != prefix:
        return None
    start = float(line[1])
    pause = start - time.time()
    if pause > 0:
        time.sleep(min(pause, 10.0))
    return start


def batch_child(spec: Dict[str, Any]) -> int:
    """A batch process: warm up, then two phases, each at a GO line; a PHASE line after the first."""
    from deepseek_pool import DeepSeekClient, DeepSeekPool

    limiter = _limiter(spec)
    client = DeepSeekClient(protocol.API_KEY, base_url=spec["base_url"], model=protocol.MODEL, timeout=60.0)
    share = "batch" if spec["arm"] == "mixed" else None
    offset, counts = int(spec["offset"]), [int(c) for c in spec["counts"]]
    ok = wrong = 0
    errors: Dict[str, int] = {}
    ends: List[float] = []
    caps: List[Any] = []
    with client, DeepSeekPool(client, max_workers=int(spec["workers"]), limiter=limiter, share=share) as pool:
        list(pool.as_completed([protocol.prompt_for(offset)]))
        print("READY", flush=True)
        for phase, n in enumerate(counts):
            if _wait_for_go() is None:
                return 2
            caps.append(limiter.stats.cap)  # the second: the cap the quiet spell left
            first = offset + phase * n
            for result in pool.as_completed(protocol.prompt_for(first + i) for i in range(n)):
                if not result.ok:
                    kind = type(result.error).__name__
                    errors[kind] = errors.get(kind, 0) + 1
                elif result.completion is not None and result.completion.content == protocol.answer_for(
                    first + result.index
                ):
                    ok += 1
                else:
                    wrong += 1
            ends.append(time.time())
            print(f"PHASE {phase}", flush=True)
    result = {"ok": ok, "wrong": wrong, "errors": errors, "ends": ends, "caps": caps}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def interactive_child(spec: Dict[str, Any]) -> int:
    """The interactive process: from GO until STOP (or ``seconds``), calls at Poisson times; their latencies."""
    from deepseek_pool import DeepSeekClient, DeepSeekPool

    limiter = _limiter(spec)
    client = DeepSeekClient(protocol.API_KEY, base_url=spec["base_url"], model=protocol.MODEL, timeout=60.0)
    share = "interactive" if spec["arm"] == "mixed" else None
    rng = random.Random(spec["seed"])
    stop = threading.Event()
    records: List[Tuple[float, float, str]] = []  # (submitted, latency, outcome)
    lock = threading.Lock()
    with client, DeepSeekPool(client, max_workers=int(spec["workers"]), limiter=limiter, share=share) as pool:
        list(pool.as_completed([protocol.prompt_for(INTERACTIVE_OFFSET)]))
        print("READY", flush=True)
        start = _wait_for_go()
        if start is None:
            return 2
        threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
        limit = start + float(spec.get("seconds") or math.inf)
        due = start
        i = 0
        while not stop.is_set():
            due += rng.expovariate(float(spec["rate"]))
            if due >= limit or stop.wait(max(0.0, due - time.time())):
                break
            i += 1
            index = INTERACTIVE_OFFSET + i
            submitted = time.time()

            def done(future: Any, index: int = index, submitted: float = submitted) -> None:
                error = future.exception()
                if error is not None:
                    outcome = type(error).__name__
                elif future.result().content == protocol.answer_for(index):
                    outcome = "ok"
                else:
                    outcome = "wrong"
                with lock:
                    records.append((submitted - start, time.time() - submitted, outcome))

            pool.submit(protocol.prompt_for(index)).add_done_callback(done)
        stats = limiter.stats
    with lock:
        result = {"records": records, "throttled": stats.throttled, "wait_seconds": stats.wait_seconds}
        print("RESULT " + json.dumps(result), flush=True)
    return 0


def child(spec: Dict[str, Any]) -> int:
    return interactive_child(spec) if spec["role"] == "interactive" else batch_child(spec)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_arm(
    server: Any,
    cell: Any,
    shares: SharesCell,
    arm: str,
    rep: int,
    *,
    timeout: float,
    env: Dict[str, str],
    cwd: Path,
) -> Dict[str, Any]:
    """One arm once; never raises for its children's failure."""
    from benchmarks.cap import spawn_child  # the cap cell imports this module: import it late

    server.reset({"latency": 0.0})
    batch_span = 2 * shares.phase * cell.latency / cell.cap  # what the batch would take at the cap
    row: Dict[str, Any] = {"arm": arm, "rep": rep, "n": 0 if arm == "interactive" else 2 * shares.phase}
    children: List[subprocess.Popen[str]] = []
    readers: List[Any] = []
    with tempfile.TemporaryDirectory(prefix="bench-shares-") as tmp:
        common = {
            "arm": arm,
            "base_url": server.base_url,
            "ceiling": cell.ceiling,
            "storage": "sqlite:///" + str(Path(tmp).resolve() / "budget.db"),
            "interactive_share": shares.interactive_share,
        }
        specs = [
            {
                **common,
                "role": "interactive",
                "workers": shares.interactive_workers,
                "rate": shares.interactive_rate,
                "seed": 3000 + rep,
                "seconds": batch_span + shares.quiet + 2.0 if arm == "interactive" else None,
            }
        ]
        if arm != "interactive":
            offset = 0
            for count in shares.split():
                specs.append({**common, "role": "batch", "workers": shares.batch_workers, "offset": offset})
                specs[-1]["counts"] = [count, count]
                offset += 2 * count
        errors_file = open(Path(tmp) / "stderr.txt", "w+")  # noqa: SIM115  # closed below, after the children
        try:
            for spec in specs:
                process, lines = spawn_child("--shares-child", spec, errors_file, cwd, env)
                children.append(process)
                readers.append(lines)
            for lines in readers:
                lines.next(timeout, "READY")
            server.reset(cell.server_config(seed=4000 + rep))

            def go(processes: Sequence[subprocess.Popen[str]], word: str = "GO") -> float:
                at = time.time() + START_MARGIN
                for process in processes:
                    assert process.stdin is not None
                    process.stdin.write(f"{word} {at!r}\n" if word == "GO" else f"{word}\n")
                    process.stdin.flush()
                return at

            batch, batch_lines = children[1:], readers[1:]
            start = go(children)
            spans: List[Tuple[float, float]] = []
            before_quiet = server.stats()
            if batch:
                for lines in batch_lines:
                    lines.next(timeout, "PHASE 0")
                first_end = time.time()
                time.sleep(shares.quiet)
                before_quiet = server.stats()
                second = go(batch)
                results = [json.loads(lines.next(timeout, "RESULT ")[len("RESULT ") :]) for lines in batch_lines]
                spans = [(start, max(r["ends"][0] for r in results)), (second, max(r["ends"][1] for r in results))]
                row["quiet_measured"] = second - first_end
                row["spans"] = [end - begin for begin, end in spans]
                go(children[:1], "STOP")
            interactive = json.loads(readers[0].next(timeout + batch_span, "RESULT ")[len("RESULT ") :])
            stats = server.stats()
            for process in children:
                process.wait(timeout=30)
        except (TimeoutError, EOFError, OSError, ValueError, subprocess.TimeoutExpired) as err:
            errors_file.seek(0)
            detail = errors_file.read().strip().splitlines()[-3:]
            row["error"] = f"{type(err).__name__}: {err}: {' | '.join(detail)}"
            return row
        finally:
            for process in children:
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)
                if process.stdin is not None:
                    with contextlib.suppress(OSError):
                        process.stdin.close()
            for lines in readers:
                lines.close()
            errors_file.close()
    records = interactive["records"]
    latencies = [latency for _, latency, outcome in records if outcome == "ok"]
    steady = [latency for at, latency, outcome in records if outcome == "ok" and at >= shares.settle]
    errors: Dict[str, int] = {}
    for _, _, outcome in records:
        if outcome != "ok":
            errors[outcome] = errors.get(outcome, 0) + 1
    requests, rejected = int(stats["requests"]), int(stats["faults"]["cap"])
    row.update(
        requests=requests,
        rejected=rejected,
        share_429=rejected / requests if requests else math.nan,
        interactive_calls=len(records),
        interactive_errors=errors,
        p50_ms=1000 * _percentile(latencies, 0.5),
        p95_ms=1000 * _percentile(latencies, 0.95),
        p99_ms=1000 * _percentile(latencies, 0.99),
        steady_p50_ms=1000 * _percentile(steady, 0.5),
        steady_p95_ms=1000 * _percentile(steady, 0.95),
        max_answering=stats.get("max_answering"),
        interactive_throttled=interactive["throttled"],
        interactive_wait_s=interactive["wait_seconds"],
    )
    if spans:
        busy = sum(end - begin for begin, end in spans)
        # Interactive calls that started while the batch ran used the cap too.
        during = sum(1 for at, _, outcome in records if outcome == "ok" and any(b <= start + at < e for b, e in spans))
        answered = sum(r["ok"] for r in results)
        batch_errors: Dict[str, int] = {}
        for result in results:
            for kind, count in result["errors"].items():
                batch_errors[kind] = batch_errors.get(kind, 0) + count
        after = requests - int(before_quiet["requests"])
        rejected_after = rejected - int(before_quiet["faults"]["cap"])
        row.update(
            ok=answered,
            wrong=sum(r["wrong"] for r in results),
            batch_errors=batch_errors,
            busy=busy,
            efficiency=(answered + during) * cell.latency / (cell.cap * busy) if busy > 0 else math.nan,
            share_429_after_quiet=rejected_after / after if after else math.nan,
            cap_after_quiet=[r["caps"][1] for r in results],
        )
    return row


def summarize(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per arm, the run with the median p95 latency, and how many runs failed."""
    out = []
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        good = sorted((r for r in mine if "error" not in r), key=lambda r: r["p95_ms"])
        if not mine:
            continue
        if not good:
            out.append({"arm": arm, "runs": len(mine), "failed_runs": len(mine), "error": mine[0]["error"]})
            continue
        middle = dict(good[len(good) // 2])
        middle.update(runs=len(mine), failed_runs=len(mine) - len(good))
        out.append(middle)
    return out


def describe(row: Dict[str, Any]) -> str:
    if "error" in row:
        return f"shares  {row['arm']:17} rep {row['rep']}: FAILED {row['error']}"
    text = (
        f"shares  {row['arm']:17} rep {row['rep']}: interactive p50 {row['p50_ms']:.0f} ms, "
        f"p95 {row['p95_ms']:.0f} ms (steady {row['steady_p50_ms']:.0f} / {row['steady_p95_ms']:.0f} ms; "
        f"{row['interactive_calls']} calls, {row['interactive_throttled']} waited), 429 {100 * row['share_429']:.2f} % "
        f"of {row['requests']}"
    )
    if "efficiency" in row:
        text += (
            f", efficiency {row['efficiency']:.2f}, 429 after the quiet spell "
            f"{100 * row['share_429_after_quiet']:.2f} %, cap after it {row['cap_after_quiet']}, "
            f"batch ok {row['ok']}/{row['n']}"
        )
    return text


def table(summary: Sequence[Dict[str, Any]], cell: Optional[Dict[str, Any]]) -> List[str]:
    """The shares part of the cap cell, for results.md: one row per arm."""
    rows = [row for row in summary if row["arm"] in ARM_LABELS]
    if not rows or not cell or not cell.get("mixed"):
        return []
    shares = cell["mixed"]
    weights = ":".join(str(shares["weights"][i % len(shares["weights"])]) for i in range(shares["batch_processes"]))
    guaranteed = math.floor(shares["interactive_share"] * cell["cap"] + 1e-9)
    lines = [
        f"Shares: the same server (429 above {cell['cap']} in flight, L={1000 * cell['latency']:.0f} ms "
        f"{chr(177)} {100 * cell['jitter']:.0f} %). A batch of 2 {chr(215)} {shares['phase']:,} calls over "
        f"{shares['batch_processes']} processes {chr(215)} {shares['batch_workers']} workers (split {weights}), "
        f"its two phases {shares['quiet']:g} s of quiet apart; an interactive pool ({shares['interactive_workers']} "
        f"workers) fed {shares['interactive_rate']:g} calls/s (Poisson) from the start to the batch's end. Every "
        f"process its own sqlite:// limiter on one file, max_in_flight={cell['ceiling']}; with shares, interactive "
        f"is guaranteed {shares['interactive_share']:g} of the cap ({guaranteed} of {cell['cap']}). Efficiency: "
        "calls answered while the batch ran, times L, over the cap times that time. Latency: the interactive "
        f"calls', submit to answer, all of them and those from {shares['settle']:g} s after the start (steady: the "
        "budget has learnt the cap, whose first 429s hold every call back); each arm's run with the median p95.",
        "",
        "| arm | interactive p50 / p95 / p99 ms | steady p50 / p95 ms | interactive calls (failed; waited for a "
        "slot) | answered 429 | 429 after the quiet spell | cap after it | efficiency | batch completed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        label = ARM_LABELS[row["arm"]]
        if "p95_ms" not in row:
            lines.append(f"| {label} | all {row['runs']} runs failed: {row['error']} | | | | | | | |")
            continue
        failed = sum(row["interactive_errors"].values())
        batch = "efficiency" in row
        lines.append(
            f"| {label} | {row['p50_ms']:.0f} / {row['p95_ms']:.0f} / {row['p99_ms']:.0f} | "
            f"{row['steady_p50_ms']:.0f} / {row['steady_p95_ms']:.0f} | "
            f"{row['interactive_calls']} ({failed}; {row['interactive_throttled']}) | {100 * row['share_429']:.2f} % | "
            + (
                f"{100 * row['share_429_after_quiet']:.2f} % | {'/'.join(f'{c:g}' for c in row['cap_after_quiet'])} | "
                f"{row['efficiency']:.2f} | {row['ok']}/{row['n']} |"
                if batch
                else " | ".join([DASH] * 4) + " |"
            )
        )
    return lines
