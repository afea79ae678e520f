"""Run the whole benchmark: ``python -m benchmarks.run`` (full) or ``--quick``.

Starts the load server, runs every cell for every contender whose packages are
installed (``pip install -e '.[bench]'``), then the cap cell (:mod:`benchmarks.cap`:
processes sharing one account cap), the storage cost (:mod:`benchmarks.storage_cost`) and
the cost cell (:mod:`benchmarks.cost`: warming, off-peak hours and the response cache
against FakeDeepSeek's cache model), prints progress, and writes
``results.md``, ``chart.png`` and ``raw.json`` to ``benchmarks/results/`` (or
``benchmarks/results/quick/`` in quick mode, or ``--out``). Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from benchmarks import cap, cost, harness, report, scale
from benchmarks.contenders import CONTENDERS
from benchmarks.harness import Cell, Figures, Run

RESULTS = Path(__file__).resolve().parent / "results"
FULL_SCALE = (10_000, 1_000_000)
QUICK_SCALE = (10_000, 100_000)
#: acquire/release pairs per storage cost measurement in quick mode (full: storage_cost's defaults)
QUICK_STORAGE_OPS = 10_000
#: the cells that are not (cell, contender) runs: ``--cells`` names them too
EXTRA_CELLS = ("cap", "storage", "cost")
#: The cost cell's arguments in quick mode (full: its defaults, 2,000 items at once, 1 s per answer).
QUICK_COST = ("--items", "200", "--latency", "0.2", "--build-delay", "0.3", "--warm-wait", "0.5")


def run_storage_cost(
    ops: Optional[int], *, timeout: float, cwd: Path, log: Optional[Callable[[str], None]] = None
) -> List[Dict[str, Any]]:
    """The storage cost rows, measured in a fresh process (``ops`` None: its defaults)."""
    command = [sys.executable, "-m", "benchmarks.storage_cost", "--json"]
    if ops:
        command += ["--ops", str(ops)]
    if log:
        log("storage: µs per acquire + release, memory:// and sqlite://, 1 and 64 threads")
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=harness.child_env(), cwd=str(cwd), check=True
    )
    rows: List[Dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    if log:
        for row in rows:
            log(
                f"storage {row['storage']:9} {row['threads']:>3} threads: {row['wall_us']:.1f} µs wall, "
                f"{row['cpu_us']:.1f} µs CPU per acquire + release"
            )
    return rows


def run_cost(
    arguments: Sequence[str], *, timeout: float, cwd: Path, log: Optional[Callable[[str], None]] = None
) -> Dict[str, Any]:
    """The cost cell's rows and setup, measured in a fresh process (its threads are many)."""
    if log:
        log("cost: a batch sharing a long prefix, cold, warmed, off-peak only, rerun with the response cache")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cost", "--json", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=harness.child_env(),
        cwd=str(cwd),
        check=True,
    )
    result: Dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if log:
        for line in cost.table(result["rows"]):
            log(line)
    return result


