"""Smoke test of the benchmark harness (benchmarks/), so it cannot rot between releases.

Runs the real harness -- load server process, one child process per contender, answer
checks, server-side connection counts, the Markdown report -- at a tiny N for the
contenders that need no extra packages. It asserts what the harness measures, never
how fast anything is (timings on a shared machine are not test material).
"""

from __future__ import annotations

import importlib.util
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import urllib3

from benchmarks import cap, harness, protocol, report
from benchmarks.cap import CapCell
from benchmarks.contenders import CONTENDERS as LABELS
from benchmarks.harness import Cell, Figures, LoadServer, Run
from benchmarks.run import run_benchmark
from deepseek_pool.budget.rules import rate_limit_signal

CONTENDERS = ["deepseek_pool", "urllib3", "requests"]
CHAT = Cell("C=4", "chat", 24, 4, latency=0.005)
STREAM = Cell("stream", "stream", 6, 3, latency=0.005, chunks=5, gap=0.001)
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    return run_benchmark([CHAT, STREAM], CONTENDERS, reps=1, out=out, mode="smoke", chart=False, timeout=TIMEOUT)


def _figures(bench: Dict[str, Any], cell: str) -> Dict[str, Figures]:
    return {f.contender: f for f in bench["figures"] if f.cell == cell}


def test_every_contender_gets_every_answer_right(bench: Dict[str, Any]) -> None:
    runs: List[Run] = bench["runs"]
    assert {(r.cell, r.contender) for r in runs} == {(c.name, n) for c in (CHAT, STREAM) for n in CONTENDERS}
    for run in runs:
        assert run.error is None, run.error
        cell = CHAT if run.cell == CHAT.name else STREAM
        assert run.client["ok"] == cell.n and run.client["wrong"] == 0 and not run.client["errors"], run
        assert run.server["requests"] == cell.n  # the warm-up call is not counted
        assert run.client["cpu"] > 0 and run.client["maxrss_kb"] > 0 and run.server["cpu"] >= 0


def test_connections_are_counted_at_the_server_and_reused(bench: Dict[str, Any]) -> None:
    for cell in (CHAT, STREAM):
        for name, fig in _figures(bench, cell.name).items():
            # each contender keeps at most C connections and reuses them (never one per request)
            assert 1 <= fig.connections <= cell.concurrency, (cell.name, name, fig.connections)
            assert fig.pool_full_warnings == 0


def test_streaming_figures_are_derived(bench: Dict[str, Any]) -> None:
    for name, fig in _figures(bench, STREAM.name).items():
        assert fig.cpu_ms_per_chunk is not None and fig.cpu_ms_per_chunk > 0, name
        assert fig.ttfc_overhead_ms is not None and fig.ttfc_overhead_ms > -1000 * STREAM.latency, name
    raw = [r for r in bench["runs"] if r.cell == STREAM.name and r.contender == "urllib3"]
    assert raw[0].client["chunks"] == STREAM.n * STREAM.chunks  # every piece arrived as its own chunk


def test_the_report_names_every_contender_and_the_floor_ratio_is_one(bench: Dict[str, Any]) -> None:
    floor = _figures(bench, CHAT.name)["urllib3"]
    assert floor.cpu_ratio == pytest.approx(1.0)
    text = bench["markdown"]
    for name in CONTENDERS:
        assert LABELS[name].label in text
    assert "CPU ms/request C=4" in text and "Streaming:" in text
    assert bench["meta"]["machine"]["date"] in text  # figures without their date and machine are useless


def test_the_consuming_thread_is_measured_apart(bench: Dict[str, Any]) -> None:
    for name, fig in _figures(bench, CHAT.name).items():
        consumer = fig.extra["consumer_cpu_ms_per_request"]
        # one thread's CPU is part of the process's (rusage counts in µs, the thread clock in ns)
        assert 0 < consumer <= fig.cpu_ms_per_request + 1e-3 / CHAT.n, name
    assert "of which the consuming thread" in bench["markdown"]


def _run(contender: str, rep: int, cpu: float) -> Run:
    client = {"wall": 1.0, "cpu": cpu, "cpu_consumer": cpu / 4, "maxrss_kb": 1024, "ok": 10, "wrong": 0}
    client.update({"errors": {}, "pool_full_warnings": 0})
    server = {"connections_used": 2, "connections_opened": 2, "requests": 10, "cpu": 0.1}
    return Run("C=2", contender, rep, client, server)


