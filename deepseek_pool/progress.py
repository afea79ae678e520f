"""What a batch run tells its user: running totals, a progress bar, the final summary.

:class:`Tally` counts outcomes, tokens and the estimated cost (peak/off-peak aware, from
:mod:`deepseek_pool.models`); :class:`BatchProgress` shows it on stderr with tqdm (and
does nothing when disabled); :func:`format_summary` renders a finished or interrupted run.
"""

from __future__ import annotations

import datetime as _dt
import logging
from typing import TYPE_CHECKING, Any, List, Optional, TextIO

from .models import estimate_cost
from .types import ChatCompletion

if TYPE_CHECKING:
    from .batch import BatchSummary

__all__ = ["BatchProgress", "Tally", "format_cost", "format_summary", "format_tokens"]

log = logging.getLogger(__name__)


class Tally:
    """Running totals of a batch: outcomes, tokens, and the estimated cost.

    A call whose model has no known price adds to :attr:`unpriced` rather than
    to :attr:`cost`: an unknown cost is never shown as $0.

    :ivar ok: calls answered.
    :ivar failed: items that failed.
    :ivar prompt_tokens: input tokens (``cache_hit_tokens`` of them served from cache).
    :ivar completion_tokens: output tokens (reasoning included).
    :ivar cost: estimated USD of the priced calls.
    :ivar unpriced: answered calls whose model has no price in the table.
    """

    __slots__ = ("cache_hit_tokens", "completion_tokens", "cost", "failed", "ok", "prompt_tokens", "unpriced")

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cache_hit_tokens = 0
        self.cost = 0.0
        self.unpriced = 0

    def add_ok(self, completion: ChatCompletion, model: str, when: Optional[_dt.datetime] = None) -> None:
        """Count one answer; ``model`` prices it when the answer names none."""
        self.ok += 1
        usage = completion.usage
        if usage is None:
            return
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cache_hit_tokens += usage.prompt_cache_hit_tokens
        cost = estimate_cost(
            completion.model or model,
            prompt_cache_hit_tokens=usage.prompt_cache_hit_tokens,
            prompt_cache_miss_tokens=usage.prompt_cache_miss_tokens,
            completion_tokens=usage.completion_tokens,
            when=when,
        )
        if cost is None:
            self.unpriced += 1
        else:
            self.cost += cost

    def add_failed(self) -> None:
        """Count one failed item."""
        self.failed += 1

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cache_hit_share(self) -> Optional[float]:
        """Share of prompt tokens served from DeepSeek's cache, or None before any."""
        return self.cache_hit_tokens / self.prompt_tokens if self.prompt_tokens else None


def format_tokens(count: int) -> str:
    """``1234567`` -> ``"1.23M"``: short enough for a progress bar."""
    if count < 10_000:
        return str(count)
    if count < 1_000_000:
        return f"{count / 1000:.1f}k"
    return f"{count / 1_000_000:.2f}M"


def format_cost(tally: Tally) -> str:
    """``"$0.0123"``, ``"unknown"`` when no call had a price, or both when mixed."""
    if tally.unpriced and not tally.cost:
        return "unknown"
    text = _dollars(tally.cost)
    if tally.unpriced:
        text += f" + unknown ({tally.unpriced} calls of unpriced models)"
    return text


def _dollars(amount: float) -> str:
    # A single call costs fractions of a cent: keep enough digits to show it.
    if amount < 0.01:
        return f"${amount:.6f}"
    return f"${amount:.4f}" if amount < 100 else f"${amount:,.2f}"


class BatchProgress:
    """Where a batch run reports: a tqdm bar plus notices on ``file``, or nothing.

    The batch loop calls it unconditionally; everything a disabled part would do is
    skipped here, so the loop never branches on it.

    :param file: the stream (stderr in the CLI); None prints nothing and sends
        warnings to :mod:`logging` instead.
    :param bar: show the progress bar (rate, ok/failed counts, tokens, cost).
    :param quiet: drop informational notices; warnings still go out.
    """

    def __init__(self, file: Optional[TextIO] = None, *, bar: bool = False, quiet: bool = False) -> None:
        self._file = file
        self._want_bar = bar and file is not None
        self._quiet = quiet or file is None
        self._bar: Any = None

    def start(self, total: int) -> None:
        """Open the bar for ``total`` items (no bar for an empty run)."""
        if self._want_bar and total:
            from tqdm import tqdm  # imported here: only the interactive path pays for it

            self._bar = tqdm(total=total, file=self._file, unit="req", dynamic_ncols=True, smoothing=0.1)

    def update(self, tally: Tally) -> None:
        """Advance by one finished item and show the new totals."""
        bar = self._bar
        if bar is None:
            return
        # refresh=False: tqdm redraws at most every mininterval, so this stays cheap per item.
        bar.set_postfix_str(
            f"ok={tally.ok} failed={tally.failed} tokens={format_tokens(tally.total_tokens)} cost={_short_cost(tally)}",
            refresh=False,
        )
        bar.update(1)

    def info(self, text: str) -> None:
        """A notice the user may skip (dropped with ``quiet``)."""
        if not self._quiet:
            self._print(text)

    def warn(self, text: str) -> None:
        """A notice the user must see (a repaired file, ignored lines)."""
        if self._file is None:
            log.warning("%s", text)
        else:
            self._print(text)

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self._file)
        else:
            print(text, file=self._file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _short_cost(tally: Tally) -> str:
    if tally.unpriced:
        return "unknown" if not tally.cost else f"${tally.cost:.4f}+?"
    return f"${tally.cost:.4f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s"


def format_summary(summary: BatchSummary) -> str:
    """The lines printed at the end of a run: items, tokens (cache-hit share), cost, wall time."""
    tally = summary.tally
    items = f"items: {tally.ok} ok, {tally.failed} failed, {summary.skipped} skipped"
    if summary.skipped_failed:
        items += f" ({summary.skipped_failed} of them failed before: --retry-failed tries them again)"
    if summary.not_run:
        items += f", {summary.not_run} not run"
    items += f" (of {summary.items} in the input)"
    share = tally.cache_hit_share
    tokens = (
        f"tokens: {tally.prompt_tokens:,} in ({'-' if share is None else f'{share:.0%}'} cache hits), "
        f"{tally.completion_tokens:,} out"
    )
    lines: List[str] = [
        items,
        tokens,
        f"estimated cost: {format_cost(tally)}",
        f"wall time: {_duration(summary.elapsed)}",
    ]
    if summary.compacted:
        lines.append(f"output compacted: {summary.compacted} superseded lines removed")
    return "\n".join(lines)
