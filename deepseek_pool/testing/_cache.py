"""DeepSeek V4's prompt cache as the fake models it: prefix units, built late, per ``user_id``.

The rules, from DeepSeek's context-caching guide (2026) as ``shared/deepseek-api.md`` sums
them up:

* A request hits only where it fully matches a stored *unit*: the hit is the longest unit
  that is a prefix of the request, never a partial match of a longer one.
* When a request completes, its own prompt (the end of its user input) and its prompt plus
  answer become units, and so does the longest prefix it shares with a request completed
  before it (the "common prefix across requests"): so a prefix shared by many requests is a
  unit only once two requests carrying it have *completed*, and requests started together
  before that miss it all.
* A unit can be hit only ``build_delay`` seconds after it is made ("construction takes
  seconds"), and is forgotten ``lifetime`` seconds after its last use.
* Each ``user_id`` (and requests without one) has a cache of its own.
* Hits come in whole ``unit_tokens`` and count only from ``min_tokens`` (a 2026 probe of V4
  reports multiples of 256 with about a 1,024 minimum; unconfirmed, so both are settings).

Units at fixed token intervals inside long inputs are not modelled: prefixes end at message
boundaries. Pure and thread-safe; the clock is injected so the tests need no sleeps.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Set

__all__ = ["CacheRules", "PromptCache"]

#: Most prefixes remembered per cache before it starts afresh, so a long benchmark stays bounded.
MAX_ENTRIES = 200_000


@dataclass(frozen=True)
class CacheRules:
    """The settings of the model; the defaults follow the V4 figures above, but build in 0.05 s."""

    unit_tokens: int = 256
    min_tokens: int = 1024
    build_delay: float = 0.05
    lifetime: float = 4 * 3600.0

    def __post_init__(self) -> None:
        if isinstance(self.unit_tokens, bool) or not isinstance(self.unit_tokens, int) or self.unit_tokens < 1:
            raise ValueError(f"cache_unit_tokens must be an int >= 1, got {self.unit_tokens!r}")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise ValueError(f"cache_min_tokens must be an int >= 0, got {self.min_tokens!r}")
        if not self.build_delay >= 0:
            raise ValueError(f"cache_build_delay must be >= 0 seconds, got {self.build_delay!r}")
        if not self.lifetime > 0:
            raise ValueError(f"cache_lifetime must be > 0 seconds, got {self.lifetime!r}")

    def billable_hit(self, tokens: int) -> int:
        """The hit a unit of ``tokens`` gives: whole units only, nothing below the minimum."""
        hit = tokens - tokens % self.unit_tokens
        return hit if hit >= self.min_tokens else 0


@dataclass
class _Unit:
    tokens: int
    ready_at: float
    last_used: float


@dataclass
class _Scope:
    """One ``user_id``'s cache: its units, and every prefix a completed request carried."""

    units: Dict[int, _Unit] = field(default_factory=dict)
    seen: Set[int] = field(default_factory=set)


class PromptCache:
    """The prefix units of every ``user_id``: :meth:`lookup` at a request's start, :meth:`complete` at its end.

    A request is described by its prefixes: ``keys[i]`` identifies the prompt up to the end
    of its ``i``-th piece (a hash chained over the pieces, so equal keys mean equal prefixes)
    and ``tokens[i]`` is how many tokens that prefix holds.
    """

    def __init__(self, rules: CacheRules = CacheRules(), clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self._clock = clock
        self._lock = threading.Lock()
        self._scopes: Dict[Optional[str], _Scope] = {}

    def lookup(self, scope: Optional[str], keys: Sequence[int], tokens: Sequence[int]) -> int:
        """The prompt tokens that hit: the longest live unit the request starts with."""
        now = self._clock()
        with self._lock:
            cache = self._scopes.get(scope)
            if cache is None:
                return 0
            for key, count in zip(reversed(keys), reversed(tokens)):
                unit = cache.units.get(key)
                if unit is None or unit.ready_at > now:
                    continue
                if now - unit.last_used >= self.rules.lifetime:
                    del cache.units[key]
                    continue
                unit.last_used = now
                return self.rules.billable_hit(count)
        return 0

    def complete(
        self, scope: Optional[str], keys: Sequence[int], tokens: Sequence[int], answer: Optional[tuple[int, int]] = None
    ) -> None:
        """Record a completed request: its prompt, its prompt and ``answer`` (key, tokens), and
        the longest prefix it shares with an earlier completed request become units."""
        if not keys:
            return
        now = self._clock()
        ready = now + self.rules.build_delay
        with self._lock:
            cache = self._scopes.setdefault(scope, _Scope())
            if len(cache.seen) + len(cache.units) > MAX_ENTRIES:
                cache.seen.clear()
                cache.units.clear()
            made = [(keys[-1], tokens[-1])]
            if answer is not None:
                made.append(answer)
            for key, count in zip(reversed(keys[:-1]), reversed(tokens[:-1])):
                if key in cache.seen:
                    made.append((key, count))
                    break
            for key, count in made:
                old = cache.units.get(key)
                if old is None or now - old.last_used >= self.rules.lifetime:
                    cache.units[key] = _Unit(count, ready, ready)
            cache.seen.update(keys)

    def clear(self) -> None:
        """Forget every unit and every prefix seen."""
        with self._lock:
            self._scopes.clear()
