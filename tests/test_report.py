"""``deepseek-pool report``: a real ``run`` against FakeDeepSeek with faults, then the report
on its output, checked against figures computed here from the lines (and the fake's own
counters); old-format files and torn last lines."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from deepseek_pool.cli.commands import main
from deepseek_pool.models import PRICES
from deepseek_pool.money.offpeak import PeakCalendar
from deepseek_pool.testing import FakeDeepSeek

REPO = Path(__file__).resolve().parent.parent
SUBPROCESS_TIMEOUT = 60
ITEMS = 60
#: The fake's answer time: every answer's recorded latency is at least its low end.
LATENCY = (0.02, 0.12)
SYSTEM = "You answer briefly. " * 40  # a shared prefix: the fake's prefix cache serves it


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, PYTHONPATH=str(REPO), NO_PROXY="127.0.0.1,localhost", **env)
    return subprocess.run(
        [sys.executable, "-m", "deepseek_pool", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


def lines_of(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def nearest_rank(values: List[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered) / 100)) - 1]


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Path, Dict[str, Any]]]:
    """One real run with 429s, 500s and a malformed line; the output and the fake's counters."""
    where = tmp_path_factory.mktemp("report")
    with open(where / "in.jsonl", "w", encoding="utf-8") as file:
        for i in range(ITEMS):
            request = {
                "custom_id": f"c{i}",
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"q{i}"}],
            }
            file.write(json.dumps(request) + "\n")
        file.write("this line is not JSON\n")
    # A cache with no minimum, unit or build delay: the short shared system prompt hits at once.
    cache = {"cache_build_delay": 0, "cache_unit_tokens": 1, "cache_min_tokens": 0}
    with FakeDeepSeek(faults={"429": 0.15, "500": 0.15}, retry_after=0, latency=LATENCY, seed=5, **cache) as fake:
        done = cli(
            "run", "in.jsonl", "-o", "out.jsonl", "-q", "--max-retries", "1", "--workers", "8",
            cwd=where, DEEPSEEK_API_KEY="sk-report", DEEPSEEK_BASE_URL=fake.base_url,
        )  # fmt: skip
        stats = fake.stats
    assert done.returncode == 1, done.stderr  # the malformed line (and calls out of retries) failed
    yield where / "out.jsonl", {"requests": stats.requests, "429s": stats.by_status.get(429, 0)}


def report_json(path: Path, *extra: str) -> Dict[str, Any]:
    done = cli("report", str(path), "--json", *extra, cwd=path.parent)
    assert done.returncode == 0, done.stderr
    data: Dict[str, Any] = json.loads(done.stdout)
    return data


def test_the_report_of_a_real_run_matches_its_output_lines(batch: Tuple[Path, Dict[str, Any]]) -> None:
    out, fake = batch
    lines = lines_of(out)
    assert len({line["custom_id"] for line in lines}) == len(lines) == ITEMS + 1  # compacted: one per item
    report = report_json(out, "--top", "3")

    answered = [line for line in lines if line["error"] is None]
    failed = Counter(
        line["error"]["code"] + (f" ({line['response']['status_code']})" if line["response"] else "")
        for line in lines
        if line["error"] is not None
    )
    assert report["items"] == ITEMS + 1 and report["answered"] == len(answered)
    assert report["failed_by"] == dict(failed) and failed["JSONDecodeError"] == 1
    assert report["failed"] == sum(failed.values()) > 1  # some calls ran out of retries too

    # Every line records its call; the attempts and 429s add up to what the server saw.
    assert report["calls_recorded"] == ITEMS + 1
    calls = [line["call"] for line in lines]
    assert report["attempts"]["total"] == sum(call["attempts"] for call in calls) == fake["requests"]
    assert report["attempts"]["retried_items"] == sum(call["attempts"] > 1 for call in calls) > 0
    assert report["rate_limited"]["responses"] == sum(call["rate_limited"] for call in calls) == fake["429s"] > 0
    assert report["rate_limited"]["items"] == sum(call["rate_limited"] > 0 for call in calls)

    seconds = {line["custom_id"]: line["call"]["ended_at"] - line["call"]["started_at"] for line in answered}
    assert min(seconds.values()) >= LATENCY[0] - 0.002  # each answer took at least the fake's latency
    for p in (50, 90, 99):
        assert report["latency_seconds"][f"p{p}"] == pytest.approx(nearest_rank(list(seconds.values()), p), abs=2e-3)
    assert report["latency_seconds"]["max"] == pytest.approx(max(seconds.values()), abs=2e-3)
    timed = {
        line["custom_id"]: line["call"]["ended_at"] - line["call"]["started_at"]
        for line in lines
        if "started_at" in line["call"]
    }
    slowest = sorted(timed, key=lambda custom_id: -timed[custom_id])[:3]
    assert [entry["custom_id"] for entry in report["slowest"]] == slowest

    usages = [line["response"]["body"]["usage"] for line in answered]
    prompt = sum(usage["prompt_tokens"] for usage in usages)
    hits = sum(usage["prompt_cache_hit_tokens"] for usage in usages)
    assert report["tokens"]["prompt"] == prompt and report["tokens"]["cache_hit"] == hits > 0
    assert report["tokens"]["completion"] == sum(usage["completion_tokens"] for usage in usages)
    assert report["tokens"]["cache_hit_share"] == pytest.approx(hits / prompt)

    peak = off_peak = 0.0
    for line in answered:
        usage, price = line["response"]["body"]["usage"], PRICES[line["response"]["body"]["model"]]
        cost = (
            usage["prompt_cache_hit_tokens"] * price.input_cache_hit
            + usage["prompt_cache_miss_tokens"] * price.input_cache_miss
            + usage["completion_tokens"] * price.output
        ) / 1e6
        started, ended = (dt.datetime.fromtimestamp(line["call"][key], dt.UTC) for key in ("started_at", "ended_at"))
        if PeakCalendar().peak_between(started, ended):  # off-peak only when no peak instant lay between
            peak += cost
        else:
            off_peak += cost * price.off_peak_factor
    assert report["cost_usd"]["peak"] == pytest.approx(peak) and report["cost_usd"]["off_peak"] == pytest.approx(
        off_peak
    )
    assert peak + off_peak > 0 and report["cost_usd"]["total"] == pytest.approx(peak + off_peak)
    assert report["cost_usd"]["time_not_recorded"] == 0 and report["notes"] == []