def test_single_runs_are_compared_with_the_floor_of_their_own_repetition() -> None:
    cell = Cell("C=2", "chat", 10, 2, latency=0.01)
    # rep 1 ran on a slower moment for both: same-repetition ratios 1.2 and 1.1; the
    # ratio of the medians (1.3 / 1.15) is neither
    runs = [_run("urllib3", 0, 1.0), _run("deepseek_pool", 0, 1.2), _run("urllib3", 1, 1.3)]
    runs.append(_run("deepseek_pool", 1, 1.43))
    figures = {f.contender: f for f in harness.summarize([cell], runs)}
    assert figures["urllib3"].extra["cpu_ratio_range"] == [1.0, 1.0]
    assert figures["deepseek_pool"].extra["cpu_ratio_range"] == pytest.approx([1.1, 1.2])
    assert figures["deepseek_pool"].cpu_ratio == pytest.approx(1.315 / 1.15)
    assert figures["deepseek_pool"].extra["consumer_cpu_ms_per_request"] == pytest.approx(1000 * 1.315 / 4 / 10)
    row = next(line for line in report.chat_table(list(figures.values()), [cell]) if "DeepSeekPool" in line)
    assert "| 32.875 | 1.14 | 1.10-1.20 |" in row


def test_results_are_written_as_markdown_and_json(bench: Dict[str, Any], tmp_path: Path) -> None:
    figures, meta = bench["figures"], bench["meta"]
    harness.save_json(tmp_path / "raw.json", [CHAT, STREAM], bench["runs"], figures, meta)
    data = json.loads((tmp_path / "raw.json").read_text())
    assert len(data["runs"]) == len(bench["runs"]) and data["meta"]["mode"] == "smoke"


def test_a_wrong_answer_is_caught() -> None:
    class WrongEveryThird(Cell):
        def server_config(self, seed: int) -> Dict[str, Any]:
            return {**super().server_config(seed), "wrong_every": 3}

    cell = WrongEveryThird("C=4", "chat", 12, 4, latency=0.0)
    with LoadServer() as server:
        run = harness.run_one(server, cell, "urllib3", 0, TIMEOUT)
    assert run.error is None, run.error
    assert run.client["wrong"] == 4 and run.client["ok"] == 8


def test_faults_are_injected_and_retries_counted() -> None:
    cell = Cell("faults", "faults", 20, 4, latency=0.0, faults={"503": 0.3})
    with LoadServer() as server:
        run = harness.run_one(server, cell, "urllib3", 0, TIMEOUT)
    assert run.error is None, run.error
    injected = run.server["faults"]["503"]
    given_up = sum(run.client["errors"].values())
    assert injected > 0
    # each 503 was retried (one more request) unless it was a call's final answer
    assert run.server["requests"] == cell.n + injected - given_up
    assert run.client["ok"] + given_up == cell.n and run.client["wrong"] == 0


