"""What the fake reports: each request as received, and a snapshot of its counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, NamedTuple

__all__ = ["FakeStats", "ReceivedRequest"]


class ReceivedRequest(NamedTuple):
    """One request as the fake received it (header names lower-cased)."""

    method: str
    path: str
    headers: Dict[str, str]
    body: Any


@dataclass(frozen=True)
class FakeStats:
    """A snapshot of the fake's counters (see :attr:`FakeDeepSeek.stats`).

    :ivar requests: requests received, answered or not.
    :ivar by_status: HTTP status -> number of answers sent with it.
    :ivar peak_concurrency: most requests handled at the same instant.
    :ivar in_flight: requests being handled now.
    :ivar connections_opened: TCP connections accepted.
    :ivar faults_injected: fault kind (``"429"``, ``"trickle"``, ...) -> times injected.
    """

    requests: int
    by_status: Dict[int, int]
    peak_concurrency: int
    in_flight: int
    connections_opened: int
    faults_injected: Dict[str, int]
