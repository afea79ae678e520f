"""What a batch run tells its user: running totals, a progress bar, the final summary.

:class:`Tally` counts outcomes, tokens, the share of prompt tokens DeepSeek's cache
served, and the estimated cost (at the peak or off-peak rate the calendar of
:mod:`deepseek_pool.money.offpeak` gives each call); :class:`BatchProgress` shows it on
stderr with tqdm, and when an off-peak-only run holds its calls through a peak window
(and does nothing when disabled); :class:`BatchSummary` is what a run did, and
:func:`format_summary` / :func:`summary_dict` render it for people and for scripts.
The batch runner imports this module, never the other way round.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, TextIO

from ..models import ModelPrice, estimate_cost, price_of
from ..money.spend import cost_at

__all__ = ["BatchProgress", "BatchSummary", "Tally", "format_cost", "format_summary", "format_tokens", "summary_dict"]

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

    :param prices: prices the user gave, used before the table (see :mod:`deepseek_pool.models`).
    """

    __slots__ = (
        "cache_hit_tokens",
        "completion_tokens",
        "cost",
        "failed",
        "ok",
        "prices",
        "prompt_tokens",
        "unpriced",
    )

    def __init__(self, prices: Optional[Mapping[str, ModelPrice]] = None) -> None:
        self.prices = prices
        self.ok = 0
        self.failed = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cache_hit_tokens = 0
        self.cost = 0.0
        self.unpriced = 0

    def add_ok(
        self, completion: Any, model: str, when: Optional[_dt.datetime] = None, *, peak: Optional[bool] = None
    ) -> None:
        """Count one answer (a chat or FIM completion); ``model`` prices it when the answer names none.

        ``peak``: the rate the calendar gave the call
        (:meth:`~deepseek_pool.money.offpeak.PeakCalendar.peak_between` its start and end);
        None prices it at the hour ``when`` (default: now).
        """
        self.ok += 1
        usage = completion.usage
        if usage is None:
            return
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cache_hit_tokens += usage.prompt_cache_hit_tokens
        counts = {
            "prompt_cache_hit_tokens": usage.prompt_cache_hit_tokens,
            "prompt_cache_miss_tokens": usage.prompt_cache_miss_tokens,
            "completion_tokens": usage.completion_tokens,
        }
        cost: Optional[float]
        if peak is None:
            cost = estimate_cost(completion.model or model, when=when, prices=self.prices, **counts)
        else:
            price = price_of(completion.model or model, self.prices)
            cost = None if price is None else cost_at(price, peak=peak, **counts)
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


@dataclass
class BatchSummary:
    """What a run did; :func:`format_summary` prints it, :func:`summary_dict` gives it to scripts.

    :ivar items: items in the input (malformed lines included).
    :ivar tally: this run's answered/failed counts, tokens and estimated cost.
    :ivar skipped: items not tried because the output already had them.
    :ivar skipped_failed: of those, items whose earlier attempt had failed.
    :ivar not_run: items left for a later run (an interrupt, the drain, the spend cap).
    :ivar interrupted: None, ``"stopped"`` (first Ctrl-C) or ``"cancelled"`` (second).
    :ivar aborted: why the run stopped sending by itself (a wrong key, no balance), else None.
    :ivar capped: the spend cap stopped the run: calls that would pass it were not started.
    :ivar max_cost: the spend cap in USD, if any.
    :ivar spent_before: USD the output records as spent by earlier runs (counted against the cap).
    :ivar spent: USD the cap counted in all, earlier runs included (None without a cap).
    :ivar elapsed: wall-clock seconds.
    :ivar repaired: bytes of a half-written last line removed from the output.
    :ivar compacted: superseded lines removed from the output at the end.
    :ivar compaction_error: why the compaction failed (the output is still complete), else None.
    :ivar unreadable: lines of the output that could not be read and were skipped.
    :ivar off_peak_holds: peak windows an off-peak-only run held its calls through (None: not off-peak-only).
    """

    items: int
    tally: Tally
    skipped: int = 0
    skipped_failed: int = 0
    not_run: int = 0
    interrupted: Optional[str] = None
    aborted: Optional[str] = None
    capped: bool = False
    max_cost: Optional[float] = None
    spent_before: float = 0.0
    spent: Optional[float] = None
    elapsed: float = 0.0
    repaired: int = 0
    compacted: int = 0
    compaction_error: Optional[str] = None
    unreadable: int = 0
    off_peak_holds: Optional[int] = None

    @property
    def complete(self) -> bool:
        """True when every item of the input now has a successful line."""
        return self.interrupted is None and not self.not_run and not self.tally.failed and not self.skipped_failed

    @property
    def done(self) -> int:
        """Items that now have a successful line (this run's and earlier runs')."""
        return self.tally.ok + self.skipped - self.skipped_failed

    @property
    def failed(self) -> int:
        """Items whose standing line is a failure (this run's, and earlier ones not retried)."""
        return self.tally.failed + self.skipped_failed


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
        bar.set_postfix_str(_postfix(tally), refresh=False)
        bar.update(1)

    def hold(self, resume_at: Optional[_dt.datetime], tally: Tally) -> None:
        """An off-peak-only run holds its calls until ``resume_at`` (UTC), or starts them again (None).

        Called from a worker thread (the call that met the peak window): a notice, and
        the bar's line says until when.
        """
        if resume_at is None:
            self.info("off-peak: calls start again")
            text = _postfix(tally)
        else:
            wait = max(0.0, (resume_at - _dt.datetime.now(_dt.UTC)).total_seconds())
            when = f"{resume_at:%Y-%m-%d %H:%M} UTC"
            self.info(f"peak hours: no new call starts until {when} (in {_duration(wait)}); the calls running finish")
            text = f"{_postfix(tally)} waiting for off-peak until {when}"
        bar = self._bar
        if bar is not None:
            bar.set_postfix_str(text, refresh=True)

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


