"""Shared fixtures: a clean environment for every test, and the FakeDeepSeek server."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import threading
from typing import Any, Iterator, List

import pytest

pytest_plugins = ["deepseek_pool.testing.pytest_plugin"]

_ENV_PREFIXES = ("DEEPSEEK_",)
_PROXY_VARS = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's DeepSeek settings or proxies (nothing may leave loopback)."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES) or name in _PROXY_VARS:
            monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """A test must not leave non-daemon threads running (they would keep the process alive)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for thread in leaked:
        thread.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"threads left running: {still}"


@pytest.fixture
def children() -> Iterator[List[subprocess.Popen]]:
    """Child processes a test starts: killed and reaped at its end, whatever happened."""
    started: List[subprocess.Popen] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A real redis-server on a free 127.0.0.1 port for the whole session (skipped without one)."""
    from .redisserver import running_redis

    if importlib.util.find_spec("redis") is None:
        pytest.skip("redis-py is not installed (pip install 'deepseek-pool[redis]')")
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: Any) -> Iterator[str]:
    """Database 0 of the session's redis-server, emptied for this test (restarted if a test stopped it)."""
    import redis

    if not redis_server.answers():
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url(0))
    client.flushdb()
    client.close()
    yield redis_server.url(0)
    if not redis_server.answers():
        redis_server.start()