def test_the_report_for_people_names_each_part(batch: Tuple[Path, Dict[str, Any]]) -> None:
    out, _ = batch
    done = cli("report", str(out), cwd=out.parent)
    assert done.returncode == 0 and done.stderr == ""
    text = done.stdout
    for part in (
        "answered",
        "JSONDecodeError: 1",
        "latency of answers: p50",
        "429s:",
        "cache hits",
        "off-peak",
        "slowest:",
    ):
        assert part in text, (part, text)
    assert "not recorded" not in text


def test_an_old_file_without_call_records_still_reports(batch: Tuple[Path, Dict[str, Any]], tmp_path: Path) -> None:
    out, _ = batch
    old = tmp_path / "old.jsonl"
    lines = lines_of(out)
    with open(old, "w", encoding="utf-8") as file:
        for line in lines:
            line.pop("call")
            file.write(json.dumps(line) + "\n")
    new = report_json(out)
    report = report_json(old)
    assert (report["items"], report["answered"], report["failed_by"]) == (
        new["items"],
        new["answered"],
        new["failed_by"],
    )
    assert report["tokens"] == new["tokens"]
    assert report["calls_recorded"] == 0
    assert report["latency_seconds"] is report["attempts"] is report["rate_limited"] is report["span"] is None
    assert report["slowest"] == []
    # Without times, each answer is priced at the peak rate: an upper bound, shown apart.
    assert report["cost_usd"]["peak"] == report["cost_usd"]["off_peak"] == 0
    assert report["cost_usd"]["time_not_recorded"] >= new["cost_usd"]["total"] > 0
    text = cli("report", str(old), cwd=tmp_path).stdout
    assert "latency of answers: not recorded" in text and "attempts and 429s: not recorded" in text
    assert "peak/off-peak split: not recorded" in text and "slowest: not recorded" in text


