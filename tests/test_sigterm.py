"""``deepseek-pool run`` under SIGTERM, in real processes: a drain like the first Ctrl-C, nothing lost, no temp file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import pytest

from deepseek_pool.cli.commands import main
from deepseek_pool.cli.console import EXIT_INTERRUPTED, EXIT_TERMINATED
from deepseek_pool.testing import FakeDeepSeek

from .test_cli import (
    SUBPROCESS_TIMEOUT,
    assert_one_success_per_id,
    cli,
    command,
    complete_lines,
    env_for,
    no_traceback,
    sent_ids,
    wait_for_lines,
    write_prompts,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signal delivery to a child process")

ITEMS = 500
#: Slow enough that a SIGTERM lands with calls in flight and most of the batch not run.
LATENCY = (0.2, 0.5)


def temporary_inputs(directory: Path) -> List[Path]:
    return sorted(directory.glob(".deepseek-pool-input-*"))


def start_run(tmp_path: Path, fake: FakeDeepSeek, source: str, workers: int = 16) -> subprocess.Popen[str]:
    """``run`` on in.jsonl, given by name or (``source="-"``) on stdin."""
    stdin: Any = subprocess.DEVNULL
    if source == "-":
        stdin = open(tmp_path / "in.jsonl", encoding="utf-8")  # noqa: SIM115 - closed once the child has it
    try:
        return subprocess.Popen(
            command("run", source, "-o", "out.jsonl", "--workers", str(workers)),
            cwd=tmp_path,
            env=env_for(fake),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        if stdin is not subprocess.DEVNULL:
            stdin.close()


def finish(process: subprocess.Popen[str]) -> str:
    try:
        _, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        process.kill()
        process.wait(timeout=SUBPROCESS_TIMEOUT)
    return stderr


def answered(lines: List[Dict[str, Any]]) -> Set[str]:
    return {line["custom_id"] for line in lines if line["error"] is None}


@pytest.mark.parametrize("source", ["in.jsonl", "-"])
def test_sigterm_drains_a_500_item_batch_and_a_rerun_sends_only_what_was_not_answered(
    source: str, tmp_path: Path
) -> None:
    write_prompts(tmp_path / "in.jsonl", ITEMS)
    out = tmp_path / "out.jsonl"
    with FakeDeepSeek(latency=LATENCY, seed=25) as fake:
        process = start_run(tmp_path, fake, source)
        wait_for_lines(out, 20, process)
        if source == "-":
            assert len(temporary_inputs(tmp_path)) == 1  # the copy of stdin is there while the run lasts
        process.send_signal(signal.SIGTERM)
        stderr = finish(process)
        sent_before = sent_ids(fake)

        assert process.returncode == EXIT_TERMINATED, stderr
        no_traceback(stderr)
        assert "SIGTERM: stopping (a drain)" in stderr and "A second SIGTERM or Ctrl-C" in stderr
        lines = complete_lines(out)
        before = answered(lines)
        # Nothing answered was lost: every call sent finished and was written (the fake injects no faults).
        assert len(lines) == len(before) == len(sent_before) == len(set(sent_before))
        assert before == set(sent_before)
        assert 20 <= len(before) < ITEMS // 2
        assert f"{ITEMS - len(before)} items not run" in stderr and "to resume: " in stderr
        assert temporary_inputs(tmp_path) == []

        fake.reset()
        rerun = start_run(tmp_path, fake, source)
        stderr = finish(rerun)
        resent = sent_ids(fake)
    assert rerun.returncode == 0, stderr
    assert not set(resent) & before  # nothing answered before the SIGTERM was sent again
    assert len(resent) == len(set(resent)) == ITEMS - len(before)
    final = complete_lines(out)
    assert_one_success_per_id(final, ITEMS)
    assert len(final) == ITEMS  # every custom_id exactly once
    assert temporary_inputs(tmp_path) == []


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_after_sigterm_cancels_and_leaves_no_temporary_file(second: int, tmp_path: Path) -> None:
    write_prompts(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out.jsonl"
    with FakeDeepSeek(latency=(1.0, 1.5), seed=26) as fake:
        process = start_run(tmp_path, fake, "-")
        wait_for_lines(out, 16, process)  # the second wave is in flight, a second away from its answers
        assert len(temporary_inputs(tmp_path)) == 1
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        process.send_signal(second)
        started = time.monotonic()
        stderr = finish(process)
        took = time.monotonic() - started
        sent = len(fake.received)
    assert process.returncode == EXIT_TERMINATED, stderr
    no_traceback(stderr)
    name = "SIGTERM" if second == signal.SIGTERM else "Ctrl-C"
    assert f"{name} again: cancelling" in stderr
    assert took < 5  # the calls in flight were cancelled, not waited for
    lines = complete_lines(out)
    assert 16 <= len(lines) < sent  # the cancelled calls were sent but not written
    assert temporary_inputs(tmp_path) == []


def test_sigterm_while_stdin_is_being_saved_stops_at_once_sends_nothing_and_removes_the_copy(tmp_path: Path) -> None:
    with FakeDeepSeek() as fake:
        process = subprocess.Popen(
            command("run", "-", "-o", "out.jsonl"),
            cwd=tmp_path,
            env=env_for(fake),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with process:
            try:
                assert process.stdin is not None
                process.stdin.write(json.dumps({"custom_id": "a", "prompt": "hi"}) + "\n")
                process.stdin.flush()  # stdin stays open: the run is still saving it
                deadline = time.monotonic() + 20
                while not temporary_inputs(tmp_path) and time.monotonic() < deadline:
                    assert process.poll() is None
                    time.sleep(0.01)
                assert len(temporary_inputs(tmp_path)) == 1
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=SUBPROCESS_TIMEOUT)  # stdin still open: it stopped on the signal alone
                _, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
            finally:
                process.kill()
                process.wait(timeout=SUBPROCESS_TIMEOUT)
        assert fake.received == []
    assert process.returncode == EXIT_TERMINATED, stderr
    no_traceback(stderr)
    assert "SIGTERM: stopping; nothing was sent" in stderr
    assert temporary_inputs(tmp_path) == []


def test_a_run_in_process_gives_back_the_signal_handlers_it_found(tmp_path: Path) -> None:
    calls: List[int] = []

    def mine(signum: int, frame: Optional[Any]) -> None:
        calls.append(signum)

    inp = write_prompts(tmp_path / "in.jsonl", 3)
    previous = {signum: signal.signal(signum, mine) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with FakeDeepSeek() as fake:
            env = env_for(fake)
            argv = ["run", str(inp), "-o", str(tmp_path / "out.jsonl"), "-q"]
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("DEEPSEEK_API_KEY", env["DEEPSEEK_API_KEY"])
                patch.setenv("DEEPSEEK_BASE_URL", env["DEEPSEEK_BASE_URL"])
                assert main(argv) == 0
        assert signal.getsignal(signal.SIGINT) is mine
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert calls == []


def test_ctrl_c_still_exits_130_and_sigterm_143(tmp_path: Path) -> None:
    """The two statuses tell a supervisor which signal stopped the run, as a shell's 128 + N would."""
    assert (EXIT_INTERRUPTED, EXIT_TERMINATED) == (128 + signal.SIGINT, 128 + signal.SIGTERM)
    write_prompts(tmp_path / "in.jsonl", 40)
    with FakeDeepSeek(latency=0.3) as fake:
        process = start_run(tmp_path, fake, "in.jsonl", workers=4)
        wait_for_lines(tmp_path / "out.jsonl", 4, process)
        process.send_signal(signal.SIGINT)
        stderr = finish(process)
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "Ctrl-C: stopping (a drain)" in stderr and "Press Ctrl-C again" in stderr
    with FakeDeepSeek() as fast:  # and the rest runs on resume
        assert cli("run", "in.jsonl", "-o", "out.jsonl", fake=fast, cwd=tmp_path).returncode == 0
    assert_one_success_per_id(complete_lines(tmp_path / "out.jsonl"), 40)
