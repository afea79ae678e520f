"""Every code block of README.rst runs, so the documentation cannot rot.

How each block is checked is said by an RST comment just above it (comments do not render):

* a ``python`` block with no comment runs in one namespace shared by all such blocks, in
  order, with ``DEEPSEEK_API_KEY`` / ``DEEPSEEK_BASE_URL`` pointing at a FakeDeepSeek;
* ``.. test: file NAME``: the block is written to NAME in a scratch directory, and pytest
  runs that directory (a user's conftest, module and tests);
* ``.. test: shell``: bash runs the block there, ``deepseek-pool`` being this checkout's CLI
  and the DeepSeek variables pointing at a FakeDeepSeek;
* ``.. test: server``: the block starts a server that prints its URL; it must answer, then
  stop cleanly on Ctrl-C;
* ``.. test: skip REASON``: not run, and REASON says why.

The first block, the two set-up commands, is checked word for word instead: it installs packages.
Nothing may leave loopback: name resolution is refused for any other host.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

import deepseek_pool as dp
from deepseek_pool import config, errors
from deepseek_pool.batch import jsonl
from deepseek_pool.budget import limiter as limits
from deepseek_pool.budget import rules as budget
from deepseek_pool.cli import commands as cli
from deepseek_pool.money import spend
from deepseek_pool.pool import items, pool
from deepseek_pool.testing import FakeDeepSeek

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
SETUP_COMMANDS = ["pip install . && deepseek-pool demo", "pip install -e '.[test]' && python -m pytest"]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
#: A proxy nobody listens on: if a mock ever missed a request, it would fail here, not go out.
DEAD_PROXY = "http://127.0.0.1:9"

_DIRECTIVE = re.compile(r"^(\s*)\.\. code-block:: *(\S+)\s*$")
_MARKER = re.compile(r"^\.\. test: *(.*?)\s*$")

NETWORK_GUARD = '''
"""pytest plugin: refuse to resolve any host but loopback (README tests never leave the machine)."""
import socket

_getaddrinfo = socket.getaddrinfo


def _loopback_only(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in {"127.0.0.1", "localhost", "::1"}:
        raise OSError(f"README test: no traffic beyond loopback (tried {name!r})")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_only
'''


@dataclass
class Block:
    """One ``.. code-block::`` of the README."""

    line: int  # 1-based line of the directive
    language: str
    code: str
    marker: Optional[str]  # what follows ".. test:" in the comment above, if any

    @property
    def kind(self) -> str:
        return (self.marker or "").split(" ", 1)[0]

    @property
    def argument(self) -> str:
        return (self.marker or "").partition(" ")[2].strip()

    def __str__(self) -> str:
        return f"README.rst line {self.line} ({self.language}):\n{textwrap.indent(self.code, '    ')}"


def parse_blocks(text: str) -> List[Block]:
    lines = text.splitlines()
    blocks = []
    for number, line in enumerate(lines):
        match = _DIRECTIVE.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        body: List[str] = []
        i = number + 1
        while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith(":")):
            i += 1  # the blank line and any options
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        marker = None
        previous = number - 1
        while previous >= 0 and not lines[previous].strip():
            previous -= 1
        found = _MARKER.match(lines[previous]) if previous >= 0 else None
        if found:
            marker = found.group(1)
        blocks.append(Block(number + 1, match.group(2), textwrap.dedent("\n".join(body)).strip("\n") + "\n", marker))
    return blocks


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))


def blocks_of(kind: Optional[str], language: str) -> List[Block]:
    return [b for b in BLOCKS[1:] if b.language == language and (b.marker is None if kind is None else b.kind == kind)]


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in LOOPBACK:
            raise OSError(f"README test: no traffic beyond loopback (tried {name!r})")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


def subprocess_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This environment minus DeepSeek settings, with this checkout importable and a dead proxy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEK_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[name] = DEAD_PROXY
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    env.update(extra or {})
    return env


# -- the shape of the README ------------------------------------------------------------------


def test_readme_begins_with_the_two_setup_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[0] and set(lines[1]) == {"="} and not lines[2], "a title first"
    assert _DIRECTIVE.match(lines[3]), "then, at once, the set-up commands"
    first = BLOCKS[0]
    assert first.line == 4 and first.language == "bash"
    assert first.code.splitlines() == SETUP_COMMANDS


def test_every_code_block_is_run_or_says_why_not() -> None:
    assert len(BLOCKS) > 10
    for block in BLOCKS[1:]:
        if block.language == "python":
            assert block.marker is None or block.kind in ("file", "skip"), block
        else:
            assert block.language == "bash", f"unknown language: {block}"
            assert block.kind in ("shell", "server", "skip"), f"say how this block is checked: {block}"
        if block.kind in ("file", "skip"):
            assert block.argument, f"a file name or a reason is needed: {block}"
    # Literal blocks ("paragraph::") would escape the checks: every code sample is a code-block.
    text = README.read_text(encoding="utf-8")
    literal = [
        line for line in text.splitlines() if line.rstrip().endswith("::") and not line.lstrip().startswith("..")
    ]
    assert not literal, f"use '.. code-block::' instead of '::' literal blocks: {literal}"


def test_readme_renders_as_restructuredtext() -> None:
    docutils_core = pytest.importorskip("docutils.core")
    settings = {"halt_level": 2, "report_level": 2, "warning_stream": io.StringIO()}
    docutils_core.publish_doctree(README.read_text(encoding="utf-8"), settings_overrides=settings)  # raises on warnings


def test_readme_numbers_are_the_code_defaults() -> None:
    """The figures the README quotes are the constants the code uses."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    statuses = sorted(config.RETRY_STATUSES)
    expected = [
        f"Up to ``max_retries`` times (default {config.DEFAULT_MAX_RETRIES})",
        f"with status {', '.join(map(str, statuses[:-1]))} or {statuses[-1]}",
        f"``{config.DEFAULT_BACKOFF_FACTOR:g} * 2 ** (n - 1)`` seconds",
        f"at most {config.DEFAULT_BACKOFF_MAX:g})",
        f"up to {config.DEFAULT_BACKOFF_JITTER:g} s of random jitter",
        f"cut to {config.DEFAULT_MAX_RETRY_AFTER:g} s",
        f"* - connect - {config.DEFAULT_CONNECT_TIMEOUT:g} s",
        f"* - read - {config.DEFAULT_READ_TIMEOUT:g} s",
        f"* - total - {config.DEFAULT_TOTAL_TIMEOUT:g} s",
        f"* - retries - {config.DEFAULT_MAX_RETRIES}",
        f"connections (default {config.DEFAULT_POOL_MAXSIZE})",
        f"(default ``{pool.WINDOW_PER_WORKER} * max_workers``)",
        f"``retry_budget={inspect.signature(dp.DeepSeekPool).parameters['retry_budget'].default}`` by default",
        f"a retry costs {limits.RETRY_COST} (error status) or {limits.TIMEOUT_RETRY_COST}",
        f"earns {limits.NO_RETRY_INCREMENT} back",
        f"default {limits.DEFAULT_LEASE_SECONDS:g} s",
        f"for {budget.SPORADIC_COOL_DOWN:g} s at most",
        f"a named cap is held {budget.NAMED_CAP_HOLD:g} s first",
        f"one slot per ``{budget.INCREASE_PATIENCE:g} x cap`` successes",
        f"The default is {inspect.signature(dp.DeepSeekPool).parameters['max_workers'].default}.",
        f"or {items.DEFAULT_COMPLETION_RESERVE:,} without one",
        f"the default model is ``{dp.models.DEFAULT_MODEL}``",
        f"longer than {jsonl.MAX_LINE_BYTES // 2**20} MiB or nested more than {jsonl.MAX_DEPTH} deep",
        f"output ({spend.UNSET_MAX_TOKENS_RESERVE} when it sets none;",
        f"{cli.EXIT_SPEND_CAP} stopped by the spend cap",
    ]
    missing = [phrase for phrase in expected if phrase not in text]
    assert not missing, f"README.rst no longer matches the code: {missing}"
    table = text[text.index("Errors ------") : text.index("Async code")]
    for name in errors.__all__:
        if name[0].isupper() and name != "DeepSeekError":  # the base class is named in the text
            assert f"``{name}``" in table, f"{name} is missing from the errors table"


