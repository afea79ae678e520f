"""``DEEPSEEK_POOL_LOG=debug|info`` for the command, and a call id on every line a call logs."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import pytest

from deepseek_pool.cli.commands import main
from deepseek_pool.testing import FakeDeepSeek

REPO = Path(__file__).resolve().parent.parent
SUBPROCESS_TIMEOUT = 60
CALL_LINE = re.compile(r" deepseek_pool\.wire\.attempts: call (\w+): (.*)$")


def run_two_items(tmp_path: Path, level: str) -> subprocess.CompletedProcess[str]:
    """Two items whose first attempts both get a 503; the retries are answered."""
    (tmp_path / "in.jsonl").write_text('{"custom_id": "a", "prompt": "x"}\n{"custom_id": "b", "prompt": "y"}\n')
    with FakeDeepSeek(retry_after=0) as fake:
        fake.script("503", "503")
        env = dict(os.environ, PYTHONPATH=str(REPO), NO_PROXY="127.0.0.1,localhost")
        env.update(DEEPSEEK_API_KEY="sk-logs", DEEPSEEK_BASE_URL=fake.base_url)
        if level:
            env["DEEPSEEK_POOL_LOG"] = level
        return subprocess.run(
            [sys.executable, "-m", "deepseek_pool", "run", "in.jsonl", "-o", "out.jsonl", "-q", "--workers", "2"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
        )


def lines_by_call(stderr: str) -> Dict[str, List[str]]:
    calls: Dict[str, List[str]] = defaultdict(list)
    for line in stderr.splitlines():
        match = CALL_LINE.search(line)
        if match:
            calls[match.group(1)].append(match.group(2))
    return dict(calls)


def test_debug_logs_each_attempt_its_status_wait_and_request_id_under_one_call_id(tmp_path: Path) -> None:
    done = run_two_items(tmp_path, "debug")
    assert done.returncode == 0, done.stderr
    calls = lines_by_call(done.stderr)
    assert len(calls) == 2, done.stderr  # two calls, each its own id
    answered = {
        json.loads(line)["response"]["request_id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()
    }
    seen = set()
    for lines in calls.values():
        kinds = [re.match(r"attempt \d+|status \d+|retry \d+ after \d+", line) for line in lines]
        assert [kind.group() if kind else line for kind, line in zip(kinds, lines)] == [
            "attempt 1",
            "status 503",
            "retry 1 after 503",
            "attempt 2",
            "status 200",
        ], lines
        assert all(re.search(r"request id \S{8,}$", line) for line in lines if line.startswith("status"))
        seen.add(lines[-1].rsplit(" ", 1)[1])
    assert seen == answered  # the request ids logged are DeepSeek's for the answers written


def test_info_logs_only_the_retries_and_unset_logs_nothing(tmp_path: Path) -> None:
    (tmp_path / "info").mkdir()
    (tmp_path / "quiet").mkdir()
    info = run_two_items(tmp_path / "info", "info")
    assert info.returncode == 0, info.stderr
    calls = lines_by_call(info.stderr)
    assert len(calls) == 2 and all(
        len(lines) == 1 and lines[0].startswith("retry 1 after 503") for lines in calls.values()
    )
    assert " DEBUG " not in info.stderr
    quiet = run_two_items(tmp_path / "quiet", "")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_bad_value_is_one_clear_line_before_anything_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.jsonl").write_text('{"prompt": "x"}\n')
    with FakeDeepSeek() as fake:
        monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-logs")
        monkeypatch.setenv("DEEPSEEK_BASE_URL", fake.base_url)
        monkeypatch.setenv("DEEPSEEK_POOL_LOG", "verbose")
        assert main(["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")]) == 2
        assert fake.stats.requests == 0
    err = capsys.readouterr().err.strip()
    assert err == "deepseek-pool run: error: DEEPSEEK_POOL_LOG must be one of debug, info, got 'verbose'"


def test_the_command_leaves_logging_as_it_found_it_and_uses_the_applications_handlers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "in.jsonl").write_text('{"prompt": "x"}\n')
    logger = logging.getLogger("deepseek_pool")
    before = (logger.level, list(logger.handlers))
    assert logging.getLogger().handlers  # pytest's, as an application's own: the command adds none
    with FakeDeepSeek(retry_after=0) as fake:
        fake.script("503")
        monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-logs")
        monkeypatch.setenv("DEEPSEEK_BASE_URL", fake.base_url)
        monkeypatch.setenv("DEEPSEEK_POOL_LOG", "info")
        assert main(["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "-q"]) == 0
    retries = [record.getMessage() for record in caplog.records if record.name == "deepseek_pool.wire.attempts"]
    assert len(retries) == 1 and re.fullmatch(r"call \w+: retry 1 after 503 in .*", retries[0])
    assert (logger.level, list(logger.handlers)) == before
