"""Guaranteed shares of one budget's in-flight cap: an interactive share that a batch cannot take.

``Limiter(max_in_flight=10, shares={"interactive": 4, "batch": 0})`` names the kinds of
work that share the budget and what each is guaranteed; a call takes a share by the
limiter it goes through (``limiter.for_share("batch")``, ``DeepSeekPool(share=...)``,
``DeepSeekClient(share=...)``) or ``limiter.acquire(share=...)``.

The rule (:func:`admits`), at the budget's current cap ``C`` with ``u`` calls of each
share in flight and ``g`` guaranteed to each:

* a share's guaranteed slots are its own: it may always start while it runs fewer than
  ``g`` (and the budget fewer than ``C``), and no other share may take them, even idle;
* the rest of the cap, ``C - sum(g)``, is everyone's, first come: a share may run past its
  guarantee, and a call without a share may start, while ``sum(max(u, g)) < C``.

So a batch of ``batch: 0`` runs at most ``C - 4`` calls while ``interactive: 4`` is idle,
and an interactive view that arrives starts at once, without waiting for a batch call to
end; when the batch is idle the interactive share borrows the whole cap. This is where
the rule parts from Netflix's concurrency-limits, whose partitions may run past the total
limit to reach their guarantee: DeepSeek's cap is the account's, and a call past it
draws a 429, so here a guarantee is a reservation, never an overdraft. The price: a
share's idle guaranteed slots are not lent (a borrowed slot can be held for minutes,
and its owner would wait that long).

How a guarantee follows the adaptive cap: in proportion. A guarantee is a fraction of
the cap, given as one (a float from 0 to 1) or as slots of ``max_in_flight`` (an int:
``4`` of ``max_in_flight=10`` is 0.4); at the current cap ``C`` it is that fraction of
``C`` rounded down, and at least one slot for a share guaranteed anything. So
``interactive: 4`` of 10 is 4 slots while the cap is 10, 2 after a 429 named a cap of 5,
1 at a cap of 2 -- and the slots that no guarantee holds shrink in the same proportion,
so a batch that the configuration left room beside a guarantee keeps some while the cap
has a slot more than the shares guaranteed anything (at a cap of 1, that share has it).
Shares need ``max_in_flight``, and together may guarantee at most all of it.

Nothing here waits or reads a clock: these are pure functions that
:func:`~deepseek_pool.budget.rules.try_start` calls inside a storage's transaction, and
that :mod:`~deepseek_pool.budget.redis_scripts` writes again in Lua.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import ConfigurationError

__all__ = ["Share", "admits", "check_share", "guaranteed", "lease_share", "parse_shares", "shares_key", "shares_spec"]

#: What a share's name may hold: it travels in lease ids, SQL and Lua unescaped.
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
#: Between a lease id and the name of its share (which holds none).
SHARE_MARK = "/"
#: A guarantee's slots are rounded down; this much under a whole number is float rounding.
_ROUNDING = 1e-9


@dataclass(frozen=True)
class Share:
    """One named share and the fraction of the cap guaranteed to it."""

    name: str
    fraction: float = 0.0


def parse_shares(shares: Any, max_in_flight: Optional[int]) -> Tuple[Share, ...]:
    """Check ``Limiter(shares=...)`` and return it as :class:`Share` values, sorted by name.

    :raises ConfigurationError: not a non-empty mapping of valid names to ints >= 0 or
        fractions in [0, 1]; no ``max_in_flight``; or guarantees that add up past it.
    """
    if not isinstance(shares, Mapping) or not shares:
        raise ConfigurationError(f"shares must be a non-empty dict of share name -> guaranteed slots, got {shares!r}")
    if max_in_flight is None:
        raise ConfigurationError("shares need max_in_flight: a guarantee is a part of the in-flight cap")
    parsed = []
    slots = fractions = 0.0
    for name, value in shares.items():
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            raise ConfigurationError(f"a share's name must be 1-64 of A-Z a-z 0-9 _ . : -, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigurationError(f"share {name!r}: give an int of slots or a fraction of the cap, got {value!r}")
        if isinstance(value, int):
            if value < 0:
                raise ConfigurationError(f"share {name!r}: guaranteed slots must be >= 0, got {value}")
            slots += value
            parsed.append(Share(name, value / max_in_flight))
        else:
            if not 0.0 <= value <= 1.0:
                raise ConfigurationError(f"share {name!r}: a fraction of the cap must be from 0 to 1, got {value!r}")
            fractions += value
            parsed.append(Share(name, float(value)))
    if slots / max_in_flight + fractions > 1.0 + _ROUNDING:
        raise ConfigurationError(
            f"shares {dict(shares)!r} guarantee more than max_in_flight={max_in_flight} holds "
            f"({slots:g} slots and {fractions:g} of the cap): lower them or raise max_in_flight"
        )
    return tuple(sorted(parsed, key=lambda share: share.name))


def check_share(shares: Tuple[Share, ...], share: Optional[str]) -> None:
    """Refuse a ``share=`` that names none of ``shares`` (None, no share, is always fine)."""
    if share is None:
        return
    names = [known.name for known in shares]
    if not names:
        raise ConfigurationError(f"share={share!r} needs a Limiter with shares=, and this one has none")
    if share not in names:
        raise ConfigurationError(f"unknown share {share!r}: this Limiter's shares are {', '.join(names)}")


def shares_spec(shares: Tuple[Share, ...]) -> str:
    """The shares as one line, ``name:fraction;...`` (how Redis's scripts receive them)."""
    return ";".join(f"{share.name}:{share.fraction!r}" for share in shares)


def shares_key(shares: Tuple[Share, ...]) -> int:
    """A number that tells one set of shares from another (0: none), stored with the budget."""
    return zlib.crc32(shares_spec(shares).encode()) + 1 if shares else 0


def lease_share(lease_id: str) -> str:
    """The share a lease was taken for ('' for none): the end of its id, after the last mark."""
    mark = lease_id.rfind(SHARE_MARK)
    return "" if mark < 0 else lease_id[mark + 1 :]


def guaranteed(shares: Tuple[Share, ...], cap: float) -> Dict[str, int]:
    """Each share's guaranteed slots at ``cap``: its fraction of it, rounded down, at least one
    if it is guaranteed anything."""
    return {
        share.name: max(1, math.floor(share.fraction * cap + _ROUNDING)) if share.fraction > 0 else 0
        for share in shares
    }


def admits(shares: Tuple[Share, ...], cap: float, in_flight: int, running: Mapping[str, int], share: str) -> bool:
    """Whether a call of ``share`` ('' for none) may start now.

    :param cap: the budget's in-flight cap now.
    :param in_flight: the budget's calls in flight, of every share and none.
    :param running: calls in flight per share name.
    """
    if in_flight >= cap:
        return False
    occupied = in_flight  # every call in flight, plus the idle guaranteed slots of each share
    for name, slots in guaranteed(shares, cap).items():
        used = running.get(name, 0)
        if used < slots:
            if name == share:
                return True
            occupied += slots - used
    return occupied < cap
