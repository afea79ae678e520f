"""The harness: a load server process, one child process per contender run, the figures.

Every run is ``(cell, contender, repetition)``: the server is reset to the cell's
configuration, a fresh child process makes the cell's calls with one contender
(:mod:`benchmarks.child`), and the server's counters (requests, TCP connections, its
own CPU) are read back. Repetitions are interleaved (rep 1 of every contender, then
rep 2 ...) and the contender order rotates, so drift on a shared machine is spread
over everyone. Every wait is bounded; a child that overruns is killed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Sequence

from benchmarks.contenders import CONTENDERS, FLOOR
from benchmarks.tls import make_certificates

REPO = Path(__file__).resolve().parent.parent
#: proxies, and the CA-bundle variables requests reads (with ``trust_env`` they win over a
#: session's ``verify``, so the HTTPS cells' CA could not be given the way each library takes it)
_DROP_ENV = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)


@dataclass(frozen=True)
class Cell:
    """One benchmark configuration."""

    name: str
    kind: str  # "chat", "stream" or "faults"
    n: int
    concurrency: int
    latency: float = 0.05
    chunks: int = 50
    gap: float = 0.002
    faults: Optional[Dict[str, float]] = None
    #: each answer's latency is drawn uniformly from ``latency * (1 +- jitter)``
    jitter: float = 0.0
    #: one of the cells at DeepSeek's own scale (:data:`DEEPSEEK_SCALE_CELLS`)
    deepseek_scale: bool = False
    #: the load server speaks HTTPS (a throwaway certificate each contender trusts)
    tls: bool = False

    @property
    def stream(self) -> bool:
        return self.kind == "stream"

    @property
    def ideal(self) -> float:
        """Seconds the batch takes with zero client overhead: ``ceil(N/C)`` rounds of the latency."""
        rounds = math.ceil(self.n / self.concurrency)
        per_call = self.latency + (self.chunks - 1) * self.gap if self.stream else self.latency
        return rounds * per_call

    def server_config(self, seed: int) -> Dict[str, Any]:
        return {
            "latency": self.latency,
            "jitter": self.jitter,
            "chunks": self.chunks,
            "gap": self.gap,
            "faults": self.faults,
            "seed": seed,
        }


FAULTS = {"503": 0.10, "429": 0.05, "reset": 0.02}

FULL_CELLS = (
    Cell("C=16", "chat", 2000, 16),
    Cell("C=64", "chat", 2000, 64),
    Cell("C=256", "chat", 2000, 256),
    Cell("stream", "stream", 200, 32),
    Cell("faults", "faults", 2000, 64, faults=FAULTS),
    Cell("C=64 https", "chat", 2000, 64, tls=True),
)
#: DeepSeek's operating point (issue 14): answers in seconds, up to ~2,500 requests in flight
#: per account, streams of many tiny events. Latencies carry jitter (uniform, ±25 % for 2 s,
#: ±20 % for 10 s) except the constant-latency cell, whose every wave returns in the same
#: millisecond (the thundering herd of 2,500 threads waking at once); its run-to-run spread is
#: reported. Streams: 150 events 20 ms apart after 0.5 s ± 20 % (the answer text, ~157
#: characters, caps a stream at ~156 non-empty pieces). Full mode runs them; ``--deepseek-scale``
#: runs only these.
DEEPSEEK_SCALE_CELLS = (
    Cell("C=1000@2s", "chat", 5000, 1000, latency=2.0, jitter=0.25, deepseek_scale=True),
    Cell("C=2500@2s", "chat", 10000, 2500, latency=2.0, jitter=0.25, deepseek_scale=True),
    Cell("C=1000@10s", "chat", 3000, 1000, latency=10.0, jitter=0.2, deepseek_scale=True),
    Cell("C=2500@10s", "chat", 5000, 2500, latency=10.0, jitter=0.2, deepseek_scale=True),
    Cell("S=250", "stream", 500, 250, latency=0.5, jitter=0.2, chunks=150, gap=0.02, deepseek_scale=True),
    Cell("S=500", "stream", 1000, 500, latency=0.5, jitter=0.2, chunks=150, gap=0.02, deepseek_scale=True),
    Cell(
        "S=250 https", "stream", 500, 250, latency=0.5, jitter=0.2, chunks=150, gap=0.02, deepseek_scale=True, tls=True
    ),
    Cell(
        "S=500 https", "stream", 1000, 500, latency=0.5, jitter=0.2, chunks=150, gap=0.02, deepseek_scale=True, tls=True
    ),
    Cell("C=2500@2s const", "chat", 5000, 2500, latency=2.0, deepseek_scale=True),
)
QUICK_CELLS = (
    Cell("C=16", "chat", 320, 16),
    Cell("C=64", "chat", 640, 64),
    Cell("C=256", "chat", 1024, 256),
    Cell("stream", "stream", 64, 32),
    Cell("faults", "faults", 640, 64, faults=FAULTS),
)


def child_env() -> Dict[str, str]:
    """The environment of every child: no proxies or CA-bundle overrides, no API settings, the repo importable."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV and not k.startswith(("DEEPSEEK_", "OPENAI_"))}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("PYTHONSTARTUP", None)
    return env


