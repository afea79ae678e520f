"""Every code block of README.rst and of the pages under docs/ runs, so the documentation cannot rot.

Each page is checked alone. How each block is checked is said by an RST comment just above it
(comments do not render):

* a ``python`` block with no comment runs in one namespace shared by all such blocks of its
  page, in order, with ``DEEPSEEK_API_KEY`` / ``DEEPSEEK_BASE_URL`` pointing at a FakeDeepSeek;
* ``.. test: file NAME``: the block is written to NAME in a scratch directory, and pytest
  runs that directory (a user's conftest, module and tests);
* ``.. test: shell``: bash runs the block there, ``deepseek-pool`` being this checkout's CLI
  and the DeepSeek variables pointing at a FakeDeepSeek;
* ``.. test: server``: the block starts a server that prints its URL; it must answer, then
  stop cleanly on Ctrl-C;
* ``.. test: skip REASON``: not run, and REASON says why;
* a ``text`` block (a diagram) is never run.

README.rst's first block, the two set-up commands, is checked word for word instead: it installs
packages. The Sphinx build of docs/ is tests/test_docs.py's.
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
from deepseek_pool.budget import retries
from deepseek_pool.budget import rules as budget
from deepseek_pool.cli import commands as cli
from deepseek_pool.money import spend
from deepseek_pool.pool import items, pool
from deepseek_pool.testing import FakeDeepSeek

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
DOCS = ROOT / "docs"
#: README.rst and every page of the docs, as paths relative to the checkout.
PAGES = ["README.rst", *sorted(f"docs/{path}" for path in (p.relative_to(DOCS) for p in DOCS.rglob("*.rst")))]
PAGES = [page for page in PAGES if not page.startswith("docs/_build/")]
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
    """One ``.. code-block::`` of a page."""

    page: str  # the page's path, relative to the checkout
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
        return f"{self.page} line {self.line} ({self.language}):\n{textwrap.indent(self.code, '    ')}"


def parse_blocks(text: str, page: str = "README.rst") -> List[Block]:
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
        code = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        blocks.append(Block(page, number + 1, match.group(2), code, marker))
    return blocks


BLOCKS = {page: parse_blocks((ROOT / page).read_text(encoding="utf-8"), page) for page in PAGES}


def checked_blocks(page: str) -> List[Block]:
    """The page's blocks that the tests run or skip: all of them but README.rst's set-up commands."""
    return BLOCKS[page][1:] if page == "README.rst" else BLOCKS[page]


def blocks_of(page: str, kind: Optional[str], language: str) -> List[Block]:
    return [
        b
        for b in checked_blocks(page)
        if b.language == language and (b.marker is None if kind is None else b.kind == kind)
    ]


def pages_with(kind: Optional[str], language: str) -> List[str]:
    return [page for page in PAGES if blocks_of(page, kind, language)]


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


# -- the shape of the pages -------------------------------------------------------------------


def test_readme_begins_with_the_two_setup_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[0] and set(lines[1]) == {"="} and not lines[2], "a title first"
    assert _DIRECTIVE.match(lines[3]), "then, at once, the set-up commands"
    first = BLOCKS["README.rst"][0]
    assert first.line == 4 and first.language == "bash"
    assert first.code.splitlines() == SETUP_COMMANDS


def test_the_pages_are_found() -> None:
    assert {"README.rst", "docs/index.rst", "docs/quickstart.rst", "docs/testing.rst"} <= set(PAGES)
    assert sum(len(blocks) for blocks in BLOCKS.values()) > 10
    assert pages_with("server", "bash"), "the serve-fake example is checked"


@pytest.mark.parametrize("page", PAGES)
def test_every_code_block_is_run_or_says_why_not(page: str) -> None:
    for block in checked_blocks(page):
        if block.language == "python":
            assert block.marker is None or block.kind in ("file", "skip"), block
        elif block.language == "text":
            assert block.marker is None, f"a text block is a diagram, never run: {block}"
        else:
            assert block.language == "bash", f"unknown language: {block}"
            assert block.kind in ("shell", "server", "skip"), f"say how this block is checked: {block}"
        if block.kind in ("file", "skip"):
            assert block.argument, f"a file name or a reason is needed: {block}"
    # Literal blocks ("paragraph::") would escape the checks: every code sample is a code-block.
    text = (ROOT / page).read_text(encoding="utf-8")
    literal = [
        line for line in text.splitlines() if line.rstrip().endswith("::") and not line.lstrip().startswith("..")
    ]
    assert not literal, f"use '.. code-block::' instead of '::' literal blocks: {literal}"


def test_readme_renders_as_restructuredtext() -> None:
    docutils_core = pytest.importorskip("docutils.core")
    settings = {"halt_level": 2, "report_level": 2, "warning_stream": io.StringIO()}
    docutils_core.publish_doctree(README.read_text(encoding="utf-8"), settings_overrides=settings)  # raises on warnings


def test_the_documented_numbers_are_the_code_defaults() -> None:
    """The figures the docs quote are the constants the code uses."""
    text = " ".join(" ".join((ROOT / page).read_text(encoding="utf-8").split()) for page in PAGES)
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
        f"a retry costs {retries.RETRY_COST} (error status) or {retries.TIMEOUT_RETRY_COST}",
        f"earns {retries.NO_RETRY_INCREMENT} back",
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
    assert not missing, f"the docs no longer match the code: {missing}"
    table = (DOCS / "errors.rst").read_text(encoding="utf-8")
    for name in errors.__all__:
        if name[0].isupper() and name != "DeepSeekError":  # the base class is named in the text
            assert f"``{name}``" in table, f"{name} is missing from the errors table"


# -- running the blocks -----------------------------------------------------------------------


#: What a page's Python blocks must print: proof that its examples ran as they say.
PRINTED = {
    "README.rst": [FakeDeepSeek.answer_for("In one sentence: why is the sky blue?"), "402 ", "Insufficient Balance"],
    "docs/quickstart.rst": [FakeDeepSeek.answer_for("In one sentence: why is the sky blue?")],
    "docs/errors.rst": ["402 ", "Insufficient Balance"],  # the error example really raised
}
#: Pages whose examples start a FakeDeepSeek of their own instead of using the environment's.
OWN_FAKE = {"docs/errors.rst", "docs/testing.rst"}


def test_every_expected_output_belongs_to_a_page_that_runs() -> None:
    assert set(PRINTED) <= set(pages_with(None, "python"))


@pytest.mark.parametrize("page", pages_with(None, "python"))
def test_python_blocks_run_in_order(page: str, deepseek_env: FakeDeepSeek, loopback_only: None) -> None:
    namespace: Dict[str, Any] = {"__name__": "readme"}
    output = io.StringIO()
    try:
        for block in blocks_of(page, None, "python"):
            try:
                with contextlib.redirect_stdout(output):
                    exec(compile(block.code, f"{page}:{block.line}", "exec"), namespace)
            except BaseException as err:
                trace = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-3:])
                raise AssertionError(f"{block}\nfailed with {trace}\noutput so far:\n{output.getvalue()}") from err
    finally:
        for value in namespace.values():  # what a page's examples opened and left open
            if isinstance(value, dp.DeepSeekPool):
                value.close(cancel=True)
            if isinstance(value, (dp.DeepSeekClient, dp.Limiter)):
                value.close()
    printed = output.getvalue()
    for expected in PRINTED.get(page, []):
        assert expected in printed, f"{page} printed no {expected!r}:\n{printed}"
    assert "some other failure" not in printed
    if page not in OWN_FAKE:
        assert deepseek_env.stats.by_status.get(200, 0) > 0, f"{page}'s examples never reached the fake"


@pytest.mark.parametrize("page", pages_with("file", "python"))
def test_user_test_files_pass_with_pytest(page: str, tmp_path: Path) -> None:
    files = blocks_of(page, "file", "python")
    for block in files:
        (tmp_path / block.argument).write_text(block.code, encoding="utf-8")
    (tmp_path / "readme_network_guard.py").write_text(NETWORK_GUARD, encoding="utf-8")
    tests = sum(block.code.count("\ndef test_") for block in files if block.argument.startswith("test_"))
    assert tests >= 1
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


@pytest.mark.parametrize("page", pages_with("shell", "bash"))
def test_shell_blocks_run_against_the_fake(
    page: str, fake_deepseek: FakeDeepSeek, cli_path: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = subprocess_env(
        {"PATH": cli_path, "DEEPSEEK_API_KEY": "sk-readme-test", "DEEPSEEK_BASE_URL": fake_deepseek.base_url}
    )
    blocks = blocks_of(page, "shell", "bash")
    for block in blocks:
        process = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert process.returncode == 0, f"{block}\nexited {process.returncode}:\n{process.stdout}\n{process.stderr}"
    if not any("deepseek-pool run prompts.jsonl" in block.code for block in blocks):
        return
    # The batch example: both items answered once; the rerun sent nothing; chat asked once more.
    records = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    assert sorted(r["custom_id"] for r in records) == ["a", "b"]
    assert all(r["error"] is None for r in records)
    assert fake_deepseek.stats.requests == 3


@pytest.mark.parametrize("page", pages_with("server", "bash"))
def test_server_blocks_serve_then_stop_on_ctrl_c(page: str, cli_path: str) -> None:
    servers = blocks_of(page, "server", "bash")
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
