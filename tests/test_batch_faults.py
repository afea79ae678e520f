"""The batch runner under the faults of issue 10: each numbered case, reproduced, then the spend cap.

Every test here failed on the runner before the fix; the case number is in its name.
"""

from __future__ import annotations

import ast
import datetime as dt
import errno
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from deepseek_pool import DeepSeekClient
from deepseek_pool.batch import jsonl, results_file
from deepseek_pool.batch.progress import BatchProgress
from deepseek_pool.batch.runner import Interrupter, run_batch
from deepseek_pool.cli.commands import EXIT_SPEND_CAP, main
from deepseek_pool.errors import ConfigurationError, SpendCapReached
from deepseek_pool.models import PRICES, ModelPrice, cost_of
from deepseek_pool.money.spend import SpendCap
from deepseek_pool.pool.pool import DeepSeekPool, DrainStopped
from deepseek_pool.testing import FakeDeepSeek

from .rawserver import RawServer, respond

KEY = "sk-batch-faults"
REPO = Path(__file__).resolve().parent.parent


def write_lines(path: Path, lines: List[Any]) -> Path:
    with open(path, "w", encoding="utf-8") as file:
        for line in lines:
            file.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def read_output(path: Path) -> List[Dict[str, Any]]:
    data = path.read_bytes()
    data.decode("utf-8")  # valid UTF-8, all of it
    return [json.loads(line) for line in data.splitlines()]