def _postfix(tally: Tally) -> str:
    share = tally.cache_hit_share
    hits = "-" if share is None else f"{share:.0%}"
    return (
        f"ok={tally.ok} failed={tally.failed} tokens={format_tokens(tally.total_tokens)} cache-hits={hits} "
        f"cost={_short_cost(tally)}"
    )


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
    """The lines printed at the end of a run: items (done, failed, left), tokens (cache-hit share), cost, time."""
    tally = summary.tally
    items = f"items: {tally.ok} ok, {tally.failed} failed, {summary.skipped} skipped"
    if summary.skipped_failed:
        items += f" ({summary.skipped_failed} of them failed before: --retry-failed tries them again)"
    if summary.not_run:
        items += f", {summary.not_run} not run"
    items += f" (of {summary.items} in the input)"
    totals = f"done: {summary.done}, failed: {summary.failed}, left: {summary.not_run}"
    share = tally.cache_hit_share
    tokens = (
        f"tokens: {tally.prompt_tokens:,} in ({'-' if share is None else f'{share:.0%}'} cache hits), "
        f"{tally.completion_tokens:,} out"
    )
    cost = f"estimated cost: {format_cost(tally)}"
    if summary.max_cost is not None:
        cost += f" (spend cap {_dollars(summary.max_cost)}"
        if summary.spent is not None:
            cost += f", counted against it {_dollars(summary.spent)}"
        if summary.spent_before:
            cost += f", of which earlier runs on this output spent {_dollars(summary.spent_before)}"
        cost += ")"
    lines: List[str] = [items, totals, tokens, cost, f"wall time: {_duration(summary.elapsed)}"]
    if summary.capped:
        lines.append(
            f"stopped by the spend cap: {summary.not_run} items not started (a rerun with a higher cap runs them)"
        )
    if summary.off_peak_holds:
        windows = "a peak window" if summary.off_peak_holds == 1 else f"{summary.off_peak_holds} peak windows"
        lines.append(f"off-peak only: calls held through {windows}")
    if summary.compacted:
        lines.append(f"output compacted: {summary.compacted} superseded lines removed")
    return "\n".join(lines)


def summary_dict(summary: BatchSummary) -> Dict[str, Any]:
    """The summary as plain JSON-ready values (``deepseek-pool run --json-summary``)."""
    tally = summary.tally
    return {
        "items": summary.items,
        "done": summary.done,
        "failed": summary.failed,
        "left": summary.not_run,
        "answered_this_run": tally.ok,
        "failed_this_run": tally.failed,
        "skipped": summary.skipped,
        "prompt_tokens": tally.prompt_tokens,
        "completion_tokens": tally.completion_tokens,
        "cache_hit_tokens": tally.cache_hit_tokens,
        "cache_hit_share": tally.cache_hit_share,
        "cost_usd": tally.cost,
        "unpriced_calls": tally.unpriced,
        "max_cost_usd": summary.max_cost,
        "spent_before_usd": summary.spent_before,
        "spent_usd": summary.spent,
        "capped": summary.capped,
        "interrupted": summary.interrupted,
        "aborted": summary.aborted,
        "wall_seconds": round(summary.elapsed, 3),
        "repaired_bytes": summary.repaired,
        "compacted": summary.compacted,
        "compaction_error": summary.compaction_error,
        "unreadable_output_lines": summary.unreadable,
        "off_peak_holds": summary.off_peak_holds,
        "complete": summary.complete,
    }
