"""The ``deepseek-pool`` command: end to end in subprocesses against FakeDeepSeek, and ``main()`` in-process."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from deepseek_pool.cli.commands import main
from deepseek_pool.testing import FakeDeepSeek

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-cli-test"
#: Faults on every end-to-end run; no 429, whose pool-wide cool-down would only add wall time.
FAULTS = {"503": 0.03, "500": 0.02, "reset": 0.02, "insufficient": 0.02, "trickle:2": 0.03}
#: Bound on any one subprocess.
SUBPROCESS_TIMEOUT = 60


def env_for(fake: Optional[FakeDeepSeek], **extra: str) -> Dict[str, str]:
    env = dict(os.environ)  # already stripped of DEEPSEEK_* and proxies by conftest
    env.update(PYTHONPATH=str(REPO), NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    if fake is not None:
        env.update(DEEPSEEK_API_KEY=KEY, DEEPSEEK_BASE_URL=fake.base_url)
    env.update(extra)
    return env


def command(*args: str) -> List[str]:
    return [sys.executable, "-m", "deepseek_pool", *args]


def cli(*args: str, fake: Optional[FakeDeepSeek] = None, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), cwd=cwd, env=env_for(fake, **extra), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )


def write_prompts(path: Path, count: int) -> Path:
    with open(path, "w", encoding="utf-8") as file:
        for i in range(count):
            file.write(json.dumps({"custom_id": f"c{i}", "prompt": f"question {i}"}) + "\n")
    return path


def complete_lines(path: Path) -> List[Dict[str, Any]]:
    """The output's whole lines (a torn last line, as a kill may leave, is not one)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for_lines(path: Path, count: int, process: subprocess.Popen[str], timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = count_lines(path)
        if found >= count:
            return found
        if process.poll() is not None:
            pytest.fail(f"the run ended before writing {count} lines")
        time.sleep(0.01)
    process.kill()
    pytest.fail(f"no {count} output lines within {timeout} s")


def assert_one_success_per_id(lines: List[Dict[str, Any]], count: int) -> None:
    ok: Dict[str, int] = {}
    for line in lines:
        if line["error"] is None:
            ok[line["custom_id"]] = ok.get(line["custom_id"], 0) + 1
    assert ok == {f"c{i}": 1 for i in range(count)}


def sent_ids(fake: FakeDeepSeek) -> List[str]:
    ids = []
    for request in fake.received:
        prompt = request.body["messages"][-1]["content"]
        ids.append("c" + prompt.split()[-1])
    return ids


@pytest.fixture
def faulty() -> Iterator[FakeDeepSeek]:
    with FakeDeepSeek(faults=FAULTS, seed=11) as fake:
        yield fake


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


# -- end to end, in subprocesses ---------------------------------------------------------------