def run_benchmark(
    cells: Sequence[Cell],
    contenders: Sequence[str],
    *,
    reps: int,
    out: Path,
    mode: str,
    scale_sizes: Sequence[int] = (),
    timeout: float = 300.0,
    chart: bool = True,
    log: Optional[Callable[[str], None]] = None,
    package_dir: Optional[Path] = None,
    cap_cell: Optional[cap.CapCell] = None,
    cap_arms: Sequence[str] = cap.ARMS,
    storage: bool = False,
    storage_ops: Optional[int] = None,
    cost_cell: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """Run, summarize and write the results; return them (the smoke test calls this).

    ``cap_cell`` adds the cap cell (its arms ``reps`` times each); ``storage`` the storage
    cost (``storage_ops`` pairs per measurement; None: its defaults); ``cost_cell`` the
    cost cell, with these arguments of :mod:`benchmarks.cost` (``()``: its defaults).
    """
    started = time.monotonic()
    runs: List[Run] = []
    if cells:
        runs = harness.run_cells(cells, contenders, reps, timeout=timeout, log=log, package_dir=package_dir)
    figures: List[Figures] = harness.summarize(cells, runs)
    scale_rows: List[Dict[str, Any]] = []
    if scale_sizes:
        if log:
            log(f"scale: {', '.join(f'{n:,}' for n in scale_sizes)} requests through DeepSeekPool (stub client)")
        with harness.import_root(package_dir) as cwd:
            scale_rows = scale.run_sizes(scale_sizes, 64, timeout=max(timeout, 600.0), env=harness.child_env(), cwd=cwd)
        if log:
            for row in scale_rows:
                log(
                    f"scale   {row['n']:>9,}: {row['wall']:.1f} s, peak RSS {row['maxrss_mb']:.1f} MB, ok {row['ok']:,}"
                )
    cap_rows: List[Dict[str, Any]] = []
    if cap_cell is not None:
        if log:
            log(
                f"cap: {cap_cell.processes} processes x {cap_cell.workers} workers, server cap {cap_cell.cap}, "
                f"N={cap_cell.n:,}, L={1000 * cap_cell.latency:.0f} ms; arms {', '.join(cap_arms)}"
            )
        with harness.LoadServer() as server, harness.import_root(package_dir) as cwd:
            cap_rows = cap.run_cell(
                cap_cell, cap_arms, reps, server=server, timeout=timeout, env=harness.child_env(), cwd=cwd, log=log
            )
    storage_rows: List[Dict[str, Any]] = []
    if storage:
        with harness.import_root(package_dir) as cwd:
            storage_rows = run_storage_cost(storage_ops, timeout=max(timeout, 600.0), cwd=cwd, log=log)
    cost_result: Dict[str, Any] = {}
    if cost_cell is not None:
        with harness.import_root(package_dir) as cwd:
            cost_result = run_cost(cost_cell, timeout=max(timeout, 600.0), cwd=cwd, log=log)
    meta = {
        "mode": mode,
        "reps": reps,
        "runtime_s": time.monotonic() - started,
        "machine": report.machine(),
        "cells": [{"name": c.name, "n": c.n} for c in cells],
        "package_dir": str(package_dir) if package_dir else None,
        "cap_cell": asdict(cap_cell) if cap_cell is not None else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    cap_summary = cap.summarize(cap_rows)
    text = report.markdown(cells, figures, scale_rows, meta, cap=cap_summary, storage=storage_rows)
    text += _cost_section(cost_result)
    (out / "results.md").write_text(text + "\n")
    harness.save_json(
        out / "raw.json",
        cells,
        runs,
        figures,
        {**meta, "scale": scale_rows, "cap": cap_rows, "storage": storage_rows, "cost": cost_result},
    )
    standard = [c for c in cells if not c.deepseek_scale]
    drew = chart and bool(figures) and bool(standard) and report.chart(out / "chart.png", figures, cells, meta)
    if chart and len(standard) < len(cells):
        drew = report.scale_chart(out / "deepseek-scale.png", figures, cells, meta) or drew
    return {
        "runs": runs,
        "figures": figures,
        "scale": scale_rows,
        "cap": cap_rows,
        "cap_summary": cap_summary,
        "storage": storage_rows,
        "cost": cost_result,
        "markdown": text,
        "meta": meta,
        "chart": drew,
    }


def _cost_section(result: Dict[str, Any]) -> str:
    if not result:
        return ""
    lines = ["", "", "Cost: what warming, off-peak hours and the response cache take off a batch's bill.", ""]
    return "\n".join(lines + cost.table(result["rows"], {"setup": result.get("setup", "")}))


def rerender(raw: Path, out: Optional[Path] = None) -> str:
    """Rebuild results.md and the charts from a raw.json (after a change to the report only)."""
    data = json.loads(raw.read_text())
    cells = [Cell(**{**c, "faults": c.get("faults")}) for c in data["cells"]]
    runs = [Run(**r) for r in data["runs"]]
    figures = harness.summarize(cells, runs)
    meta = {k: v for k, v in data["meta"].items() if k not in ("scale", "cap", "storage", "cost")}
    out = out or raw.parent
    text = report.markdown(
        cells,
        figures,
        data["meta"].get("scale", []),
        meta,
        cap=cap.summarize(data["meta"].get("cap", [])),
        storage=data["meta"].get("storage", []),
    )
    text += _cost_section(data["meta"].get("cost") or {})
    (out / "results.md").write_text(text + "\n")
    if any(not c.deepseek_scale for c in cells):
        report.chart(out / "chart.png", figures, cells, meta)
    report.scale_chart(out / "deepseek-scale.png", figures, cells, meta)
    return text


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small N, one run each (about a minute)")
    parser.add_argument("--reps", type=int, help="runs per (cell, contender); default 3, or 1 with --quick")
    parser.add_argument("--contenders", help=f"comma-separated subset of: {', '.join(CONTENDERS)}")
    parser.add_argument(
        "--cells",
        help="comma-separated subset of: C=16, C=64, C=256, stream, faults, C=64 https, cap, storage, cost, "
        + ", ".join(c.name for c in harness.DEEPSEEK_SCALE_CELLS),
    )
    parser.add_argument("--n", type=int, help="override N of the non-streaming and faults cells")
    parser.add_argument("--no-scale", action="store_true", help="skip the 1,000,000-request scale cell")
    parser.add_argument(
        "--deepseek-scale",
        action="store_true",
        help="only the cells at DeepSeek's scale (C=1000/2500 at 2 s and 10 s, 250/500 streams; slow)",
    )
    parser.add_argument("--no-deepseek-scale", action="store_true", help="full mode without the DeepSeek-scale cells")
    parser.add_argument("--out", type=Path, help="directory for results.md, chart.png, raw.json")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one child run may take")
    parser.add_argument(
        "--package-dir", type=Path, help="import deepseek_pool from this directory instead (A/B runs of a change)"
    )
    parser.add_argument("--from-json", type=Path, help="only rebuild results.md and chart.png from this raw.json")
    args = parser.parse_args(argv)
    if args.from_json:
        print(rerender(args.from_json, args.out))
        return 0

    if args.deepseek_scale and (args.quick or args.no_deepseek_scale):
        parser.error("--deepseek-scale runs only those cells: not with --quick or --no-deepseek-scale")
    cells = list(harness.QUICK_CELLS if args.quick else harness.FULL_CELLS)
    if not args.quick and not args.no_deepseek_scale:
        cells += harness.DEEPSEEK_SCALE_CELLS
    wanted = [c.name for c in cells] + list(EXTRA_CELLS)
    if args.deepseek_scale:
        cells = list(harness.DEEPSEEK_SCALE_CELLS)
        wanted = [c.name for c in cells]
    if args.cells:
        wanted = [c.strip() for c in args.cells.split(",")]
        unknown = set(wanted) - {c.name for c in cells} - set(EXTRA_CELLS)
        if unknown:
            parser.error(f"unknown cells: {', '.join(sorted(unknown))}")
        cells = [c for c in cells if c.name in wanted]
    if args.n:
        cells = [c if c.kind == "stream" or c.deepseek_scale else replace(c, n=args.n) for c in cells]
    names = [name for name, contender in CONTENDERS.items() if not contender.variant]
    if args.contenders:
        names = [c.strip() for c in args.contenders.split(",")]
        unknown = set(names) - set(CONTENDERS)
        if unknown:
            parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    reps = args.reps or (1 if args.quick else 3)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    sizes = () if args.no_scale or args.deepseek_scale else (QUICK_SCALE if args.quick else FULL_SCALE)

    def log(line: str) -> None:
        print(line, flush=True)

    result = run_benchmark(
        cells,
        names,
        reps=reps,
        out=out,
        mode="quick" if args.quick else "full",
        scale_sizes=sizes,
        timeout=args.timeout,
        log=log,
        package_dir=args.package_dir,
        cap_cell=(cap.QUICK_CAP if args.quick else cap.FULL_CAP) if "cap" in wanted else None,
        storage="storage" in wanted,
        storage_ops=QUICK_STORAGE_OPS if args.quick else None,
        cost_cell=(QUICK_COST if args.quick else ()) if "cost" in wanted else None,
    )
    print()
    print(result["markdown"])
    print(
        f"written: {out / 'results.md'}"
        + (f", {out / 'chart.png'}" if result["chart"] else " (no chart: pip install matplotlib)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