def test_chart_is_drawn_when_matplotlib_is_installed(bench: Dict[str, Any], tmp_path: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (pip install -e '.[bench]')")
    assert report.chart(tmp_path / "chart.png", bench["figures"], [CHAT, STREAM], bench["meta"])
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the cap cell, the storage cost and the load server's cap mode ----------------------

TINY_CAP = CapCell(n=48, cap=4, processes=2, workers=4, latency=0.02, jitter=0.25, ceiling=8, weights=(2, 1))


@pytest.fixture(scope="module")
def cap_bench(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("cap")
    return run_benchmark(
        [],
        [],
        reps=1,
        out=out,
        mode="smoke",
        chart=False,
        timeout=TIMEOUT,
        cap_cell=TINY_CAP,
        storage=True,
        storage_ops=200,
    )


def test_the_cap_cell_runs_every_arm_against_a_capped_server(cap_bench: Dict[str, Any]) -> None:
    rows = {row["arm"]: row for row in cap_bench["cap"]}
    assert set(rows) == set(cap.ARMS)
    for row in rows.values():
        assert "error" not in row, row
        assert row["wrong"] == 0 and row["ok"] + sum(row["errors"].values()) == TINY_CAP.n, row
        assert row["requests"] >= TINY_CAP.n and 0 <= row["rejected"] < row["requests"], row
        assert row["max_answering"] <= TINY_CAP.cap  # the server enforces its cap
        assert row["makespan"] > 0 and row["efficiency"] == pytest.approx(TINY_CAP.ideal / row["makespan"])
        assert len(row["per_process"]) == TINY_CAP.processes
    # the static split never exceeds the cap, so it is never answered 429; the shared budget completes everything
    assert rows["split"]["rejected"] == 0 and rows["split"]["ok"] == TINY_CAP.n
    assert rows["shared"]["ok"] == TINY_CAP.n
    text = cap_bench["markdown"]
    assert "Cap: the server answers 429" in text and all(label in text for label in cap.ARM_LABELS.values())


def test_the_storage_cost_is_measured_for_each_storage(cap_bench: Dict[str, Any]) -> None:
    rows = cap_bench["storage"]
    assert {(r["storage"], r["threads"]) for r in rows} == {(s, t) for s in ("memory://", "sqlite://") for t in (1, 64)}
    for row in rows:
        assert row["wall_us"] > 0 and row["cpu_us"] > 0 and row["ops"] > 0 and row["in_flight_after"] == 0
    assert "acquire + release" in cap_bench["markdown"]


def _post(base_url: str, i: int) -> Tuple[int, str]:
    http = urllib3.PoolManager()
    response = http.request(
        "POST", base_url + "/chat/completions", body=json.dumps(protocol.chat_body(i, False)).encode(), retries=False
    )
    return response.status, response.data.decode()


def test_the_load_server_names_its_cap_and_sends_the_sporadic_429_text() -> None:
    with LoadServer() as server:
        server.reset({"latency": 0.3, "max_concurrency": 1})
        with ThreadPoolExecutor(2) as executor:
            first = executor.submit(_post, server.base_url, 0)
            time.sleep(0.1)
            second = executor.submit(_post, server.base_url, 1)
            answers = sorted([first.result(timeout=10), second.result(timeout=10)])
        assert answers[0][0] == 200 and answers[1][0] == 429
        message = json.loads(answers[1][1])["error"]["message"]
        assert rate_limit_signal(message).named_cap == 1
        assert server.stats()["faults"]["cap"] == 1
        server.reset({"latency": 0.0, "faults": {"429": 1.0}})
        status, body = _post(server.base_url, 2)
        assert status == 429
        signal = rate_limit_signal(json.loads(body)["error"]["message"])
        assert signal.sporadic and not signal.concurrency


def test_pool_overhead_measures_items_threads_and_memory() -> None:
    from benchmarks import pool_overhead

    # Each kind in a process of its own, as the benchmark runs it: no other test's threads,
    # memory or CPU time are in its figures (and it counts only its executor's workers).
    rows = pool_overhead.run_all([4], 200, timeout=TIMEOUT, env=harness.child_env())
    assert [(r["kind"], r["ok"]) for r in rows] == [("pool", 200), ("executor", 200)]
    assert all(1 <= r["threads"] <= 4 for r in rows)  # threads start lazily: a stub may need fewer
    assert all(r["cpu_us_per_item"] > 0 and "kib_per_idle_thread" in r for r in rows)
    assert len(pool_overhead.table(rows)) == 3  # header, rule, one size


def test_deepseek_scale_cells_have_a_table_of_their_own() -> None:
    cell = harness.DEEPSEEK_SCALE_CELLS[-1]
    assert cell.deepseek_scale and cell.server_config(1)["jitter"] == 0.0
    assert all(c.name not in {f.name for f in harness.FULL_CELLS} for c in harness.DEEPSEEK_SCALE_CELLS)
    assert report.deepseek_scale_table([], [cell]) == []  # no figures, no table


def test_https_cells_run_over_tls_with_each_contender_trusting_a_throwaway_ca() -> None:
    chat = Cell("C=2 https", "chat", 8, 2, latency=0.0, tls=True)
    stream = Cell("stream https", "stream", 4, 2, latency=0.005, chunks=5, gap=0.001, tls=True)
    names = [
        n for n in ("urllib3", "requests", "aiohttp", "deepseek_pool", "deepseek_pool_relay") if LABELS[n].available()
    ]
    with harness.Servers() as servers:
        server = servers.for_cell(chat)
        assert server.base_url.startswith("https://") and server.ca is not None
        assert servers.for_cell(CHAT).base_url.startswith("http://")  # plain cells keep their own server
        ran = []
        for cell in (chat, stream):
            for name in harness.contenders_for(cell, names):
                run = harness.run_one(servers.for_cell(cell), cell, name, 0, TIMEOUT)
                assert run.error is None, (cell.name, name, run.error)
                assert run.client["ok"] == cell.n and not run.client["errors"], (cell.name, name, run.client)
                ran.append((cell.name, name))
    assert ("stream https", "deepseek_pool_relay") in ran and ("C=2 https", "deepseek_pool_relay") not in ran
