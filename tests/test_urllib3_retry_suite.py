"""urllib3's own ``test/test_retry.py``, run against DeepSeekRetry.

The suite comes from the sdist of the installed urllib3 (downloaded at test time, never
committed), with ``Retry`` rebound to :class:`deepseek_pool.wire.retry.DeepSeekRetry`. Every test
must pass except those in ``EXPECTED_DIFFERENCES``, each a documented difference; a listed
test that passes fails this test too, so the list stays true.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict

import pytest
import urllib3

ROOT = Path(__file__).resolve().parents[1]

_DEFAULTS = "DeepSeek's defaults differ (total=2, backoff_factor=0.5, jitter 0.25 s, raise_on_redirect=False)"
_FIRST_RETRY = "the first retry already waits backoff_factor (urllib3 retries at once)"
_CAP = "Retry-After is capped at 60 s by default (urllib3: 6 hours)"

#: test id (class::name[params]) -> the documented difference that makes it fail.
EXPECTED_DIFFERENCES: Dict[str, str] = {
    "TestRetry::test_string": f"{_DEFAULTS}; the repr also names DeepSeekRetry, retry_after_max and retry_timeouts",
    "TestRetry::test_retry_default": _DEFAULTS,
    "TestRetry::test_zero_backoff": _DEFAULTS,
    "TestRetry::test_backoff": _FIRST_RETRY,
    "TestRetry::test_configurable_backoff_max": _FIRST_RETRY,
    "TestRetry::test_backoff_jitter": _FIRST_RETRY,
    "TestRetry::test_backoff_reset_after_redirect": f"{_DEFAULTS}: the jitter makes the exact backoff differ",
    "TestRetry::test_retry_method_not_allowed": "POST is retried (urllib3 retries only idempotent methods)",
    "TestRetry::test_parse_retry_after_invalid[1.0]": "fractional Retry-After seconds are accepted",
    "TestRetry::test_parse_retry_after[1000-1000]": _CAP,
    **{
        f"TestRetry::test_respect_retry_after_header_sleep[{zone}-{header}-True-{seconds}]": _CAP
        for zone in ("UTC", "Asia/Jerusalem", "None")
        for header, seconds in (
            ("3600", 3600),
            ("Mon, 3 Jun 2019 12:00:00 UTC", 3600),
            ("Mon, 03 Jun 2019 11:30:12 GMT", 1812),
            ("Monday, 03-Jun-19 11:30:12 GMT", 1812),
            ("Mon Jun  3 11:30:12 2019", 1812),
        )
    },
}

_TEST_PACKAGE = '''"""The one name urllib3's test_retry.py takes from urllib3's test package."""
from urllib3.connectionpool import ConnectionPool

DUMMY_POOL = ConnectionPool("dummy")
'''

_CONFTEST = '''"""urllib3's stub_timezone fixture, without the servers the rest of its conftest starts."""
import pytest

from .tz_stub import stub_timezone_ctx


@pytest.fixture
def stub_timezone(request):
    with stub_timezone_ctx(request.param):
        yield
'''

_IMPORT = re.compile(r"^from urllib3\.util\.retry import .*\bRetry\b.*$", re.MULTILINE)
_REBIND = "from deepseek_pool.wire.retry import DeepSeekRetry as Retry  # rewritten by deepseek_pool"


@pytest.fixture(scope="session")
def urllib3_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding urllib3's test_retry.py, rewritten, with the imports it needs."""
    download = tmp_path_factory.mktemp("urllib3-sdist")
    command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
    command += [f"urllib3=={urllib3.__version__}", "-d", str(download), "--quiet"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("downloading urllib3's sdist from PyPI timed out")
    archives = sorted(download.glob("urllib3-*.tar.gz"))
    if not archives:  # only a missing file matters: pip may fail later, preparing metadata
        pytest.skip(f"could not download urllib3 {urllib3.__version__}'s sdist: {done.stderr.strip()[-500:]}")
    suite = tmp_path_factory.mktemp("urllib3-suite")
    package = suite / "test"
    package.mkdir()
    with tarfile.open(archives[0]) as archive:
        sources = {Path(m.name).name: m for m in archive.getmembers() if re.fullmatch(r"[^/]+/test/[^/]+\.py", m.name)}
        for name in ("test_retry.py", "tz_stub.py"):
            assert name in sources, f"{archives[0].name} has no test/{name}: this tier needs updating"
            member = archive.extractfile(sources[name])
            assert member is not None, f"{name} is not a file in {archives[0].name}"
            (package / name).write_bytes(member.read())
    source = (package / "test_retry.py").read_text(encoding="utf-8")
    rewritten, count = _IMPORT.subn(lambda match: f"{match.group(0)}\n{_REBIND}", source)
    assert count == 1, "urllib3's test_retry.py no longer imports Retry the way this tier rewrites it"
    (package / "test_retry.py").write_text(rewritten, encoding="utf-8")
    (package / "__init__.py").write_text(_TEST_PACKAGE, encoding="utf-8")
    (package / "conftest.py").write_text(_CONFTEST, encoding="utf-8")
    (suite / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # keeps pytest from looking further up
    return suite


def run_suite(suite: Path) -> Dict[str, str]:
    """Run the rewritten suite in a subprocess; the outcome of each test by id."""
    report = suite / "report.xml"
    path = [str(suite), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]  # the same urllib3 as here
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={report}"]
    done = subprocess.run(
        [*command, "test/test_retry.py"], cwd=suite, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode in (0, 1), f"the suite did not run:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return outcomes


@pytest.mark.timeout(900)
def test_urllib3_retry_suite_passes_but_for_the_documented_differences(urllib3_suite: Path) -> None:
    outcomes = run_suite(urllib3_suite)
    assert sum(outcome == "passed" for outcome in outcomes.values()) >= 30, outcomes  # the suite really ran
    unexpected_failures = sorted(name for name, outcome in outcomes.items() if outcome == "failed")
    unexpected_failures = [name for name in unexpected_failures if name not in EXPECTED_DIFFERENCES]
    unexpected_passes = sorted(name for name in EXPECTED_DIFFERENCES if outcomes.get(name) == "passed")
    missing = sorted(name for name in EXPECTED_DIFFERENCES if name not in outcomes)
    assert (unexpected_failures, unexpected_passes, missing) == ([], [], []), (
        f"failed, not listed: {unexpected_failures}; listed, but passed: {unexpected_passes}; "
        f"listed, but not run: {missing}"
    )
