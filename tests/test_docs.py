"""The Sphinx site under docs/ builds without a warning, and its reference leaves no module out.

The code blocks of its pages are run by tests/test_readme.py, as README.rst's are.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Set

import pytest

import deepseek_pool as dp
import deepseek_pool.testing

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
_AUTO = re.compile(r"^\.\. auto(?:class|exception|function|data|module):: +(\S+)\s*$", re.MULTILINE)

#: Layer modules the internals page need not show: the public ones (api.rst), the simulator's
#: private modules, and the old import path kept for README.rst's readers.
NOT_INTERNALS = {
    "deepseek_pool.__main__",
    "deepseek_pool.redis_storage",
    "deepseek_pool.contrib.celery",
    "deepseek_pool.contrib.relay",
}


def documented(page: str) -> Set[str]:
    return set(_AUTO.findall((DOCS / page).read_text(encoding="utf-8")))


def test_the_api_reference_shows_every_public_name() -> None:
    names = documented("api.rst")
    missing = [name for name in dp.__all__ if not name.startswith("__") and f"deepseek_pool.{name}" not in names]
    assert not missing, f"add these to docs/api.rst: {missing}"
    assert {"deepseek_pool.testing", "deepseek_pool.testing.pytest_plugin", "deepseek_pool.contrib.celery"} <= names
    assert deepseek_pool.testing.__all__  # documented through the module's own __all__


def test_the_internals_page_shows_every_module_of_the_layers() -> None:
    modules = {
        module.name
        for module in pkgutil.walk_packages(dp.__path__, "deepseek_pool.")
        if not module.name.startswith("deepseek_pool.testing") and module.name not in NOT_INTERNALS
    }
    missing = sorted(modules - documented("internals.rst"))
    assert not missing, f"add these to docs/internals.rst: {missing}"


@pytest.mark.timeout(300)
def test_the_docs_build_without_a_warning(tmp_path: Path) -> None:
    for module in ("sphinx", "myst_parser"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]' to build the docs")
    html = tmp_path / "html"
    sphinx = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    process = subprocess.run(
        [*sphinx, "-d", str(tmp_path / "doctrees"), str(DOCS), str(html)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    api = (html / "api.html").read_text(encoding="utf-8")
    assert 'id="deepseek_pool.DeepSeekPool.as_completed"' in api, "autodoc documented the members"
    assert (html / "_images" / "chart.png").exists(), "the benchmark chart is shown"