# -- running the blocks -----------------------------------------------------------------------


def test_python_blocks_run_in_order(deepseek_env: FakeDeepSeek, loopback_only: None) -> None:
    namespace: Dict[str, Any] = {"__name__": "readme"}
    output = io.StringIO()
    try:
        for block in blocks_of(None, "python"):
            try:
                with contextlib.redirect_stdout(output):
                    exec(compile(block.code, f"README.rst:{block.line}", "exec"), namespace)
            except BaseException as err:
                trace = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-3:])
                raise AssertionError(f"{block}\nfailed with {trace}\noutput so far:\n{output.getvalue()}") from err
    finally:
        for value in namespace.values():
            if isinstance(value, (dp.DeepSeekClient, dp.Limiter)):  # a Limiter may hold an sqlite:// file
                value.close()
    printed = output.getvalue()
    assert FakeDeepSeek.answer_for("In one sentence: why is the sky blue?") in printed
    assert "402" in printed and "Insufficient Balance" in printed  # the error example really raised
    assert "some other failure" not in printed
    assert deepseek_env.stats.by_status.get(200, 0) > 100


def test_user_test_files_pass_with_pytest(tmp_path: Path) -> None:
    files = blocks_of("file", "python")
    for block in files:
        (tmp_path / block.argument).write_text(block.code, encoding="utf-8")
    (tmp_path / "readme_network_guard.py").write_text(NETWORK_GUARD, encoding="utf-8")
    tests = sum(block.code.count("\ndef test_") for block in files if block.argument.startswith("test_"))
    assert tests >= 4
    process = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "readme_network_guard", str(tmp_path)],
        cwd=tmp_path,
        env=subprocess_env({"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    assert f"{tests} passed" in process.stdout, process.stdout


@pytest.fixture
def cli_path(tmp_path: Path) -> Iterator[str]:
    """A PATH whose ``deepseek-pool`` is this checkout's CLI."""
    pytest.importorskip("deepseek_pool.cli.commands")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "deepseek-pool"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m deepseek_pool "$@"\n')
    shim.chmod(0o755)
    yield os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])


