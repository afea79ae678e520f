"""Markdown tables and the PNG chart from the harness's figures."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import math
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from benchmarks import cap_shares, storage_cost
from benchmarks.cap import ARM_LABELS
from benchmarks.contenders import CONTENDERS
from benchmarks.harness import Cell, Figures

TIMES = "\u00d7"
DASH = "\u2013"
_PACKAGES = ("deepseek-pool", "requests", "urllib3", "requests-futures", "openai", "httpx", "httpx2", "aiohttp")


def machine() -> Dict[str, Any]:
    """Date, CPU, cores, OS, Python and the versions of every contender's packages."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "versions": versions,
    }


def _f(value: Optional[float], digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:.{digits}f}"


def _range(bounds: Optional[Sequence[float]]) -> str:
    """A min-max pair as ``1.05-1.19``; a dash without one."""
    return f"{_f(bounds[0], 2)}-{_f(bounds[1], 2)}" if bounds else DASH


def _get(figures: Sequence[Figures], cell: str, contender: str) -> Optional[Figures]:
    for fig in figures:
        if fig.cell == cell and fig.contender == contender:
            return fig
    return None


def _contenders(figures: Sequence[Figures], cells: Sequence[str]) -> List[str]:
    names = [name for name in CONTENDERS if any(f.contender == name and f.cell in cells for f in figures)]
    return names


def _chat_cells(figures: Sequence[Figures], cells: Sequence[Cell]) -> List[str]:
    return [
        c.name for c in cells if c.kind == "chat" and not c.deepseek_scale and any(f.cell == c.name for f in figures)
    ]


