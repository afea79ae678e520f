"""A/B a change to deepseek_pool against the urllib3 floor, interleaved to cancel drift.

``python -m benchmarks.ab --package-dir /path/to/other/checkout [--cells C=64] [--rounds 4]``

Each round runs the floor, this repo's deepseek_pool (A) and the other checkout's
(B) once per cell, alternating which goes first; it prints per-round and median CPU
per request and ratios to the floor of the same round. Use it to confirm that an
optimisation helps on a noisy shared machine, where only same-round ratios are stable.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from benchmarks import harness
from benchmarks.harness import Cell


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--package-dir", type=Path, required=True, help="directory whose deepseek_pool/ is B")
    cell_help = 'comma-separated: C=16, C=64, C=256, stream, or DeepSeek-scale cells ("C=2500@2s")'
    parser.add_argument("--cells", default="C=64", help=cell_help)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--n", type=int, help="override N of the non-streaming cells")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    known = harness.FULL_CELLS + harness.DEEPSEEK_SCALE_CELLS
    cells: List[Cell] = [c for c in known if c.name in args.cells.split(",") and c.kind != "faults"]
    if not cells:
        names = ", ".join(c.name for c in known if c.kind != "faults")
        parser.error(f"no such cell in {args.cells!r}: give one of {names}")
    if args.n:
        cells = [c if c.stream else replace(c, n=args.n) for c in cells]
    ratios: Dict[Tuple[str, str], List[float]] = {}
    cpus: Dict[Tuple[str, str], List[float]] = {}
    with harness.Servers() as servers, harness.import_root(args.package_dir) as b_root:
        for round_ in range(args.rounds):
            for cell in cells:
                order = [
                    ("floor", "urllib3", harness.REPO),
                    ("A", "deepseek_pool", harness.REPO),
                    ("B", "deepseek_pool", b_root),
                ]
                if round_ % 2:
                    order = [order[0], order[2], order[1]]
                got: Dict[str, float] = {}
                for label, contender, cwd in order:
                    run = harness.run_one(servers.for_cell(cell), cell, contender, round_, args.timeout, cwd)
                    if run.error or run.client["ok"] != cell.n:
                        print(f"{cell.name} {label}: FAILED {run.error or run.client['errors']}")
                        continue
                    got[label] = 1000 * run.client["cpu"] / cell.n
                    cpus.setdefault((cell.name, label), []).append(got[label])
                line = f"round {round_} {cell.name:6} " + "  ".join(f"{k} {v:.3f}" for k, v in got.items())
                if "floor" in got:
                    for label in ("A", "B"):
                        if label in got:
                            ratios.setdefault((cell.name, label), []).append(got[label] / got["floor"])
                            line += f"  {label}/floor {got[label] / got['floor']:.2f}"
                print(line, flush=True)
    print("\nmedians (CPU ms/request, ratio to the floor of the same round):")
    for cell in cells:
        parts = []
        for label in ("floor", "A", "B"):
            values = cpus.get((cell.name, label))
            if values:
                part = f"{label} {statistics.median(values):.3f}"
                if (cell.name, label) in ratios:
                    part += f" ({statistics.median(ratios[(cell.name, label)]):.2f}x)"
                parts.append(part)
        print(f"  {cell.name:6} " + "  ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