@contextlib.contextmanager
def import_root(package_dir: Optional[Path]) -> Iterator[Path]:
    """The working directory for children: the repo, or a shim that imports another ``deepseek_pool``.

    ``python -m`` puts the working directory first on ``sys.path``. For an A/B run of
    a change, the shim holds only a link to ``package_dir/deepseek_pool``, so that
    package wins while ``benchmarks`` still comes from this repo.
    """
    if package_dir is None:
        yield REPO
        return
    package = Path(package_dir).resolve() / "deepseek_pool"
    if not (package / "__init__.py").is_file():
        raise FileNotFoundError(f"{package} is not a deepseek_pool package")
    with tempfile.TemporaryDirectory(prefix="bench-import-") as shim:
        (Path(shim) / "deepseek_pool").symlink_to(package, target_is_directory=True)
        yield Path(shim)


class _Lines:
    """Lines of a child's stdout, read by a thread so that every wait can have a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._queue: queue.Queue[Optional[str]] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for line in self._stream:
                self._queue.put(line.rstrip("\n"))
        except (OSError, ValueError):
            pass  # closed under us
        self._queue.put(None)

    def close(self, timeout: float = 5.0) -> None:
        """After the process has exited: let the reader reach EOF, then close the pipe."""
        self._thread.join(timeout)
        self._stream.close()

    def next(self, timeout: float, prefix: str = "") -> str:
        """The next line starting with ``prefix``; raise on EOF or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {prefix or 'line'} within {timeout:.0f} s")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise EOFError(f"the process ended before printing {prefix or 'a line'}")
            if line.startswith(prefix):
                return line