def deepseek_scale_table(figures: Sequence[Figures], cells: Sequence[Cell]) -> List[str]:
    """One row per (DeepSeek-scale cell, contender): the figures issue 14 asks for."""
    mine = [c for c in cells if c.deepseek_scale and any(f.cell == c.name for f in figures)]
    if not mine:
        return []
    lines = [
        "At DeepSeek's scale: `C=1000@2s` is N calls, 1,000 at once, each answered after 2 s "
        "(± the cell's jitter); `S=250` is streams of 150 events 20 ms apart, 250 at once; "
        "`const` has no jitter (every wave returns at once) and shows its run-to-run range "
        "(min-max) after the median. Time to first event is the overhead over the server's delay.",
        "",
        "| cell | contender | efficiency | CPU ms/request | "
        f"{TIMES} floor | CPU µs/event | first event +ms | peak RSS MB | threads | connections | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in mine:
        for name in _contenders(figures, [cell.name]):
            f = _get(figures, cell.name, name)
            if f is None:
                continue
            efficiency, cpu = _f(f.efficiency, 3), _f(f.cpu_ms_per_request, 2)
            if cell.name.endswith("const"):
                low, high = f.extra.get("efficiency_range") or (None, None)
                efficiency += f" ({_f(low, 3)}-{_f(high, 3)})"
                cpu_low, cpu_high = f.extra.get("cpu_ms_per_request_range") or (None, None)
                cpu += f" ({_f(cpu_low, 2)}-{_f(cpu_high, 2)})"
            per_event = _f(1000 * f.cpu_ms_per_chunk, 1) if f.cpu_ms_per_chunk is not None else DASH
            first = _f(f.ttfc_overhead_ms, 1) if f.ttfc_overhead_ms is not None else DASH
            lines.append(
                f"| {cell.name} | {CONTENDERS[name].label} | {efficiency} | {cpu} | {_f(f.cpu_ratio, 2)} "
                f"| {per_event} | {first} | {_f(f.maxrss_mb, 0)} | {_f(f.extra.get('peak_threads'), 0)} "
                f"| {f.connections} | {f.errors + f.wrong} |"
            )
    return lines


def chat_table(figures: Sequence[Figures], cells_: Sequence[Cell]) -> List[str]:
    cells = _chat_cells(figures, cells_)
    if not cells:
        return []
    slash = " / ".join(c.replace("C=", "") for c in cells)
    lines = [
        f"| contender | CPU ms/request C={slash} | of which the consuming thread | {TIMES} floor "
        "| single runs' range | efficiency | connections | peak RSS MB | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in _contenders(figures, cells):
        row = [_get(figures, c, name) for c in cells]

        def col(attr: str, row: List[Optional[Figures]] = row, digits: int = 2) -> str:
            return " / ".join(_f(getattr(f, attr), digits) if f else DASH for f in row)

        ratio = " / ".join(_f(f.cpu_ratio, 2) if f and f.cpu_ratio is not None else DASH for f in row)
        consumer = " / ".join(_f(f.extra.get("consumer_cpu_ms_per_request"), 3) if f else DASH for f in row)
        spread = " / ".join(_range(f.extra.get("cpu_ratio_range")) if f else DASH for f in row)

        connections = " / ".join(str(f.connections) if f else DASH for f in row)
        rss = " / ".join(_f(f.maxrss_mb, 0) if f else DASH for f in row)
        errors = sum((f.errors + f.wrong) for f in row if f)
        warnings = sum(f.pool_full_warnings for f in row if f)
        failed = sum(f.failed_runs for f in row if f)
        note = str(errors)
        if warnings:
            note += f" ({warnings} pool-full warnings)"
        if failed:
            note += f" ({failed} runs failed)"
        label = CONTENDERS[name].label
        lines.append(
            f"| {label} | {col('cpu_ms_per_request')} | {consumer} | {ratio} | {spread} | {col('efficiency')} "
            f"| {connections} | {rss} | {note} |"
        )
    return lines


def stream_table(figures: Sequence[Figures], cell: Optional[Cell]) -> List[str]:
    rows = [f for f in figures if f.cell == "stream"]
    if not rows or cell is None:
        return []
    lines = [
        f"Streaming: {cell.n} streams {TIMES} {cell.chunks} chunks, C={cell.concurrency}, "
        f"first chunk after {1000 * cell.latency:.0f} ms then one every {1000 * cell.gap:.0f} ms.",
        "",
        f"| contender | time to first chunk, overhead ms (mean) | CPU ms/chunk | {TIMES} floor "
        "| connections | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name in _contenders(rows, ["stream"]):
        f = _get(rows, "stream", name)
        assert f is not None
        lines.append(
            f"| {CONTENDERS[name].label} | {_f(f.ttfc_overhead_ms, 1)} | {_f(f.cpu_ms_per_chunk, 3)} | "
            f"{_f(f.cpu_ratio)} | {f.connections} | {f.errors + f.wrong} |"
        )
    return lines


def faults_table(figures: Sequence[Figures], cell: Optional[Cell]) -> List[str]:
    rows = [f for f in figures if f.cell == "faults"]
    if not rows or cell is None:
        return []
    faults = ", ".join(f"{100 * p:.0f} % {k if k != 'reset' else 'TCP resets'}" for k, p in (cell.faults or {}).items())
    lines = [
        f"Faults: N={cell.n}, C={cell.concurrency}, L={1000 * cell.latency:.0f} ms, each attempt drawn: {faults}; "
        "contenders that retry out of the box (or as configured here), 2 retries each. Counts are those of "
        "the run with the median number completed.",
        "",
        "| contender | completed | wrong answers | failed (kinds) | requests sent | extra requests | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in _contenders(rows, ["faults"]):
        f = _get(rows, "faults", name)
        assert f is not None
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(f.error_kinds.items())) or DASH
        lines.append(
            f"| {CONTENDERS[name].label} | {f.ok}/{cell.n} | {f.wrong} | {f.errors} ({kinds}) | {f.requests_sent} | "
            f"{f.requests_sent - cell.n} | {_f(f.wall)} |"
        )
    return lines


def cap_table(summary: Sequence[Dict[str, Any]], cell: Optional[Dict[str, Any]]) -> List[str]:
    """The cap cell: one row per arm (its run with the median makespan)."""
    if not summary or not cell:
        return []
    weights = ":".join(str(cell["weights"][i % len(cell["weights"])]) for i in range(cell["processes"]))
    ideal = cell["n"] * cell["latency"] / cell["cap"]
    lines = [
        f'Cap: the server answers 429 "concurrency limit of {cell["cap"]}" at once above {cell["cap"]} requests '
        f"in flight; {cell['processes']} processes {TIMES} {cell['workers']} workers (one DeepSeekPool each), "
        f"N={cell['n']:,} calls split {weights}, L={1000 * cell['latency']:.0f} ms "
        f"{chr(177)} {100 * cell['jitter']:.0f} %; ideal N{TIMES}L/{cell['cap']} = {ideal:.2f} s. Makespan runs from "
        "the common start to the last answer; each arm's run with the median makespan. The shared budget's "
        f"ceiling is max_in_flight={cell['ceiling']}, above the real cap.",
        "",
        "| arm | completed | failed (kinds) | requests sent | answered 429 | makespan s | efficiency "
        "| client CPU ms/request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        if row["arm"] not in ARM_LABELS:
            continue  # the shares part's arms have a table of their own (cap_shares.table)
        label = ARM_LABELS[row["arm"]]
        if "makespan" not in row:
            lines.append(f"| {label} | {DASH} | all {row['runs']} runs failed: {row['error']} | | | | | |")
            continue
        failed = sum(row["errors"].values())
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(row["errors"].items())) or DASH
        note = f" ({row['failed_runs']} runs failed)" if row.get("failed_runs") else ""
        lines.append(
            f"| {label} | {row['ok']}/{row['n']}{note} | {failed} ({kinds}) | {row['requests']} | "
            f"{100 * row['share_429']:.1f} % | {_f(row['makespan'])} | {_f(row['efficiency'])} | "
            f"{_f(row['cpu_ms_per_request'])} |"
        )
    return lines


def server_table(figures: Sequence[Figures], cells: Sequence[Cell]) -> List[str]:
    lines = [
        "| cell | load-server CPU ms/request (median, min-max over contenders) | busiest share of one core |",
        "|---|---|---|",
    ]
    for cell in cells:
        rows = [f for f in figures if f.cell == cell.name and not math.isnan(f.server_cpu_ms_per_request)]
        if not rows:
            continue
        per = sorted(f.server_cpu_ms_per_request for f in rows)
        share = max(f.server_core_share for f in rows)
        lines.append(
            f"| {cell.name} | {_f(per[len(per) // 2], 3)} ({_f(per[0], 3)}{DASH}{_f(per[-1], 3)}) "
            f"| {100 * share:.0f} % |"
        )
    return lines


def scale_table(scale: Sequence[Dict[str, Any]]) -> List[str]:
    if not scale:
        return []
    lines = ["| lazy input | workers | completed | wall s | µs per item | peak RSS MB |", "|---|---|---|---|---|---|"]
    for row in scale:
        lines.append(
            f"| {row['n']:,} | {row['workers']} | {row['ok']:,} | {_f(row['wall'], 1)} | "
            f"{_f(1e6 * row['wall'] / row['n'], 1)} | {_f(row['maxrss_mb'], 1)} |"
        )
    return lines


def markdown(
    cells: Sequence[Cell],
    figures: Sequence[Figures],
    scale: Sequence[Dict[str, Any]],
    meta: Dict[str, Any],
    *,
    cap: Sequence[Dict[str, Any]] = (),
    storage: Sequence[Dict[str, Any]] = (),
) -> str:
    by_name = {cell.name: cell for cell in cells}
    chat = [c for c in cells if c.kind == "chat" and not c.deepseek_scale]
    m = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    out = [
        f"# deepseek_pool benchmark ({meta['mode']} mode)",
        "",
        f"{m['date']} · {m['cpu']} · {m['cores']} cores · {m['os']} · Python {m['python']} · "
        f"medians of {meta['reps']} runs · whole run {meta['runtime_s']:.0f} s",
        "",
        f"Versions: {versions}.",
        "",
    ]
    if chat:
        c0 = chat[0]
        ns = str(c0.n) if len({c.n for c in chat}) == 1 else "/".join(str(c.n) for c in chat)
        out += [
            f"Non-streaming: N={ns} chat calls, "
            f"server latency L={1000 * c0.latency:.0f} ms, C calls at once. CPU is the client process's user+sys "
            f"time per request (and the part of it spent by the thread that submits and collects); "
            f"{TIMES} floor is the ratio of the medians to urllib3 + threads in the same run, and the single runs' "
            "range that of each repetition to the floor's of the same repetition; efficiency is "
            "⌈N/C⌉·L over the wall time; connections are the TCP connections that carried requests "
            "(counted by the server).",
            "",
        ]
        out += [*chat_table(figures, cells), ""]
    out += [*stream_table(figures, by_name.get("stream")), ""]
    out += [*faults_table(figures, by_name.get("faults")), ""]
    out += [*deepseek_scale_table(figures, cells), ""]
    if scale:
        out += [
            "Scale: a lazy generator of requests through `DeepSeekPool.as_completed` with a counting stub "
            "client (no network), each size in a fresh process.",
            "",
        ]
        out += [*scale_table(scale), ""]
    out += [*cap_table(cap, meta.get("cap_cell")), ""]
    out += [*cap_shares.table(cap, meta.get("cap_cell")), ""]
    if storage:
        out += [
            "Storage cost: one Limiter (a ceiling never reached), acquire + release in a loop; at 64 threads the "
            "wall time is over all threads' pairs (what one process gets from that storage).",
            "",
            *storage_cost.table(storage),
            "",
        ]
    if figures:
        out += ["The load server (its own process) is not the bottleneck:", ""]
        out += [*server_table(figures, cells), ""]
    return "\n".join(out)


def chart(path: Path, figures: Sequence[Figures], cells_: Sequence[Cell], meta: Dict[str, Any]) -> bool:
    """Write the PNG chart; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cells = _chat_cells(figures, cells_)
    names = _contenders(figures, cells)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    width = 0.8 / max(1, len(names))
    colors = plt.get_cmap("tab10")
    for k, name in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(cells))]
        rows = [_get(figures, c, name) for c in cells]
        cpu = [f.cpu_ms_per_request if f else float("nan") for f in rows]
        eff = [f.efficiency if f else float("nan") for f in rows]
        style = {"color": colors(k), "label": CONTENDERS[name].label, "width": width}
        if name == "deepseek_pool":
            style.update(edgecolor="black", linewidth=1.2)
        axes[0].bar(xs, cpu, **style)
        axes[1].bar(xs, eff, **style)
    for ax, title in ((axes[0], "client CPU per request, ms (log)"), (axes[1], "efficiency: ideal / actual wall time")):
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels(cells)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_ylim(0, 1.05)
    stream = [f for f in figures if f.cell == "stream"]
    snames = _contenders(stream, ["stream"])
    for k, name in enumerate(snames):
        f = _get(stream, "stream", name)
        assert f is not None
        axes[2].bar(k, f.cpu_ms_per_chunk or float("nan"), color=colors(names.index(name) if name in names else k))
    axes[2].set_xticks(range(len(snames)))
    axes[2].set_xticklabels(snames, rotation=30, ha="right")
    axes[2].set_title("streaming: client CPU per chunk, ms")
    axes[2].grid(axis="y", alpha=0.3)
    first = [f for f in figures if f.cell in cells]
    n = first[0] if first else None
    title = f"deepseek_pool vs peers — {_machine(meta)}; non-streaming N={n and _n_of(meta, n.cell)}, L=50 ms"
    _save(plt, fig, axes[0], path, f"{title}; medians of {meta['reps']}", bottom=0.12)
    return True


def _machine(meta: Dict[str, Any]) -> str:
    m = meta["machine"]
    return f"{m['date']}, {m['cpu']}, {m['cores']} cores, Python {m['python']}"


def _save(plt: Any, fig: Any, legend_from: Any, path: Path, title: str, *, bottom: float) -> None:
    """One legend for the figure (from one panel's bars), the title, and the PNG."""
    handles, labels = legend_from.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, bottom, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scale_chart(path: Path, figures: Sequence[Figures], cells_: Sequence[Cell], meta: Dict[str, Any]) -> bool:
    """The DeepSeek-scale cells' PNG: CPU per request, efficiency, CPU per streamed event.

    False when matplotlib is missing or no such cell was run.
    """
    cells = [c.name for c in cells_ if c.deepseek_scale and any(f.cell == c.name for f in figures)]
    if not cells:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    kinds = {c.name: c.kind for c in cells_}
    chat = [c for c in cells if kinds[c] == "chat"]
    stream = [c for c in cells if kinds[c] == "stream"]
    names = _contenders(figures, cells)
    fig, axes = plt.subplots(
        1, 3, figsize=(16, 5), gridspec_kw={"width_ratios": [len(chat) or 1, len(cells), len(stream) or 1]}
    )
    width = 0.8 / max(1, len(names))
    colors = plt.get_cmap("tab10")
    panels = (
        (axes[0], chat, lambda f: f.cpu_ms_per_request, "client CPU per request, ms"),
        (axes[1], cells, lambda f: f.efficiency, "efficiency: ideal / actual wall time"),
        (axes[2], stream, lambda f: 1000 * f.cpu_ms_per_chunk if f.cpu_ms_per_chunk else None, "CPU per event, µs"),
    )
    for ax, group, value, title in panels:
        for k, name in enumerate(names):
            xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(group))]
            rows = [_get(figures, c, name) for c in group]
            ys = [value(f) if f and value(f) is not None else float("nan") for f in rows]
            style = {"color": colors(k), "label": CONTENDERS[name].label, "width": width}
            if name == "deepseek_pool":
                style.update(edgecolor="black", linewidth=1.2)
            ax.bar(xs, ys, **style)
        ax.set_xticks(range(len(group)))
        ax.set_xticklabels([c.replace(" const", "\nconst") for c in group])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_ylim(0, 1.05)
    _save(plt, fig, axes[0], path, f"At DeepSeek's scale — {_machine(meta)}; medians of {meta['reps']}", bottom=0.1)
    return True


def _n_of(meta: Dict[str, Any], cell: str) -> Any:
    for c in meta.get("cells", []):
        if c["name"] == cell:
            return c["n"]
    return "?"
