"""Fault names understood by :class:`~deepseek_pool.testing.FakeDeepSeek`.

A fault is written as a short string so that it reads well in tests, in a rate table and
on the command line (``--fault 503=0.1``):

==========================  ===============================================================
``ok``                      no fault
``429`` / ``429:<s>``       rate limited; ``<s>`` sets Retry-After for this one answer
``500`` ``502`` ``503``     server errors; ``402`` insufficient balance
``reset``                   read the request, then drop the connection with a TCP RST
``trickle:<n>``             ``n`` blank lines (``: keep-alive`` comments when streaming) first
``trickle_forever``         keep-alive lines until the client or the server gives up
``cut:<k>``                 close the connection after ``k`` events (``k`` bytes if not streaming)
``insufficient``            200 with partial content, finish_reason ``insufficient_system_resource``
``empty``                   200 with a whitespace-only body
``hold_after_done``         after ``data: [DONE]`` keep the stream open without ending it
``hold_after_done_close``   the same with ``Connection: close`` and no framing (the body
                            ends when the connection does), the case a reader may not wait for
==========================  ===============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

#: Faults answered with an HTTP error status, by name.
STATUS_FAULTS: Dict[str, int] = {"429": 429, "500": 500, "502": 502, "503": 503, "402": 402}

_PLAIN = frozenset(
    {"ok", "reset", "trickle_forever", "insufficient", "empty", "hold_after_done", "hold_after_done_close"}
) | frozenset(STATUS_FAULTS)
_WITH_COUNT = frozenset({"trickle", "cut"})

#: Every fault name, for error messages and ``--help``.
FAULT_NAMES: Tuple[str, ...] = (
    "ok",
    "429",
    "429:<seconds>",
    "500",
    "502",
    "503",
    "402",
    "reset",
    "trickle:<n>",
    "trickle_forever",
    "cut:<k>",
    "insufficient",
    "empty",
    "hold_after_done",
    "hold_after_done_close",
)


@dataclass(frozen=True)
class Fault:
    """One parsed fault.

    :ivar kind: the name without its argument (``"trickle"`` for ``"trickle:3"``).
    :ivar count: the ``<n>`` / ``<k>`` of ``trickle`` and ``cut``, else 0.
    :ivar retry_after: the ``<seconds>`` of ``429:<seconds>``, else None.
    :ivar status: the HTTP status it answers with, or None when it is not an error status.
    """

    kind: str
    count: int = 0
    retry_after: Optional[float] = None
    status: Optional[int] = None


def parse_fault(spec: str) -> Fault:
    """Turn a fault name such as ``"429:2"`` or ``"cut:3"`` into a :class:`Fault`.

    :raises ValueError: on an unknown name or a bad argument, so typos fail loudly.
    """
    if not isinstance(spec, str):
        raise ValueError(f"fault names are strings, got {spec!r}")
    name, sep, arg = spec.strip().partition(":")
    if not sep:
        if name in _PLAIN:
            return Fault(kind=name, status=STATUS_FAULTS.get(name))
        if name in _WITH_COUNT:
            raise ValueError(f"fault {name!r} needs a count, e.g. {name + ':3'!r}")
    elif name == "429":
        try:
            seconds = float(arg)
        except ValueError:
            seconds = -1.0
        if not seconds >= 0.0 or seconds == float("inf"):
            raise ValueError(f"bad Retry-After seconds in fault {spec!r}")
        return Fault(kind="429", retry_after=seconds, status=429)
    elif name in _WITH_COUNT:
        if not arg.isdigit():
            raise ValueError(f"bad count in fault {spec!r} (a non-negative integer is needed)")
        return Fault(kind=name, count=int(arg))
    raise ValueError(f"unknown fault {spec!r}; known faults: {', '.join(FAULT_NAMES)}")


def parse_rates(rates: Optional[Mapping[str, float]]) -> List[Tuple[float, Fault]]:
    """Validate a ``{fault: probability}`` table into ``(cumulative probability, fault)`` pairs.

    Cumulative bounds let one uniform draw pick at most one fault per request.

    :raises ValueError: on an unknown fault, a probability outside [0, 1] or a sum above 1.
    """
    table: List[Tuple[float, Fault]] = []
    total = 0.0
    for spec, probability in (rates or {}).items():
        fault = parse_fault(spec)
        if isinstance(probability, bool) or not isinstance(probability, (int, float)):
            raise ValueError(f"the rate of fault {spec!r} must be a number, got {probability!r}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"the rate of fault {spec!r} must be within [0, 1], got {probability}")
        if probability == 0.0 or fault.kind == "ok":
            continue
        total += probability
        table.append((total, fault))
    if total > 1.0 + 1e-9:
        raise ValueError(f"fault rates add up to {total:g}, more than 1")
    return table