class LoadServer:
    """The load server process (:mod:`benchmarks.loadserver`), driven over its stdin/stdout.

    With ``tls`` it serves HTTPS with a throwaway certificate (:mod:`benchmarks.tls`) made in
    a temporary directory that lives as long as the server; :attr:`ca` is the CA to trust.
    """

    def __init__(self, timeout: float = 30.0, *, tls: bool = False) -> None:
        self.timeout = timeout
        self.ca: Optional[str] = None
        self._certificates: Optional[tempfile.TemporaryDirectory[str]] = None
        command = [sys.executable, "-m", "benchmarks.loadserver"]
        if tls:
            self._certificates = tempfile.TemporaryDirectory(prefix="bench-tls-")
            made = make_certificates(Path(self._certificates.name))
            self.ca = made.ca
            command += ["--tls-cert", made.cert, "--tls-key", made.key]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            cwd=str(REPO),
            env=child_env(),
        )
        assert self.process.stdout is not None
        self._lines = _Lines(self.process.stdout)
        try:
            ready = self._lines.next(timeout, "READY")
        except BaseException:
            self.close()
            raise
        self.port = int(ready.split()[1])
        self.base_url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def command(self, cmd: str, **fields: Any) -> Dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.process.stdin.flush()
        answer: Dict[str, Any] = json.loads(self._lines.next(self.timeout, "{"))
        if "error" in answer:
            raise RuntimeError(f"load server: {answer['error']}")
        return answer

    def reset(self, config: Dict[str, Any]) -> None:
        self.command("reset", config=config)

    def stats(self) -> Dict[str, Any]:
        return self.command("stats")

    def close(self) -> None:
        process = self.process
        assert process.stdin is not None
        if process.poll() is None:
            try:
                process.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
                process.stdin.flush()
                process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                process.kill()
                process.wait(timeout=5)
        with contextlib.suppress(OSError):  # the server is gone already: nothing to flush to
            process.stdin.close()
        self._lines.close()
        if self._certificates is not None:
            self._certificates.cleanup()

    def __enter__(self) -> LoadServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Servers:
    """The load servers of a run: one for plain HTTP, and one for HTTPS once a cell needs it."""

    def __init__(self) -> None:
        self._plain: Optional[LoadServer] = None
        self._tls: Optional[LoadServer] = None

    def for_cell(self, cell: Cell) -> LoadServer:
        if cell.tls:
            if self._tls is None:
                self._tls = LoadServer(tls=True)
            return self._tls
        if self._plain is None:
            self._plain = LoadServer()
        return self._plain

    def close(self) -> None:
        for server in (self._plain, self._tls):
            if server is not None:
                server.close()

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class Run:
    """One (cell, contender, repetition): the child's report and the server's counters."""

    cell: str
    contender: str
    rep: int
    client: Dict[str, Any]
    server: Dict[str, Any]
    error: Optional[str] = None


