"""The batch runner in-process, against FakeDeepSeek: output shape, malformed input, resume, repair, stop."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from deepseek_pool import DeepSeekClient
from deepseek_pool.batch.progress import BatchProgress, Tally, format_cost, format_summary
from deepseek_pool.batch.runner import BatchFileError, Interrupter, run_batch
from deepseek_pool.pool.pool import DeepSeekPool
from deepseek_pool.testing import FakeDeepSeek
from deepseek_pool.types import ChatCompletion

KEY = "sk-batch-test"


def write_lines(path: Path, lines: List[Any]) -> Path:
    with open(path, "w", encoding="utf-8") as file:
        for line in lines:
            file.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def read_output(path: Path) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def successes(lines: List[Dict[str, Any]]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for line in lines:
        if line["error"] is None:
            counts[line["custom_id"]] = counts.get(line["custom_id"], 0) + 1
    return counts


def prompts_sent(fake: FakeDeepSeek) -> List[str]:
    return [r.body["messages"][-1]["content"] for r in fake.received if r.path.endswith("/chat/completions")]


@pytest.fixture
def fake() -> Iterator[FakeDeepSeek]:
    with FakeDeepSeek(seed=5) as server:
        yield server


def make_pool(fake: FakeDeepSeek, *, workers: int = 4, retries: int = 0, key: str = KEY) -> DeepSeekPool:
    client = DeepSeekClient(key, base_url=fake.base_url, max_retries=retries, timeout=10)
    return DeepSeekPool(client, max_workers=workers)


def run(fake: FakeDeepSeek, tmp_path: Path, inp: Path, *, retries: int = 0, **options: Any) -> Any:
    with make_pool(fake, retries=retries) as pool:
        try:
            return run_batch(inp, tmp_path / "out.jsonl", pool, **options)
        finally:
            pool.client.close()


def test_every_input_form_gets_one_line_in_openai_batch_output_shape(fake: FakeDeepSeek, tmp_path: Path) -> None:
    inp = write_lines(
        tmp_path / "in.jsonl",
        [
            {"custom_id": "a", "prompt": "alpha"},
            {"custom_id": "b", "messages": [{"role": "user", "content": "beta"}], "max_tokens": 50},
            {
                "custom_id": "c",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "deepseek-flash", "messages": [{"role": "user", "content": "gamma"}]},
            },
            {"prompt": "delta"},  # line 4: custom_id "4"
            "",  # blank lines are not items, but they count for line numbers
            json.dumps("epsilon"),  # line 6: a bare prompt string
        ],
    )
    summary = run(fake, tmp_path, inp)
    lines = read_output(tmp_path / "out.jsonl")
    assert {line["custom_id"] for line in lines} == {"a", "b", "c", "4", "6"}
    assert len(lines) == 5 and summary.complete and summary.tally.ok == 5
    expected = {"a": "alpha", "b": "beta", "c": "gamma", "4": "delta", "6": "epsilon"}
    for line in lines:
        assert set(line) == {"id", "custom_id", "response", "error", "call"}  # OpenAI's keys + what the call did
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"]
        body = response["body"]  # the server's JSON, as received
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == FakeDeepSeek.answer_for(expected[line["custom_id"]])
    assert len({line["id"] for line in lines}) == 5
    assert any(r.body.get("max_tokens") == 50 for r in fake.received)


def test_malformed_lines_become_error_lines_and_the_rest_still_run(fake: FakeDeepSeek, tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    with open(inp, "wb") as file:
        file.write(b'{"custom_id": "ok1", "prompt": "fine"}\n')
        file.write(b"{not json\n")  # line 2
        file.write(b'{"custom_id": "both", "prompt": "x", "messages": []}\n')  # rejected by parse_request
        file.write(b'{"prompt": "\xff\xfe"}\n')  # line 4: not UTF-8
        file.write(b'{"custom_id": "ok2", "prompt": "also fine"}\n')
    summary = run(fake, tmp_path, inp)
    lines = {line["custom_id"]: line for line in read_output(tmp_path / "out.jsonl")}
    assert set(lines) == {"ok1", "2", "both", "4", "ok2"}
    assert lines["2"]["error"]["code"] == "JSONDecodeError" and "line 2" in lines["2"]["error"]["message"]
    assert lines["both"]["error"]["code"] == "ValueError" and "line 3" in lines["both"]["error"]["message"]
    assert lines["4"]["error"]["code"] == "UnicodeDecodeError"
    assert all(lines[c]["response"] is None for c in ("2", "both", "4"))
    assert lines["ok1"]["error"] is None and lines["ok2"]["error"] is None
    assert (summary.tally.ok, summary.tally.failed, summary.complete) == (2, 3, False)
    assert sorted(prompts_sent(fake)) == ["also fine", "fine"]


def test_duplicate_custom_ids_are_an_error_before_anything_is_sent(fake: FakeDeepSeek, tmp_path: Path) -> None:
    inp = write_lines(
        tmp_path / "in.jsonl",
        [
            {"custom_id": "x", "prompt": "1"},
            {"prompt": "2"},
            {"custom_id": "x", "prompt": "3"},
            {"custom_id": "2", "prompt": "4"},
        ],
    )
    with pytest.raises(BatchFileError) as caught:
        run(fake, tmp_path, inp)
    message = str(caught.value)
    assert "'x' (lines 1 and 3)" in message and "'2' (lines 2 and 4)" in message
    assert fake.stats.requests == 0
    assert not (tmp_path / "out.jsonl").exists()


def test_a_half_written_last_line_is_repaired_and_only_that_item_runs_again(fake: FakeDeepSeek, tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [{"custom_id": f"c{i}", "prompt": f"p{i}"} for i in range(6)])
    out = tmp_path / "out.jsonl"
    run(fake, tmp_path, inp)
    data = out.read_bytes()
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    torn_id = json.loads(last)["custom_id"]
    out.write_bytes(data[: len(data) - len(last) // 2])  # a crash in the middle of the last line
    fake.reset()
    warnings = io.StringIO()
    summary = run(fake, tmp_path, inp, progress=BatchProgress(warnings))
    assert summary.repaired == len(last) + 1 - len(last) // 2  # the torn tail, and nothing more
    assert "repaired" in warnings.getvalue() and "half-written" in warnings.getvalue()
    assert prompts_sent(fake) == [f"p{torn_id[1:]}"]
    lines = read_output(out)  # every line parses again
    assert successes(lines) == {f"c{i}": 1 for i in range(6)} and len(lines) == 6
    assert summary.skipped == 5 and summary.complete


def test_a_complete_last_line_missing_only_its_newline_is_kept(fake: FakeDeepSeek, tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [{"prompt": f"p{i}"} for i in range(3)])
    out = tmp_path / "out.jsonl"
    run(fake, tmp_path, inp)
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    fake.reset()
    summary = run(fake, tmp_path, inp)
    assert fake.stats.requests == 0 and summary.repaired == 0 and summary.skipped == 3
    assert successes(read_output(out)) == {"1": 1, "2": 1, "3": 1}


def test_failures_are_written_with_status_body_and_retried_on_resume_then_compacted(
    fake: FakeDeepSeek, tmp_path: Path
) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [{"custom_id": f"c{i}", "prompt": f"p{i}"} for i in range(5)])
    out = tmp_path / "out.jsonl"
    fake.script("500", "503")  # no retries: the first two calls fail
    first = run(fake, tmp_path, inp)
    assert (first.tally.ok, first.tally.failed, first.complete) == (3, 2, False)
    failed = [line for line in read_output(out) if line["error"] is not None]
    assert {line["error"]["code"] for line in failed} == {"InternalServerError", "ServiceUnavailableError"}
    for line in failed:
        assert line["response"]["status_code"] in (500, 503) and line["response"]["request_id"]
        assert "error" in line["response"]["body"]  # DeepSeek's error JSON, kept whole

    fake.reset()
    skipped = run(fake, tmp_path, inp, retry_failed=False)
    assert fake.stats.requests == 0 and skipped.skipped_failed == 2 and not skipped.complete

    second = run(fake, tmp_path, inp)
    assert fake.stats.requests == 2 and second.complete and second.compacted == 2
    lines = read_output(out)
    assert len(lines) == 5 and all(line["error"] is None for line in lines)  # one line per custom_id
    assert successes(lines) == {f"c{i}": 1 for i in range(5)}
    assert not (tmp_path / "out.jsonl.compacting").exists()


def test_model_override_replaces_the_model_of_every_line(fake: FakeDeepSeek, tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [{"prompt": "a", "model": "deepseek-v4-pro"}, {"prompt": "b"}])
    run(fake, tmp_path, inp, model="deepseek-chat")
    assert [r.body["model"] for r in fake.received] == ["deepseek-chat", "deepseek-chat"]


def test_a_graceful_stop_saves_every_call_already_sent_and_sends_no_more(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [{"prompt": f"p{i}"} for i in range(40)])
    interrupter = Interrupter()
    with FakeDeepSeek(latency=0.3) as fake:
        timer = threading.Timer(0.45, interrupter)  # the first Ctrl-C, in the second wave of calls
        timer.start()
        try:
            summary = run(fake, tmp_path, inp, interrupter=interrupter)
        finally:
            timer.cancel()
        sent = fake.stats.requests
        assert fake.stats.in_flight == 0
    lines = read_output(tmp_path / "out.jsonl")
    assert summary.interrupted == "stopped"
    assert len(lines) == sent == summary.tally.ok  # nothing sent was lost
    assert 4 <= sent < 40 and summary.not_run == 40 - sent
    assert not summary.complete


def test_interrupter_second_press_raises_but_never_in_the_middle_of_a_line() -> None:
    interrupter = Interrupter()
    interrupter()
    assert interrupter.stop.is_set()
    interrupter._begin_write()
    interrupter()  # arrives while a line is written: deferred
    with pytest.raises(KeyboardInterrupt):
        interrupter._end_write()
    with pytest.raises(KeyboardInterrupt):
        interrupter()


def test_a_rejected_key_stops_the_run_at_once(tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [{"prompt": f"p{i}"} for i in range(200)])
    with FakeDeepSeek(api_key="the-right-key") as fake:
        with make_pool(fake, key="a-wrong-key") as pool:
            summary = run_batch(inp, tmp_path / "out.jsonl", pool)
            pool.client.close()
        assert fake.stats.requests <= pool.window + pool.max_workers
    assert summary.aborted is not None and "401" in summary.aborted
    assert summary.interrupted is None and summary.not_run > 0 and not summary.complete


@pytest.mark.skipif(os.name != "posix", reason="file locks are POSIX here")
def test_an_output_file_in_use_by_another_run_is_refused(fake: FakeDeepSeek, tmp_path: Path) -> None:
    import fcntl

    inp = write_lines(tmp_path / "in.jsonl", [{"prompt": "p"}])
    with open(tmp_path / "out.jsonl", "ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        with pytest.raises(BatchFileError, match="another deepseek-pool run"):
            run(fake, tmp_path, inp)
    assert fake.stats.requests == 0


def test_output_must_not_be_the_input(fake: FakeDeepSeek, tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "out.jsonl", [{"prompt": "p"}])
    with pytest.raises(BatchFileError, match="must not be the input"):
        run(fake, tmp_path, inp)


# -- progress, cost and summary ----------------------------------------------------------------


def completion(model: str, hit: int = 0, miss: int = 1000, out: int = 1000) -> ChatCompletion:
    usage = {
        "prompt_tokens": hit + miss,
        "completion_tokens": out,
        "total_tokens": hit + miss + out,
        "prompt_cache_hit_tokens": hit,
        "prompt_cache_miss_tokens": miss,
    }
    return ChatCompletion({"model": model, "choices": [], "usage": usage})


def test_cost_is_priced_per_model_and_unknown_for_unpriced_models() -> None:
    import datetime as dt

    peak = dt.datetime(2026, 11, 23, 2, tzinfo=dt.UTC)  # a Monday, 02:00 UTC
    tally = Tally()
    tally.add_ok(completion("deepseek-flash", hit=1_000_000, miss=0, out=0), "x", when=peak)
    assert format_cost(tally) == "$0.006000"  # 1M cache-hit tokens at the peak price
    tally.add_ok(completion("mystery-model"), "x", when=peak)
    assert format_cost(tally).startswith("$0.006000 + unknown (1 calls")
    only_unknown = Tally()
    only_unknown.add_ok(completion("mystery-model"), "x")
    assert format_cost(only_unknown) == "unknown"
    assert tally.cache_hit_share == pytest.approx(1_000_000 / 1_001_000)


def test_progress_bar_shows_counts_tokens_and_cost() -> None:
    stream = io.StringIO()
    progress = BatchProgress(stream, bar=True)
    progress.start(2)
    tally = Tally()
    tally.add_ok(completion("deepseek-flash", miss=20_000, out=5_000), "x")
    progress.update(tally)
    tally.add_failed()
    progress.update(tally)
    progress.close()
    text = stream.getvalue()
    assert "2/2" in text and "ok=1 failed=1" in text and "tokens=25.0k" in text and "cost=$" in text


def test_quiet_progress_drops_notices_but_not_warnings() -> None:
    stream = io.StringIO()
    progress = BatchProgress(stream, quiet=True)
    progress.info("resuming")
    progress.warn("repaired")
    assert stream.getvalue() == "repaired\n"


def test_summary_reports_items_tokens_cache_share_cost_and_time(fake: FakeDeepSeek, tmp_path: Path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [{"prompt": "same prefix " * 50 + str(i)} for i in range(4)] + ["oops"])
    summary = run(fake, tmp_path, inp)
    text = format_summary(summary)
    assert "items: 4 ok, 1 failed, 0 skipped (of 5 in the input)" in text
    assert "cache hits" in text and "estimated cost: $" in text and "wall time:" in text
    assert summary.tally.prompt_tokens > 0 and summary.tally.completion_tokens > 0


def test_each_line_is_in_the_file_as_soon_as_its_item_completes(fake: FakeDeepSeek, tmp_path: Path) -> None:
    """Flushed per line, not at the end: a crash after an item completes cannot lose it."""
    inp = write_lines(tmp_path / "in.jsonl", [{"prompt": f"p{i}"} for i in range(12)] + ["bad"])
    out = tmp_path / "out.jsonl"
    seen: List[int] = []

    class Watcher(BatchProgress):
        def update(self, tally: Tally) -> None:
            assert out.read_bytes().count(b"\n") == tally.ok + tally.failed  # read by another handle
            seen.append(tally.ok + tally.failed)

    run(fake, tmp_path, inp, progress=Watcher())
    assert seen == list(range(1, 14))