def successes(lines: List[Dict[str, Any]]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for line in lines:
        if line["error"] is None:
            counts[line["custom_id"]] = counts.get(line["custom_id"], 0) + 1
    return counts


def prompts(count: int, prefix: str = "c", **extra: Any) -> List[Dict[str, Any]]:
    return [{"custom_id": f"{prefix}{i}", "prompt": f"question {prefix}{i}", **extra} for i in range(count)]


@pytest.fixture
def fake() -> Iterator[FakeDeepSeek]:
    with FakeDeepSeek(seed=3) as server:
        yield server


def make_pool(base_url: str, *, workers: int = 4, retries: int = 0, **options: Any) -> DeepSeekPool:
    client = DeepSeekClient(KEY, base_url=base_url, max_retries=retries, timeout=10)
    return DeepSeekPool(client, max_workers=workers, **options)


def run(base_url: str, inp: Path, out: Path, *, retries: int = 0, pool_options: Any = None, **options: Any) -> Any:
    with make_pool(base_url, retries=retries, **(pool_options or {})) as pool:
        try:
            return run_batch(inp, out, pool, **options)
        finally:
            pool.client.close()


# -- 1. the lock guards the path, whatever the timing ----------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="file locks are POSIX here")
def test_1_a_run_that_opened_the_output_before_another_compacted_it_writes_to_the_file_at_the_path(
    fake: FakeDeepSeek, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.jsonl"
    first = write_lines(tmp_path / "a.jsonl", prompts(4))
    fake.script("500", "500")
    run(fake.base_url, first, out)  # two failures: the next run retries them, then compacts
    second = write_lines(tmp_path / "b.jsonl", prompts(4) + prompts(2, prefix="x"))

    opened, go = threading.Event(), threading.Event()
    b_thread: Dict[str, Any] = {}

    def pause(path: str) -> None:
        if threading.current_thread() is b_thread.get("thread") and not opened.is_set():
            opened.set()  # B has the file open, not yet locked: now A runs, start to end
            assert go.wait(10)

    monkeypatch.setattr(results_file, "_pause_before_lock", pause, raising=False)

    def run_b() -> None:
        try:
            b_thread["summary"] = run(fake.base_url, second, out)
        except BaseException as err:  # pragma: no cover - reported below
            b_thread["error"] = err

    thread = threading.Thread(target=run_b)
    b_thread["thread"] = thread
    thread.start()
    try:
        assert opened.wait(10), "run B never paused between open and lock"
        summary_a = run(fake.base_url, first, out)
        assert summary_a.compacted == 2  # A replaced the file B holds open
    finally:
        go.set()
        thread.join(10)
    assert "error" not in b_thread, b_thread.get("error")
    assert b_thread["summary"].tally.ok == 2
    lines = read_output(out)  # what is at the path, not a deleted file
    assert successes(lines) == {**{f"c{i}": 1 for i in range(4)}, "x0": 1, "x1": 1}


# -- 2. bounded parsing: too deep, too long, not JSON ---------------------------------------------------


def test_2_a_deeply_nested_or_too_long_input_line_is_an_error_line_and_the_rest_run(
    fake: FakeDeepSeek, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 4096)
    inp = tmp_path / "in.jsonl"
    with open(inp, "w", encoding="utf-8") as file:
        file.write(json.dumps({"custom_id": "a", "prompt": "fine"}) + "\n")
        file.write("[" * 1000 + "]" * 1000 + "\n")  # line 2: 2 KB of nested brackets
        file.write(json.dumps({"custom_id": "long", "prompt": "x" * 10_000}) + "\n")  # line 3: too long
        file.write(json.dumps({"custom_id": "b", "prompt": "also fine"}) + "\n")
    summary = run(fake.base_url, inp, tmp_path / "out.jsonl")
    lines = {line["custom_id"]: line for line in read_output(tmp_path / "out.jsonl")}
    assert set(lines) == {"a", "2", "3", "b"}
    assert lines["2"]["error"]["code"] == "JSONTooDeep" and "line 2" in lines["2"]["error"]["message"]
    assert lines["3"]["error"]["code"] == "LineTooLong" and "line 3" in lines["3"]["error"]["message"]
    assert (summary.tally.ok, summary.tally.failed) == (2, 2)


def test_2_a_deeply_nested_output_line_is_skipped_with_its_line_number_and_the_resume_goes_on(
    fake: FakeDeepSeek, tmp_path: Path
) -> None:
    inp = write_lines(tmp_path / "in.jsonl", prompts(3))
    out = tmp_path / "out.jsonl"
    run(fake.base_url, inp, out)
    data = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(data[0] + b"[" * 1000 + b"]" * 1000 + b"\n" + b"".join(data[1:]))
    fake.reset()
    warnings = io.StringIO()
    summary = run(fake.base_url, inp, out, progress=BatchProgress(warnings))
    assert fake.stats.requests == 0 and summary.skipped == 3 and summary.complete
    assert "line 2" in warnings.getvalue() and "deep" in warnings.getvalue()
    assert len(read_output(out)) == 3  # the compaction dropped the unreadable line


# -- 3. drain means drain ---------------------------------------------------------------------------------


def test_3_after_the_first_ctrl_c_no_retry_is_sent_and_refused_calls_are_left_to_do(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", prompts(20))
    out = tmp_path / "out.jsonl"
    interrupter = Interrupter()
    seen: Dict[str, float] = {}
    with FakeDeepSeek(faults={"503": 1.0}) as fake:

        def press_when_all_wait_for_a_retry() -> None:
            deadline = time.monotonic() + 10
            while fake.stats.requests < 4 and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.1)  # the 4 calls now sleep before their retry (0.5 s or more)
            seen["requests"] = fake.stats.requests
            seen["at"] = time.monotonic()
            interrupter()

        presser = threading.Thread(target=press_when_all_wait_for_a_retry)
        presser.start()
        try:
            summary = run(fake.base_url, inp, out, retries=4, interrupter=interrupter)
        finally:
            presser.join(10)
        ended = time.monotonic()
        assert fake.stats.requests == seen["requests"] == 4  # not one request after the stop
    assert ended - seen["at"] < 1.0  # the backoff sleeps ended at once
    assert summary.interrupted == "stopped" and summary.tally.failed == 0 and summary.not_run == 20
    assert not out.exists() or out.read_bytes() == b""  # left to do, not written as failed


def test_3_a_pool_drain_ends_a_call_waiting_for_its_retry_with_drain_stopped(fake_deepseek: FakeDeepSeek) -> None:
    fake_deepseek.script("503")
    stop = threading.Event()
    with make_pool(fake_deepseek.base_url, workers=1, retries=3) as pool:
        timer = threading.Timer(0.15, stop.set)
        timer.start()
        try:
            results = list(pool.as_completed(["only one"], stop=stop))
        finally:
            timer.cancel()
            pool.client.close()
    assert fake_deepseek.stats.requests == 1
    assert isinstance(results[0].error, DrainStopped)


# -- 4. a compaction that does not fit -------------------------------------------------------------------


def test_4_a_failed_compaction_is_a_warning_naming_the_temporary_file_and_the_exit_reflects_the_items(
    deepseek_env: FakeDeepSeek, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = write_lines(tmp_path / "in.jsonl", prompts(5))
    out = tmp_path / "out.jsonl"
    argv = ["run", str(inp), "-o", str(out), "--max-retries", "0"]
    deepseek_env.script("500", "500")
    assert main(argv) == 1
    real_replace = os.replace

    def full_disk(source: Any, target: Any) -> None:
        if str(source).endswith(".compacting"):
            raise OSError(errno.ENOSPC, "No space left on device", str(source))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", full_disk)
    capsys.readouterr()
    assert main(argv) == 0  # every item is answered: the compaction is no reason to fail
    err = capsys.readouterr().err
    assert f"{out}.compacting" in err and "No space left on device" in err and "Traceback" not in err
    lines = read_output(out)
    assert successes(lines) == {f"c{i}": 1 for i in range(5)} and len(lines) == 7  # valid, stale lines kept
    assert not Path(f"{out}.compacting").exists()

    monkeypatch.setattr(os, "replace", real_replace)
    deepseek_env.reset()
    assert main(argv) == 0  # nothing to do: the compaction is finished
    assert deepseek_env.stats.requests == 0 and len(read_output(out)) == 5


# -- 5. output that UTF-8 cannot carry ---------------------------------------------------------------------


def test_5_a_lone_surrogate_in_an_answer_or_a_custom_id_is_written_as_valid_utf8_and_read_back(
    tmp_path: Path,
) -> None:
    body = (
        b'{"id": "x", "object": "chat.completion", "model": "deepseek-flash", "choices": [{"index": 0, '
        b'"message": {"role": "assistant", "content": "half a pair: \\ud83d"}, "finish_reason": "stop"}]}'
    )
    server = RawServer(lambda conn, request: conn.sendall(respond(200, body)))
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        '{"custom_id": "a", "prompt": "p"}\n{"custom_id": "lone \\udc80", "prompt": "q"}\n{"prompt": "r"}\n',
        encoding="ascii",
    )
    out = tmp_path / "out.jsonl"
    with server as (host, port):
        summary = run(f"http://{host}:{port}", inp, out)
        assert summary.complete and summary.tally.ok == 3
        lines = read_output(out)  # valid UTF-8 JSON lines
        assert {line["custom_id"] for line in lines} == {"a", "lone \udc80", "3"}
        assert all(
            line["response"]["body"]["choices"][0]["message"]["content"] == "half a pair: \ud83d" for line in lines
        )
        before = server.requests
        again = run(f"http://{host}:{port}", inp, out)  # the resume reads every line back
        assert again.skipped == 3 and again.tally.ok == 0 and server.requests == before == 3


# -- 6. options and paths checked before the first request -------------------------------------------------


def test_6_an_empty_model_and_an_output_that_is_not_a_regular_file_are_refused_before_sending(
    deepseek_env: FakeDeepSeek, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = write_lines(tmp_path / "in.jsonl", prompts(3))
    assert main(["run", str(inp), "-o", str(tmp_path / "out.jsonl"), "--model", ""]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["run", str(inp), "-o", os.devnull]) == 2
    assert "not a regular file" in capsys.readouterr().err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["run", str(inp), "-o", str(fifo)]) == 2  # refused, not blocked waiting for a reader
    assert "not a regular file" in capsys.readouterr().err
    assert deepseek_env.stats.requests == 0


@pytest.mark.parametrize("source", ["-", "/dev/stdin"])
def test_6_requests_can_come_from_a_pipe(source: str, fake: FakeDeepSeek, tmp_path: Path) -> None:
    lines = "".join(json.dumps(item) + "\n" for item in prompts(3))
    env = dict(os.environ, PYTHONPATH=str(REPO), DEEPSEEK_API_KEY=KEY, DEEPSEEK_BASE_URL=fake.base_url)
    done = subprocess.run(
        [sys.executable, "-m", "deepseek_pool", "run", source, "-o", "out.jsonl", "-q"],
        input=lines,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert successes(read_output(tmp_path / "out.jsonl")) == {"c0": 1, "c1": 1, "c2": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # the spooled copy is gone


# -- 7. batch urls ---------------------------------------------------------------------------------------------


def test_7_batch_urls_go_to_chat_beta_chat_and_fim_and_any_other_is_an_error_line(
    fake: FakeDeepSeek, tmp_path: Path
) -> None:
    prefix = [{"role": "user", "content": "Write a haiku"}, {"role": "assistant", "content": "An old", "prefix": True}]
    inp = write_lines(
        tmp_path / "in.jsonl",
        [
            {
                "custom_id": "v1",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": "a"}]},
            },
            {
                "custom_id": "plain",
                "url": "/chat/completions",
                "body": {"messages": [{"role": "user", "content": "b"}]},
            },
            {"custom_id": "beta", "method": "POST", "url": "/beta/chat/completions", "body": {"messages": prefix}},
            {"custom_id": "fim", "url": "/beta/completions", "body": {"prompt": "def f(", "suffix": "return 1"}},
            {"custom_id": "other", "url": "/v1/embeddings", "body": {"input": "x"}},
        ],
    )
    summary = run(fake.base_url, inp, tmp_path / "out.jsonl")
    lines = {line["custom_id"]: line for line in read_output(tmp_path / "out.jsonl")}
    assert {cid for cid, line in lines.items() if line["error"] is None} == {"v1", "plain", "beta", "fim"}
    assert lines["other"]["error"]["code"] == "ValueError" and "/v1/embeddings" in lines["other"]["error"]["message"]
    assert lines["fim"]["response"]["body"]["choices"][0]["text"] == FakeDeepSeek.fim_answer_for("def f(", "return 1")
    paths = sorted(r.path for r in fake.received)
    assert paths == sorted(["/chat/completions", "/chat/completions", "/beta/chat/completions", "/beta/completions"])
    assert summary.tally.ok == 4 and summary.tally.failed == 1


# -- 8. foreign lines in the output are named on resume -----------------------------------------------------


def test_8_a_resume_names_the_output_lines_it_could_not_read(fake: FakeDeepSeek, tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", prompts(3))
    out = tmp_path / "out.jsonl"
    run(fake.base_url, inp, out)
    data = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(data[0] + b"appended by someone else\n" + data[1] + b'{"no": "custom_id"}\n' + data[2])
    warnings = io.StringIO()
    summary = run(fake.base_url, inp, out, progress=BatchProgress(warnings))
    text = warnings.getvalue()
    assert "line 2" in text and "line 4" in text and "not valid JSON" in text
    assert summary.unreadable == 2 and summary.skipped == 3


# -- the spend cap ------------------------------------------------------------------------------------------------

PEAK = dt.datetime(2026, 11, 23, 2, tzinfo=dt.UTC)  # a Monday, 02:00 UTC
OFF_PEAK = dt.datetime(2026, 11, 22, 2, tzinfo=dt.UTC)  # a Sunday


def test_spend_cap_reserves_at_the_peak_or_off_peak_rate_and_settles_with_usage() -> None:
    from deepseek_pool.types import Usage

    price = PRICES["deepseek-flash"]
    one = cost_of(price, prompt_cache_hit_tokens=0, prompt_cache_miss_tokens=1000, completion_tokens=1000, when=PEAK)
    cap = SpendCap(2.5 * one, clock=lambda: PEAK)
    first = cap.reserve("deepseek-flash", prompt_tokens=1000, completion_tokens=1000)
    cap.reserve("deepseek-flash", prompt_tokens=1000, completion_tokens=1000)
    with pytest.raises(SpendCapReached):
        cap.reserve("deepseek-flash", prompt_tokens=1000, completion_tokens=1000)  # 3 would pass 2.5
    usage = Usage.from_dict({"prompt_tokens": 1000, "completion_tokens": 10, "prompt_cache_miss_tokens": 1000})
    cap.settle(first, usage=usage)  # it cost far less than it held
    cap.reserve("deepseek-flash", prompt_tokens=1000, completion_tokens=1000)  # now it fits
    assert cap.refused == 1 and cap.started == 3

    off = SpendCap(2.5 * one, clock=lambda: OFF_PEAK)
    for _ in range(5):  # half price: five fit where two did
        off.reserve("deepseek-flash", prompt_tokens=1000, completion_tokens=1000)
    with pytest.raises(SpendCapReached):
        off.reserve("deepseek-flash", prompt_tokens=1000, completion_tokens=1000)


def test_spend_cap_refuses_an_unknown_price_up_front_unless_prices_are_given(fake: FakeDeepSeek) -> None:
    client = DeepSeekClient(KEY, base_url=fake.base_url, model="mystery-model")
    with pytest.raises(ConfigurationError, match="no price is known for model 'mystery-model'"):
        DeepSeekPool(client, max_cost=1.0)
    given = {"mystery-model": ModelPrice(0.1, 1.0, 2.0, off_peak_factor=1.0)}
    with DeepSeekPool(client, max_cost=1.0, prices=given) as pool:
        assert pool.spend is not None and pool.spend.price("mystery-model") is given["mystery-model"]
    client.close()


def test_the_spend_cap_stops_the_run_then_a_rerun_with_a_higher_cap_finishes_the_rest(
    deepseek_env: FakeDeepSeek, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_prompts = [
        {"custom_id": f"c{i}", "prompt": f"question {i}: " + "word " * 800, "max_tokens": 100} for i in range(40)
    ]
    inp = write_lines(tmp_path / "in.jsonl", long_prompts)
    out = tmp_path / "out.jsonl"
    # Each call spends about 1000 prompt tokens ($0.0003 at the peak rate, half off-peak): room for 10 to 25.
    cap = 0.004
    summary_file = tmp_path / "summary.json"
    status = main(["run", str(inp), "-o", str(out), "--max-cost", str(cap), "--json-summary", str(summary_file)])
    err = capsys.readouterr().err
    assert status == EXIT_SPEND_CAP == 3, err
    assert "stopped by the spend cap" in err and "Traceback" not in err
    lines = read_output(out)
    answered = {line["custom_id"] for line in lines if line["error"] is None}
    assert 5 <= len(answered) < 40 and len(lines) == len(answered)  # nothing written for the items not started
    assert deepseek_env.stats.requests == len(answered)  # no call started past the cap
    spent = sum(
        cost_of(
            PRICES["deepseek-flash"],
            prompt_cache_hit_tokens=line["response"]["body"]["usage"]["prompt_cache_hit_tokens"],
            prompt_cache_miss_tokens=line["response"]["body"]["usage"]["prompt_cache_miss_tokens"],
            completion_tokens=line["response"]["body"]["usage"]["completion_tokens"],
        )
        for line in lines
    )
    assert spent <= cap  # FakeDeepSeek's usage figures, priced at this hour's rate
    report = json.loads(summary_file.read_text())
    assert report["capped"] is True and report["left"] == 40 - len(answered) and report["exit_status"] == 3
    assert report["done"] == len(answered) and report["cost_usd"] <= cap

    deepseek_env.reset()
    assert main(["run", str(inp), "-o", str(out), "--max-cost", "5"]) == 0
    resent = {r.body["messages"][-1]["content"].split(":")[0].split()[-1] for r in deepseek_env.received}
    answered = {cid[1:] for cid in answered}
    assert not resent & answered and len(resent) == 40 - len(answered)
    assert successes(read_output(out)) == {f"c{i}": 1 for i in range(40)}


def test_a_run_with_a_cap_and_a_model_without_a_price_is_refused_before_sending(
    deepseek_env: FakeDeepSeek, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = write_lines(
        tmp_path / "in.jsonl", [{"prompt": "a", "model": "deepseek-flash"}, {"prompt": "b", "model": "x-1"}]
    )
    out = tmp_path / "out.jsonl"
    assert main(["run", str(inp), "-o", str(out), "--max-cost", "1"]) == 2
    assert "no price is known for model 'x-1'" in capsys.readouterr().err
    assert deepseek_env.stats.requests == 0
    assert main(["run", str(inp), "-o", str(out), "--max-cost", "1", "--price", "x-1=0.01,0.3,1.2"]) in (0, 1)
    assert deepseek_env.stats.requests == 2


# -- the summary, and the import arrow -------------------------------------------------------------------------


def test_the_json_summary_gives_done_failed_left_tokens_cache_share_cost_and_time(
    deepseek_env: FakeDeepSeek, tmp_path: Path
) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [*prompts(3), "not json"])
    target = tmp_path / "summary.json"
    assert main(["run", str(inp), "-o", str(tmp_path / "out.jsonl"), "-q", "--json-summary", str(target)]) == 1
    report = json.loads(target.read_text())
    assert (report["done"], report["failed"], report["left"], report["items"]) == (3, 1, 0, 4)
    assert report["prompt_tokens"] > 0 and report["completion_tokens"] > 0
    assert 0 <= report["cache_hit_share"] <= 1 and report["cost_usd"] > 0 and report["wall_seconds"] >= 0
    assert report["exit_status"] == 1 and report["complete"] is False


def test_progress_does_not_import_batch() -> None:
    tree = ast.parse((REPO / "deepseek_pool" / "batch" / "progress.py").read_text(encoding="utf-8"))
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert not any(name.endswith("runner") for name in imported), imported