def test_a_torn_last_line_is_skipped_with_a_note(batch: Tuple[Path, Dict[str, Any]], tmp_path: Path) -> None:
    out, _ = batch
    torn = tmp_path / "running.jsonl"
    whole = out.read_bytes()
    extra = json.dumps({"id": "x", "custom_id": "late", "response": None, "error": None}).encode()
    torn.write_bytes(whole + extra[: len(extra) // 2])  # a run mid-write
    report = report_json(torn)
    assert report["torn_last_line"] is True and report["items"] == ITEMS + 1
    assert report["answered"] == report_json(out)["answered"]
    assert any("last line is incomplete" in note for note in report["notes"])
    assert "note: the last line is incomplete" in cli("report", str(torn), cwd=tmp_path).stdout


def test_the_standing_line_of_an_item_is_its_success_else_its_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def answer(custom_id: str) -> Dict[str, Any]:
        usage = {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_cache_hit_tokens": 4,
            "prompt_cache_miss_tokens": 6,
        }
        body = {"model": "deepseek-flash", "usage": usage}
        return {"custom_id": custom_id, "response": {"status_code": 200, "body": body}, "error": None}

    def failure(custom_id: str, code: str, status: int) -> Dict[str, Any]:
        return {
            "custom_id": custom_id,
            "response": {"status_code": status, "body": {}},
            "error": {"code": code, "message": "x"},
        }

    rows = [
        failure("a", "InternalServerError", 500), answer("a"),  # failed, then answered on a resume
        failure("b", "InternalServerError", 500), failure("b", "RateLimitError", 429),  # the last failure stands
        {"custom_id": None, "spend": {"for": "c", "cost_usd": 0.25, "why": "SpendCapReached"}},
    ]  # fmt: skip
    path = tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "[1, 2\n")
    assert main(["report", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["items"], report["answered"], report["superseded_lines"]) == (2, 1, 2)
    assert report["failed_by"] == {"RateLimitError (429)": 1}
    assert report["tokens"]["cache_hit_share"] == pytest.approx(0.4)
    assert report["cost_usd"]["billed_without_result"] == 0.25
    assert report["unreadable_lines"] == [6] and not report["torn_last_line"]


def test_a_missing_file_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deepseek-pool report: error: cannot read") and "\n" not in err


def test_cost_is_split_by_the_hour_each_call_ended(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def answer(custom_id: str, ended: dt.datetime, seconds: float) -> Dict[str, Any]:
        usage = {"prompt_tokens": 0, "completion_tokens": 1_000_000, "prompt_cache_hit_tokens": 0}
        end = ended.timestamp()
        return {
            "custom_id": custom_id,
            "response": {"status_code": 200, "body": {"model": "deepseek-flash", "usage": usage}},
            "error": None,
            "call": {"started_at": end - seconds, "ended_at": end, "attempts": 1, "rate_limited": 0},
        }

    rows = [
        answer("peak", dt.datetime(2026, 12, 7, 2, 30, tzinfo=dt.UTC), 2.0),  # a Monday, 01:00-04:00 UTC
        answer("evening", dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC), 1.0),
        answer("saturday", dt.datetime(2026, 12, 12, 2, 30, tzinfo=dt.UTC), 3.0),  # weekends are off-peak
    ]
    path = tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["report", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    output = PRICES["deepseek-flash"].output
    assert report["cost_usd"]["peak"] == pytest.approx(output)
    assert report["cost_usd"]["off_peak"] == pytest.approx(2 * output * PRICES["deepseek-flash"].off_peak_factor)
    assert report["latency_seconds"] == {"p50": 2.0, "p90": 3.0, "p99": 3.0, "max": 3.0}
    assert [entry["custom_id"] for entry in report["slowest"]] == ["saturday", "peak", "evening"]


def test_plot_draws_the_batch_over_time(batch: Tuple[Path, Dict[str, Any]], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from deepseek_pool.cli.report import read_report
    from deepseek_pool.cli.report_plot import BUCKETS, series

    out, _ = batch
    picture = tmp_path / "batch.png"
    done = cli("report", str(out), "--plot", str(picture), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") > 500  # a real image
    lines = lines_of(out)
    timed = [line["call"] for line in lines if "started_at" in line["call"]]
    answered = [line for line in lines if line["error"] is None]
    drawn = series(read_report(str(out)).calls)
    # Calls in flight: the most that overlapped, counted here from the lines (8 workers at most).
    ends = sorted(call["ended_at"] for call in timed)
    most = max(
        sum(1 for other in timed if other["started_at"] <= call["started_at"] < other["ended_at"]) for call in timed
    )
    assert max(value for _, value in drawn["in_flight"]) == most <= 8 and drawn["in_flight"][-1][1] == 0
    # Throughput: every answer is in one bucket; cost: the last point is the report's total.
    span = ends[-1] - min(call["started_at"] for call in timed)
    assert sum(rate * span / BUCKETS for _, rate in drawn["throughput"]) == pytest.approx(len(answered))
    assert drawn["cost"][-1][1] == pytest.approx(report_json(out)["cost_usd"]["total"])
    assert len(drawn["latency"]) == len(answered)


def test_plot_without_matplotlib_names_the_extra(
    batch: Tuple[Path, Dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, _ = batch
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the extra sees
    assert main(["report", str(out), "--plot", str(tmp_path / "batch.png")]) == 2
    captured = capsys.readouterr()
    assert "pip install 'deepseek-pool[plot]'" in captured.err and captured.out == ""
    assert not (tmp_path / "batch.png").exists()
