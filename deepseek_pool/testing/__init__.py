"""Offline testing support: :class:`FakeDeepSeek`, a local DeepSeek-compatible server.

Usage::

    from deepseek_pool.testing import FakeDeepSeek

    with FakeDeepSeek(latency=0.05, faults={"503": 0.1}, seed=7) as fake:
        os.environ["DEEPSEEK_BASE_URL"] = fake.base_url
        ...

For pytest, enable the fixtures ``fake_deepseek`` and ``deepseek_env`` with
``pytest_plugins = ["deepseek_pool.testing.pytest_plugin"]``.

The simulator stands apart: :mod:`~deepseek_pool.testing._server` decides each answer over
the sockets of :mod:`~deepseek_pool.testing._connections`; the protocol is pure functions
(:mod:`~deepseek_pool.testing._protocol`, :mod:`~deepseek_pool.testing._fields`,
:mod:`~deepseek_pool.testing._answers`, :mod:`~deepseek_pool.testing._render`).

May import: the standard library and the foundation modules (today only
:mod:`deepseek_pool.models`, for the model aliases): it speaks HTTP on its own socket, so
it knows nothing of the client, the wire or the pool it is used to test. The library
never imports it; the CLI does, lazily, for ``demo`` and ``serve-fake``.
"""

from __future__ import annotations

from deepseek_pool.testing._cli import main
from deepseek_pool.testing._faults import FAULT_NAMES, Fault, parse_fault
from deepseek_pool.testing._server import FakeDeepSeek, FakeStats, Latency, ReceivedRequest

__all__ = [
    "FAULT_NAMES",
    "FakeDeepSeek",
    "FakeStats",
    "Fault",
    "Latency",
    "ReceivedRequest",
    "main",
    "parse_fault",
]
