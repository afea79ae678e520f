"""Crash consistency: SIGKILL a real ``deepseek-pool run`` at random moments, compaction included.

A faulty FakeDeepSeek (about 20 % of requests fail) answers a batch; the run is killed
again and again -- at random times, and right inside its compaction -- and rerun with the
same command. After every kill: every complete line parses (only the last may be torn,
and the next run repairs it), and no item that had a success line before the run was
sent again. At the end: exactly one success per custom_id, one line per custom_id, no
temporary file left.

The child is the real CLI (``deepseek_pool.cli.commands.main``); the only change is a compaction
that copies slowly, so kills land inside it often enough to matter in a short test.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from deepseek_pool.testing import FakeDeepSeek

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-crash-test"
ITEMS = 400
KILLS = 30
#: About 20 % of requests fail, and are not retried: every rerun retries failed items, then compacts.
FAULTS = {"503": 0.06, "500": 0.04, "reset": 0.04, "insufficient": 0.03, "trickle:2": 0.03}

CHILD = """
import sys, time
from deepseek_pool import cli
from deepseek_pool.batch import results_file

copy = results_file._copy_lines

def slow_copy(reader, writer, drop):
    # The real copy, a few lines at a time with pauses: the compaction lasts long enough
    # for the test to kill the process inside it.
    class Slow:
        def write(self, data):
            writer.write(data)
            writer.flush()
            time.sleep(0.0004)
    copy(reader, Slow(), drop)

results_file._copy_lines = slow_copy
sys.exit(cli.main(sys.argv[1:]))
"""


def split_lines(data: bytes) -> Tuple[List[Dict[str, object]], bytes]:
    """The complete lines of the output (each must parse) and the torn tail, if any."""
    end = data.rfind(b"\n") + 1
    lines = [json.loads(raw) for raw in data[:end].splitlines()]
    return lines, data[end:]


def answered(path: Path) -> Set[str]:
    if not path.exists():
        return set()
    lines, _tail = split_lines(path.read_bytes())
    return {str(line["custom_id"]) for line in lines if line["error"] is None}


def failures_in(path: Path) -> bool:
    if not path.exists():
        return False
    lines, _tail = split_lines(path.read_bytes())
    return any(line["error"] is not None for line in lines)


def check_round(out: Path, temporary: Path) -> None:
    lines, tail = split_lines(out.read_bytes())
    assert tail == b""
    ok: Dict[str, int] = {}
    for line in lines:
        if line["error"] is None:
            ok[str(line["custom_id"])] = ok.get(str(line["custom_id"]), 0) + 1
    assert ok == {f"c{i}": 1 for i in range(ITEMS)}  # exactly one success per custom_id
    assert len(lines) == ITEMS  # compacted: one line per custom_id
    assert not temporary.exists()


@pytest.mark.timeout(120)
def test_random_sigkills_compaction_included_lose_nothing_and_resend_nothing_answered(tmp_path: Path) -> None:
    with open(tmp_path / "in.jsonl", "w", encoding="utf-8") as file:
        for i in range(ITEMS):
            file.write(json.dumps({"custom_id": f"c{i}", "prompt": f"question {i}"}) + "\n")
    rng = random.Random(10)
    started = time.monotonic()
    kills = in_compaction = runs = rounds = 0
    # No reset between runs: it would reseed the faults, and the last item left would meet the same one forever.
    with FakeDeepSeek(latency=(0.005, 0.03), faults=FAULTS, seed=21, max_received=None) as fake:
        env = dict(os.environ, PYTHONPATH=str(REPO), DEEPSEEK_API_KEY=KEY, DEEPSEEK_BASE_URL=fake.base_url)
        env["NO_PROXY"] = "127.0.0.1"
        while kills < KILLS:  # rounds: each a fresh output, run and killed until it completes
            rounds += 1
            out = tmp_path / f"out{rounds}.jsonl"
            temporary = tmp_path / f"out{rounds}.jsonl.compacting"
            argv = [sys.executable, "-c", CHILD, "run", "in.jsonl", "-o", out.name, "--workers", "16"]
            argv += ["--max-retries", "0", "-q"]
            while True:
                runs += 1
                assert runs <= 3 * KILLS + 20, "the batch never completed"
                before = answered(out)
                compacting = failures_in(out)  # this run retries failures, so it ends with a compaction
                seen = len(fake.received)
                process = subprocess.Popen(
                    argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                killed = False
                try:
                    if kills < KILLS:
                        if compacting and rng.random() < 0.6:  # inside the compaction
                            deadline = time.monotonic() + 15
                            while process.poll() is None and not temporary.exists() and time.monotonic() < deadline:
                                time.sleep(0.0005)
                            time.sleep(rng.uniform(0, 0.05))
                            in_compaction += temporary.exists()
                        else:
                            time.sleep(rng.uniform(0.1, 0.8))  # start-up, sending, writing
                        if process.poll() is None:
                            process.send_signal(signal.SIGKILL)
                            killed = True
                            kills += 1
                    status = process.wait(timeout=60)
                finally:
                    if process.poll() is None:
                        process.kill()
                        process.wait(timeout=60)
                sent = {r.body["messages"][-1]["content"].split()[-1] for r in fake.received[seen:] if r.body}
                resent = {f"c{n}" for n in sent} & before
                assert not resent, f"run {runs}: items answered before it were sent again: {sorted(resent)[:5]}"
                if out.exists():
                    split_lines(out.read_bytes())  # every complete line parses: no torn line but the last
                if not killed and status == 0:
                    break
            check_round(out, temporary)
        assert fake.stats.in_flight == 0
    elapsed = time.monotonic() - started
    assert kills == KILLS and in_compaction >= 3, (kills, in_compaction)
    print(
        f"{kills} kills ({in_compaction} in a compaction), {runs} runs, {rounds} rounds x {ITEMS} items, {elapsed:.1f}s"
    )