def test_shell_blocks_run_against_the_fake(fake_deepseek: FakeDeepSeek, cli_path: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = subprocess_env(
        {"PATH": cli_path, "DEEPSEEK_API_KEY": "sk-readme-test", "DEEPSEEK_BASE_URL": fake_deepseek.base_url}
    )
    for block in blocks_of("shell", "bash"):
        process = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert process.returncode == 0, f"{block}\nexited {process.returncode}:\n{process.stdout}\n{process.stderr}"
    # The batch example: both items answered once; the rerun sent nothing; chat asked once more.
    records = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    assert sorted(r["custom_id"] for r in records) == ["a", "b"]
    assert all(r["error"] is None for r in records)
    assert fake_deepseek.stats.requests == 3


def test_server_blocks_serve_then_stop_on_ctrl_c(cli_path: str) -> None:
    servers = blocks_of("server", "bash")
    assert servers
    for block in servers:
        process = subprocess.Popen(
            ["bash", "-c", block.code],
            env=subprocess_env({"PATH": cli_path}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C goes to the whole group, as in a terminal
        )
        try:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], 30)
            assert ready, f"{block}\nprinted nothing"
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:"), f"{block}\nprinted {url!r}"
            with dp.DeepSeekClient("sk-any", base_url=url) as client:
                assert client.chat("Hello").content == FakeDeepSeek.answer_for("Hello")
            os.killpg(process.pid, signal.SIGINT)
            assert process.wait(timeout=15) == 0, process.stderr.read() if process.stderr else ""
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