def test_a_300_line_run_with_faults_answers_every_custom_id_exactly_once(faulty: FakeDeepSeek, tmp_path: Path) -> None:
    write_prompts(tmp_path / "in.jsonl", 300)
    done = cli("run", "in.jsonl", "-o", "out.jsonl", "--max-retries", "6", fake=faulty, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    no_traceback(done.stderr)
    lines = complete_lines(tmp_path / "out.jsonl")
    assert len(lines) == 300
    assert_one_success_per_id(lines, 300)
    for line in lines:
        answer = line["response"]["body"]["choices"][0]["message"]["content"]
        assert answer == FakeDeepSeek.answer_for(f"question {line['custom_id'][1:]}")
    assert sum(faulty.stats.faults_injected.values()) > 10  # the faults really happened, and were retried
    assert "items: 300 ok, 0 failed" in done.stderr


def test_sigkill_at_a_third_then_a_rerun_loses_nothing_and_duplicates_no_success(tmp_path: Path) -> None:
    write_prompts(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out.jsonl"
    with FakeDeepSeek(latency=(0.005, 0.03), faults=FAULTS, seed=12) as fake:
        process = subprocess.Popen(
            command("run", "in.jsonl", "-o", "out.jsonl", "--workers", "8", "--max-retries", "6"),
            cwd=tmp_path,
            env=env_for(fake),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_lines(out, 100, process)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=SUBPROCESS_TIMEOUT)
        before = complete_lines(out)
        answered_before = {line["custom_id"] for line in before if line["error"] is None}
        assert 90 <= len(before) < 300

        fake.reset()
        rerun = cli("run", "in.jsonl", "-o", "out.jsonl", "--max-retries", "6", fake=fake, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stderr
        resent = set(sent_ids(fake))
    assert not resent & answered_before  # nothing answered before the kill was sent again
    assert resent | answered_before == {f"c{i}": 1 for i in range(300)}.keys()
    lines = complete_lines(out)
    assert_one_success_per_id(lines, 300)
    assert len(lines) == 300  # compacted: one line per custom_id
    assert f"{len(answered_before)} items already answered" in rerun.stderr


def test_one_ctrl_c_lets_calls_in_flight_finish_and_prints_how_to_resume(tmp_path: Path) -> None:
    write_prompts(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out.jsonl"
    with FakeDeepSeek(latency=0.4) as fake:
        process = subprocess.Popen(
            command("run", "in.jsonl", "-o", "out.jsonl", "--workers", "4"),
            cwd=tmp_path,
            env=env_for(fake),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_lines(out, 4, process)
            time.sleep(0.1)  # the second wave of 4 calls is now in flight
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
        finally:
            process.kill()
            process.wait(timeout=SUBPROCESS_TIMEOUT)
        sent = fake.stats.requests
    assert process.returncode == 130, stderr
    no_traceback(stderr)
    assert "Ctrl-C: stopping" in stderr and "Ctrl-C again" in stderr  # says what happens, and how to cancel
    lines = complete_lines(out)
    assert len(lines) == sent >= 8  # the calls in flight finished and were written
    assert sent < 40
    assert f"{40 - sent} not run" in stderr
    hint = re.search(r"^to resume: (.+)$", stderr, re.MULTILINE)
    assert hint is not None
    words = shlex.split(hint.group(1))
    assert words[:3] == ["python", "-m", "deepseek_pool"]
    assert words[3:] == ["run", "in.jsonl", "-o", "out.jsonl", "--workers", "4"]

    with FakeDeepSeek() as fast:  # the printed command finishes the job
        resumed = cli(*words[3:], fake=fast, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert fast.stats.requests == 40 - sent
    assert_one_success_per_id(complete_lines(out), 40)


def test_demo_runs_offline_and_prints_both_times_and_the_speedup(tmp_path: Path) -> None:
    done = cli("demo", "--prompts", "6", "--workers", "6", "--latency", "0.1-0.15", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    match = re.search(r"speedup: ([0-9.]+)x", done.stdout)
    assert match is not None, done.stdout
    assert float(match.group(1)) > 1.5
    assert "one by one" in done.stdout and "through the pool" in done.stdout
    assert done.stdout.count(" s\n") >= 2 and "->" in done.stdout  # two wall times, some answers


def test_missing_key_and_version_from_python_m_without_a_traceback(tmp_path: Path) -> None:
    write_prompts(tmp_path / "in.jsonl", 1)
    done = cli("run", "in.jsonl", "-o", "out.jsonl", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "python -m deepseek_pool run: error: no API key: set DEEPSEEK_API_KEY or pass --api-key-file PATH "
        "(a file holding the key)"
    ]
    version = cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and re.fullmatch(r"deepseek-pool \d+\.\d+\.\S+\n", version.stdout)


# -- in-process: main() ------------------------------------------------------------------------


@pytest.mark.parametrize("command_name", [None, "run", "demo", "chat", "serve-fake"])
def test_help_for_every_command(command_name: Optional[str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ([command_name] if command_name else []) + ["--help"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: deepseek-pool" + (f" {command_name}" if command_name else ""))
    if command_name is None:
        for name in ("run", "demo", "chat", "serve-fake"):
            assert name in out


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    no_traceback(err)
    return lines[0]


def test_a_missing_input_file_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "out.jsonl")]) == 2
    line = one_error_line(capsys)
    assert line.startswith("deepseek-pool run: error: cannot read") and "nope.jsonl: no such file" in line


def test_an_output_directory_that_does_not_exist_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = write_prompts(tmp_path / "in.jsonl", 1)
    assert main(["run", str(inp), "-o", str(tmp_path / "missing" / "out.jsonl")]) == 2
    assert "the directory" in one_error_line(capsys)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_an_unwritable_output_directory_is_one_clear_line(
    deepseek_env: FakeDeepSeek, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = write_prompts(tmp_path / "in.jsonl", 1)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["run", str(inp), "-o", str(locked / "out.jsonl")]) == 2
    finally:
        locked.chmod(0o700)
    assert "cannot use" in one_error_line(capsys)
    assert deepseek_env.stats.requests == 0


@pytest.mark.parametrize(
    "option, value",
    [
        ("--workers", "0"),
        ("--workers", "-2"),
        ("--workers", "many"),
        ("--max-in-flight", "0"),
        ("--rpm", "0"),
        ("--rpm", "nan"),
        ("--tpm", "-5"),
        ("--timeout", "0"),
        ("--max-retries", "-1"),
        ("--retry-budget", "0"),
    ],
)
def test_bad_option_values_are_one_clear_line(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = write_prompts(tmp_path / "in.jsonl", 1)
    assert main(["run", str(inp), "-o", str(tmp_path / "out.jsonl"), option, value]) == 2
    line = one_error_line(capsys)
    assert f"argument {option}" in line and repr(value) in line
    assert not (tmp_path / "out.jsonl").exists()


def test_no_api_key_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_prompts(tmp_path / "in.jsonl", 1)
    assert main(["run", str(inp), "-o", str(tmp_path / "out.jsonl")]) == 2
    assert "no API key: set DEEPSEEK_API_KEY" in one_error_line(capsys)


def test_the_key_can_come_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_prompts(tmp_path / "in.jsonl", 3)
    (tmp_path / "key").write_text("sk-from-a-file\n")
    (tmp_path / "empty").write_text("\n")
    with FakeDeepSeek(api_key="sk-from-a-file") as fake:
        base = ["run", str(inp), "-o", str(tmp_path / "out.jsonl"), "--base-url", fake.base_url, "-q"]
        assert main([*base, "--api-key-file", str(tmp_path / "empty")]) == 2
        assert "is empty" in one_error_line(capsys)
        assert main([*base, "--api-key-file", str(tmp_path / "missing")]) == 2
        assert "cannot read the API key file" in one_error_line(capsys)
        assert main([*base, "--api-key-file", str(tmp_path / "key")]) == 0
        assert fake.stats.by_status == {200: 3}
    assert capsys.readouterr().err == ""  # --quiet: nothing on success


def test_duplicate_custom_ids_stop_the_command_before_sending(
    deepseek_env: FakeDeepSeek, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"custom_id": "a", "prompt": "x"}\n{"custom_id": "a", "prompt": "y"}\n')
    assert main(["run", str(inp), "-o", str(tmp_path / "out.jsonl")]) == 2
    assert "duplicate custom_id 'a' (lines 1 and 2)" in one_error_line(capsys)
    assert deepseek_env.stats.requests == 0


def test_some_failed_items_exit_1_and_say_how_to_retry(
    deepseek_env: FakeDeepSeek, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "fine"}\nnot json at all\n')
    out = tmp_path / "out.jsonl"
    assert main(["run", str(inp), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "items: 1 ok, 1 failed" in err and "1 items failed" in err and "to try them again" in err
    assert [json.loads(line)["error"] is None for line in out.read_text().splitlines()].count(False) == 1


def test_chat_streams_the_reasoning_apart_then_the_answer(
    deepseek_env: FakeDeepSeek, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["chat", "Why is the sky blue?"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    thinking = out.index("[thinking]")
    reasoning = out.index(FakeDeepSeek.reasoning_for("Why is the sky blue?"))
    answer_header = out.index("[answer]")
    answer = out.index(FakeDeepSeek.answer_for("Why is the sky blue?"))
    assert thinking < reasoning < answer_header < answer
    assert "tokens in" in captured.err and "finish: stop" in captured.err
    assert deepseek_env.received[-1].body["stream"] is True


def test_chat_without_thinking_prints_only_the_answer(
    deepseek_env: FakeDeepSeek, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["chat", "hello", "--no-thinking"]) == 0
    out = capsys.readouterr().out
    assert out == FakeDeepSeek.answer_for("hello") + "\n"
    assert deepseek_env.received[-1].body["thinking"] == {"type": "disabled"}


def test_chat_with_a_rejected_key_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "key").write_text("sk-wrong")
    with FakeDeepSeek(api_key="sk-right") as fake:
        argv = ["chat", "hi", "--base-url", fake.base_url, "--api-key-file", str(tmp_path / "key")]
        assert main(argv) == 1
    line = one_error_line(capsys)
    assert line.startswith("deepseek-pool chat: error: 401")


def test_serve_fake_is_delegated_to_the_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve-fake", "--fault", "no-such-fault=0.1"]) == 2
    assert "no-such-fault" in capsys.readouterr().err


def test_two_runs_share_one_budget_through_limiter_storage(tmp_path: Path) -> None:
    """Two concurrent runs, each with 8 workers, one sqlite budget of 3 calls in flight."""
    uri = f"sqlite:///{tmp_path / 'budget.db'}"
    with FakeDeepSeek(latency=0.1) as fake:
        runs = []
        for name in ("a", "b"):
            write_prompts(tmp_path / f"{name}.jsonl", 12)
            args = (f"{name}.jsonl", "-o", f"{name}.out.jsonl", "-q", "--workers", "8", "--max-in-flight", "3")
            shared = ("--limiter-storage", uri, "--limiter-name", "team")
            runs.append(subprocess.Popen(command("run", *args, *shared), cwd=tmp_path, env=env_for(fake)))
        assert [run.wait(timeout=SUBPROCESS_TIMEOUT) for run in runs] == [0, 0]
        assert len(complete_lines(tmp_path / "a.out.jsonl")) == len(complete_lines(tmp_path / "b.out.jsonl")) == 12
        assert fake.stats.peak_concurrency <= 3


def test_a_bad_limiter_storage_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    write_prompts(tmp_path / "in.jsonl", 2)
    with FakeDeepSeek() as fake:
        done = cli("run", "in.jsonl", "-o", "out.jsonl", "--limiter-storage", "etcd://x", fake=fake, cwd=tmp_path)
        assert done.returncode == 2
        assert "--limiter-storage" in done.stderr and "etcd" in done.stderr
        assert fake.stats.requests == 0
