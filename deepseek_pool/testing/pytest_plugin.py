"""pytest fixtures for code that calls DeepSeek: a :class:`FakeDeepSeek` per test session.

Enable in a ``conftest.py`` with ``pytest_plugins = ["deepseek_pool.testing.pytest_plugin"]``.

- ``fake_deepseek``: the session's server, :meth:`~FakeDeepSeek.reset` before each test.
- ``deepseek_env``: the same, with ``DEEPSEEK_API_KEY`` and ``DEEPSEEK_BASE_URL`` pointing at it.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from deepseek_pool.testing._server import FakeDeepSeek

#: The key ``deepseek_env`` exports; the session server accepts any key.
FAKE_API_KEY = "sk-fake-deepseek-test-key"


@pytest.fixture(scope="session")
def fake_deepseek_server() -> Iterator[FakeDeepSeek]:
    """One server for the whole session: starting one per test would cost more than the tests."""
    with FakeDeepSeek() as fake:
        yield fake


@pytest.fixture
def fake_deepseek(fake_deepseek_server: FakeDeepSeek) -> Iterator[FakeDeepSeek]:
    """The session's :class:`FakeDeepSeek`, with counters, script and log cleared for this test."""
    fake_deepseek_server.reset()
    yield fake_deepseek_server


@pytest.fixture
def deepseek_env(fake_deepseek: FakeDeepSeek, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDeepSeek]:
    """Point ``DEEPSEEK_API_KEY`` / ``DEEPSEEK_BASE_URL`` at the fake for this test."""
    monkeypatch.setenv("DEEPSEEK_API_KEY", FAKE_API_KEY)
    monkeypatch.setenv("DEEPSEEK_BASE_URL", fake_deepseek.base_url)
    yield fake_deepseek