def run_one(server: LoadServer, cell: Cell, contender: str, rep: int, timeout: float, cwd: Path = REPO) -> Run:
    """Run one contender once through a child process; never raises for a contender's failure."""
    spec = {
        "contender": contender,
        "base_url": server.base_url,
        "n": cell.n,
        "concurrency": cell.concurrency,
        "stream": cell.stream,
        "ca_file": server.ca,
    }
    # Warm-up against a plain, fault-free server; the cell's configuration starts at GO.
    server.reset({"latency": 0.0, "chunks": cell.chunks, "gap": 0.0})
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.child", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(cwd),
        env=child_env(),
    )
    assert process.stdout is not None and process.stdin is not None and process.stderr is not None
    stdout, stdin, stderr = process.stdout, process.stdin, process.stderr
    lines = _Lines(stdout)
    errors: List[str] = []
    stderr_thread = threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)
    stderr_thread.start()
    try:
        lines.next(timeout, "READY")
        server.reset(cell.server_config(seed=1000 + rep))
        stdin.write("GO\n")
        stdin.flush()
        line = lines.next(timeout, "RESULT ")
        client = json.loads(line[len("RESULT ") :])
        server_stats = server.stats()
        process.wait(timeout=30)
        return Run(cell.name, contender, rep, client, server_stats)
    except (TimeoutError, EOFError, OSError, ValueError, subprocess.TimeoutExpired) as err:
        process.kill()
        process.wait(timeout=10)
        stderr_thread.join(timeout=5)
        detail = "".join(errors).strip().splitlines()[-3:]
        return Run(cell.name, contender, rep, {}, {}, error=f"{type(err).__name__}: {err}: {' | '.join(detail)}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        with contextlib.suppress(OSError):  # the child is gone: nothing to flush to
            stdin.close()
        lines.close()
        stderr_thread.join(timeout=5)
        stderr.close()


def contenders_for(cell: Cell, names: Sequence[str]) -> List[str]:
    """The contenders that take part in ``cell`` (only those that retry face faults)."""
    chosen = []
    for name in names:
        contender = CONTENDERS[name]
        if cell.stream and not contender.streams:
            continue
        if contender.stream_only and not cell.stream:
            continue
        if cell.kind == "faults" and not contender.retries:
            continue
        chosen.append(name)
    return chosen


def run_cells(
    cells: Sequence[Cell],
    names: Sequence[str],
    reps: int,
    *,
    timeout: float = 300.0,
    log: Any = None,
    package_dir: Optional[Path] = None,
) -> List[Run]:
    """Run every cell for every available contender ``reps`` times; the raw runs."""
    missing = [name for name in names if not CONTENDERS[name].available()]
    if missing and log:
        log(f"skipping (packages missing): {', '.join(missing)}")
    names = [name for name in names if name not in missing]
    runs: List[Run] = []
    with Servers() as servers, import_root(package_dir) as cwd:
        for rep in range(reps):
            for cell in cells:
                order = contenders_for(cell, names)
                shift = rep % len(order) if order else 0
                for name in order[shift:] + order[:shift]:
                    run = run_one(servers.for_cell(cell), cell, name, rep, timeout, cwd)
                    runs.append(run)
                    if log:
                        log(describe(cell, run))
    return runs


def describe(cell: Cell, run: Run) -> str:
    if run.error:
        return f"{cell.name:7} {run.contender:17} rep {run.rep}: FAILED {run.error}"
    c, s = run.client, run.server
    return (
        f"{cell.name:7} {run.contender:17} rep {run.rep}: wall {c['wall']:.2f}s "
        f"cpu {1000 * c['cpu'] / cell.n:.2f} ms/req, ok {c['ok']}/{cell.n}, "
        f"conns {s['connections_used']}, server cpu {s['cpu']:.2f}s"
    )


@dataclass
class Figures:
    """Medians over the repetitions of one (cell, contender)."""

    cell: str
    contender: str
    runs: int
    failed_runs: int
    wall: float
    efficiency: float
    cpu_ms_per_request: float
    cpu_ratio: Optional[float]
    maxrss_mb: float
    connections: int
    connections_opened: int
    requests_sent: int
    ok: int
    wrong: int
    errors: int
    error_kinds: Dict[str, int]
    pool_full_warnings: int
    server_cpu_ms_per_request: float
    server_core_share: float
    ttfc_overhead_ms: Optional[float] = None
    cpu_ms_per_chunk: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(cells: Sequence[Cell], runs: Sequence[Run]) -> List[Figures]:
    """Medians per (cell, contender); CPU ratios to the urllib3 floor of the same cell."""
    figures: List[Figures] = []
    by_cell = {cell.name: cell for cell in cells}
    for cell in cells:
        names = []
        for run in runs:
            if run.cell == cell.name and run.contender not in names:
                names.append(run.contender)
        floor_cpu: Optional[float] = None
        cell_figures = []
        for name in names:
            mine = [r for r in runs if r.cell == cell.name and r.contender == name]
            good = [r for r in mine if not r.error]
            if not good:
                cell_figures.append(
                    Figures(
                        cell.name,
                        name,
                        len(mine),
                        len(mine),
                        math.nan,
                        math.nan,
                        math.nan,
                        None,
                        math.nan,
                        0,
                        0,
                        0,
                        0,
                        0,
                        cell.n,
                        {},
                        0,
                        math.nan,
                        math.nan,
                    )
                )
                continue
            walls = [r.client["wall"] for r in good]
            cpus = [r.client["cpu"] for r in good]
            # Counts (completed, failed and how, requests sent) come from one run, the one
            # with the median number completed, so that they add up; wrong answers are the
            # worst of all runs (there should be none anywhere).
            middle = sorted(good, key=lambda r: r.client["ok"])[len(good) // 2]
            wall = _median(walls)
            cpu_ms = 1000 * _median(cpus) / cell.n
            fig = Figures(
                cell=cell.name,
                contender=name,
                runs=len(mine),
                failed_runs=len(mine) - len(good),
                wall=wall,
                efficiency=by_cell[cell.name].ideal / wall if wall > 0 else math.nan,
                cpu_ms_per_request=cpu_ms,
                cpu_ratio=None,
                maxrss_mb=_median([r.client["maxrss_kb"] / 1024 for r in good]),
                connections=int(_median([r.server["connections_used"] for r in good])),
                connections_opened=int(_median([r.server["connections_opened"] for r in good])),
                requests_sent=middle.server["requests"],
                ok=middle.client["ok"],
                wrong=max(r.client["wrong"] for r in good),
                errors=sum(middle.client["errors"].values()),
                error_kinds=dict(middle.client["errors"]),
                pool_full_warnings=max(r.client["pool_full_warnings"] for r in good),
                server_cpu_ms_per_request=1000 * _median([r.server["cpu"] for r in good]) / max(1, cell.n),
                server_core_share=max(r.server["cpu"] / r.client["wall"] for r in good if r.client["wall"] > 0),
            )
            fig.extra = {
                "cpu_user_ms_per_request": 1000 * _median([r.client.get("cpu_user", math.nan) for r in good]) / cell.n,
                "cpu_sys_ms_per_request": 1000 * _median([r.client.get("cpu_sys", math.nan) for r in good]) / cell.n,
                "context_switches_per_request": _median([r.client.get("context_switches", 0) for r in good]) / cell.n,
                "peak_threads": _median([r.client.get("peak_threads", 0) for r in good]),
                # the run-to-run spread (the constant-latency cell reports it)
                "cpu_ms_per_request_range": [1000 * min(cpus) / cell.n, 1000 * max(cpus) / cell.n],
                "efficiency_range": [cell.ideal / max(walls), cell.ideal / min(walls)] if min(walls) > 0 else None,
            }
            if cell.stream:
                overheads = [r.client["ttfc_ms"].get("mean", math.nan) - 1000 * cell.latency for r in good]
                fig.ttfc_overhead_ms = _median(overheads)
                fig.cpu_ms_per_chunk = 1000 * _median(cpus) / (cell.n * cell.chunks)
            consumer = [r.client["cpu_consumer"] for r in good if "cpu_consumer" in r.client]
            fig.extra["consumer_cpu_ms_per_request"] = 1000 * _median(consumer) / cell.n if consumer else None
            if name == FLOOR:
                floor_cpu = cpu_ms
            cell_figures.append(fig)
        floor_runs = [r for r in runs if r.cell == cell.name and r.contender == FLOOR and not r.error]
        floor_by_rep = {r.rep: r.client["cpu"] for r in floor_runs}
        for fig in cell_figures:
            if floor_cpu and not math.isnan(fig.cpu_ms_per_request):
                fig.cpu_ratio = fig.cpu_ms_per_request / floor_cpu
            # Each repetition runs every contender of a cell back to back, so the ratio to the
            # floor of the same repetition shows how far single runs spread on this machine.
            per_rep = [
                r.client["cpu"] / floor_by_rep[r.rep]
                for r in runs
                if r.cell == cell.name and r.contender == fig.contender and not r.error and floor_by_rep.get(r.rep)
            ]
            fig.extra["cpu_ratio_range"] = [min(per_rep), max(per_rep)] if per_rep else None
        figures.extend(cell_figures)
    return figures


def save_json(
    path: Path, cells: Sequence[Cell], runs: Sequence[Run], figures: Sequence[Figures], meta: Dict[str, Any]
) -> None:
    data = {
        "meta": meta,
        "cells": [asdict(cell) for cell in cells],
        "runs": [asdict(run) for run in runs],
        "figures": [asdict(fig) for fig in figures],
    }
    path.write_text(json.dumps(data, indent=1, default=str))
