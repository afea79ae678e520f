"""``deepseek-pool report OUT.jsonl``: what a batch did, from its output file alone.

The file may be finished or still being written: it is read with the batch layer's
bounded reader (:func:`~deepseek_pool.batch.jsonl.read_lines`), without the run's lock,
and a torn last line (a run writing it, or killed mid-line) is skipped with a note. Per
custom_id the line that stands is taken as a resume would (its success, else its last
line); the lines it superseded are counted.

What a line records (see :mod:`deepseek_pool.batch.result_lines`): its outcome, the
answer's usage and model, and since 0.2.0 a ``call`` field with the call's start and
end, attempts and 429s. Lines written before that lack ``call``; the parts of the report
that need it say "not recorded". Costs are estimated from usage, split by rate: a call
is off-peak when no peak instant lies between its start and its end (DeepSeek does not
say which of the two decides; :class:`~deepseek_pool.money.offpeak.PeakCalendar`, Chinese
holidays and make-up working days included), else peak; a call whose time is not
recorded is priced at the peak rate, an upper bound, and shown apart.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..batch.jsonl import LineError, loads, read_lines
from ..models import ModelPrice, price_of
from ..money.offpeak import PeakCalendar
from ..money.spend import cost_at
from .console import EXIT_OK, CommandFailed

__all__ = ["BatchReport", "format_report", "percentile", "read_report", "report_command"]

#: Percentiles of the latency the report gives.
PERCENTILES = (50, 90, 99)
#: Unreadable lines named in a note (the rest are counted).
_SHOWN = 5


def percentile(values: List[float], p: float) -> float:
    """The ``p``-th percentile of sorted ``values`` by the nearest-rank method (an observed value)."""
    rank = max(1, math.ceil(p / 100 * len(values)))
    return values[rank - 1]


@dataclass
class BatchReport:
    """What an output file says a batch did; :func:`format_report` renders it, :meth:`as_dict` for scripts."""

    path: str
    lines: int = 0
    items: int = 0
    answered: int = 0
    failed_by: Counter[str] = field(default_factory=Counter)
    superseded: int = 0
    unreadable: List[Tuple[int, str]] = field(default_factory=list)
    torn_last_line: bool = False
    #: items whose standing line has a ``call`` field (the rest were written before it existed)
    recorded: int = 0
    latencies: List[float] = field(default_factory=list)
    slowest: List[Tuple[float, str, str]] = field(default_factory=list)
    attempts: int = 0
    retried: int = 0
    most_attempts: int = 0
    rate_limited: int = 0
    rate_limited_items: int = 0
    first_start: Optional[float] = None
    last_end: Optional[float] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hit_tokens: int = 0
    usage_missing: int = 0
    cost_peak: float = 0.0
    cost_off_peak: float = 0.0
    #: answers priced without a recorded time: at the peak rate (an upper bound)
    cost_untimed: float = 0.0
    unpriced: int = 0
    billed_without_result: float = 0.0
    #: (started_at, ended_at, answered, estimated cost) of each timed call, for the plot
    calls: List[Tuple[float, float, bool, float]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.failed_by.values())

    @property
    def cache_hit_share(self) -> Optional[float]:
        return self.cache_hit_tokens / self.prompt_tokens if self.prompt_tokens else None

    @property
    def span(self) -> Optional[float]:
        if self.first_start is None or self.last_end is None:
            return None
        return self.last_end - self.first_start

    def latency(self) -> Optional[Dict[str, float]]:
        if not self.latencies:
            return None
        values = sorted(self.latencies)
        figures = {f"p{p}": round(percentile(values, p), 3) for p in PERCENTILES}
        figures["max"] = round(values[-1], 3)
        return figures

    def as_dict(self, top: int) -> Dict[str, Any]:
        """Plain JSON-ready values (``--json``); None where the lines do not record it."""
        recorded = self.recorded > 0
        span = self.span
        return {
            "file": self.path,
            "lines": self.lines,
            "items": self.items,
            "answered": self.answered,
            "failed": self.failed,
            "failed_by": dict(self.failed_by.most_common()),
            "superseded_lines": self.superseded,
            "unreadable_lines": [number for number, _ in self.unreadable],
            "torn_last_line": self.torn_last_line,
            "calls_recorded": self.recorded,
            "latency_seconds": self.latency(),
            "attempts": {"total": self.attempts, "retried_items": self.retried, "most": self.most_attempts}
            if recorded
            else None,
            "rate_limited": {"responses": self.rate_limited, "items": self.rate_limited_items} if recorded else None,
            "span": None
            if span is None
            else {
                "started_at": self.first_start,
                "ended_at": self.last_end,
                "seconds": round(span, 3),
                "answered_per_second": round(self.answered / span, 3) if span > 0 else None,
            },
            "tokens": {
                "prompt": self.prompt_tokens,
                "completion": self.completion_tokens,
                "cache_hit": self.cache_hit_tokens,
                "cache_hit_share": self.cache_hit_share,
                "answers_without_usage": self.usage_missing,
            },
            "cost_usd": {
                "total": self.cost_peak + self.cost_off_peak + self.cost_untimed,
                "peak": self.cost_peak,
                "off_peak": self.cost_off_peak,
                "time_not_recorded": self.cost_untimed,
                "unpriced_answers": self.unpriced,
                "billed_without_result": self.billed_without_result,
            },
            "slowest": [
                {"custom_id": custom_id, "seconds": round(seconds, 3), "outcome": outcome}
                for seconds, custom_id, outcome in self.slowest[:top]
            ],
        }


def read_report(path: str, prices: Optional[Mapping[str, ModelPrice]] = None) -> BatchReport:
    """Read an output file (finished or being written) into a :class:`BatchReport`.

    :raises OSError: the file cannot be read.
    """
    report = BatchReport(path=path)
    standing: Dict[str, Dict[str, Any]] = {}
    with open(path, "rb") as file:
        for number, raw in read_lines(file):
            report.lines = number
            if raw is None:
                report.unreadable.append((number, "too long"))
                continue
            if not raw.strip():
                continue
            try:
                line = loads(raw)
            except LineError as err:
                if not raw.endswith(b"\n"):
                    report.torn_last_line = True
                else:
                    report.unreadable.append((number, err.code))
                continue
            if not isinstance(line, dict):
                report.unreadable.append((number, "not a JSON object"))
                continue
            spend = line.get("spend")
            if line.get("custom_id") is None and isinstance(spend, dict):
                report.billed_without_result += _number(spend.get("cost_usd")) or 0.0
                continue
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str):
                report.unreadable.append((number, "no custom_id"))
                continue
            before = standing.get(custom_id)
            if before is not None:
                report.superseded += 1
                if _is_success(before):
                    continue  # a success stands; later lines of its item are superseded
            standing[custom_id] = line
    for custom_id, line in standing.items():
        _count(report, custom_id, line, prices)
    report.items = len(standing)
    report.slowest.sort(key=lambda entry: (-entry[0], entry[1]))
    return report


def _number(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _is_success(line: Mapping[str, Any]) -> bool:
    response = line.get("response")
    return line.get("error") is None and isinstance(response, dict) and response.get("status_code") == 200


def _outcome(line: Mapping[str, Any]) -> str:
    if _is_success(line):
        return "answered"
    error = line.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    name = code if isinstance(code, str) and code else "error"
    response = line.get("response")
    status = response.get("status_code") if isinstance(response, dict) else None
    return f"{name} ({status})" if isinstance(status, int) else name


def _count(
    report: BatchReport, custom_id: str, line: Mapping[str, Any], prices: Optional[Mapping[str, ModelPrice]]
) -> None:
    outcome = _outcome(line)
    if outcome == "answered":
        report.answered += 1
    else:
        report.failed_by[outcome] += 1
    call = line.get("call")
    started: Optional[float] = None
    ended: Optional[float] = None
    if isinstance(call, dict):
        report.recorded += 1
        attempts = int(_number(call.get("attempts")) or 0)
        limited = int(_number(call.get("rate_limited")) or 0)
        report.attempts += attempts
        report.retried += attempts > 1
        report.most_attempts = max(report.most_attempts, attempts)
        report.rate_limited += limited
        report.rate_limited_items += limited > 0
        started, ended = _number(call.get("started_at")), _number(call.get("ended_at"))
        if started is not None and ended is not None:
            seconds = max(0.0, ended - started)
            report.slowest.append((seconds, custom_id, outcome))
            if outcome == "answered":
                report.latencies.append(seconds)
            report.first_start = started if report.first_start is None else min(report.first_start, started)
            report.last_end = ended if report.last_end is None else max(report.last_end, ended)
    timed = (started, ended) if started is not None and ended is not None else None
    cost = _count_usage(report, line, timed, prices) if outcome == "answered" else 0.0
    if started is not None and ended is not None:
        report.calls.append((started, ended, outcome == "answered", cost))


def _count_usage(
    report: BatchReport,
    line: Mapping[str, Any],
    timed: Optional[Tuple[float, float]],
    prices: Optional[Mapping[str, ModelPrice]],
) -> float:
    """Count an answer's tokens and estimated cost; return the cost (0 when unknown)."""
    body = line["response"].get("body")
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        report.usage_missing += 1
        return 0.0
    prompt = int(_number(usage.get("prompt_tokens")) or 0)
    completion = int(_number(usage.get("completion_tokens")) or 0)
    hit = int(_number(usage.get("prompt_cache_hit_tokens")) or 0)
    miss = _number(usage.get("prompt_cache_miss_tokens"))
    report.prompt_tokens += prompt
    report.completion_tokens += completion
    report.cache_hit_tokens += hit
    model = body.get("model")
    price = price_of(model, prices) if isinstance(model, str) else None
    if price is None:
        report.unpriced += 1
        return 0.0
    peak = True  # a call whose time is not recorded: at its dearest
    if timed is not None:
        start, end = (_dt.datetime.fromtimestamp(moment, _dt.UTC) for moment in timed)
        peak = _CALENDAR.peak_between(start, end)
    cost = cost_at(
        price,
        prompt_cache_hit_tokens=hit,
        prompt_cache_miss_tokens=int(miss) if miss is not None else max(0, prompt - hit),
        completion_tokens=completion,
        peak=peak,
    )
    if timed is None:
        report.cost_untimed += cost
    elif peak:
        report.cost_peak += cost
    else:
        report.cost_off_peak += cost
    return cost


_CALENDAR = PeakCalendar()


# -- for people ---------------------------------------------------------------------------------


def _dollars(amount: float) -> str:
    return f"${amount:.6f}" if amount < 0.01 else f"${amount:,.4f}"


def _seconds(value: float) -> str:
    return f"{value:.3f}s" if value < 10 else f"{value:.1f}s"


def format_report(report: BatchReport, top: int = 5) -> str:
    """The report for people: one topic per line, "not recorded" where the lines lack it."""
    out: List[str] = [f"{report.path}: {report.items} items in {report.lines} lines"]
    items = f"items: {report.answered} answered, {report.failed} failed"
    if report.failed_by:
        items += " (" + ", ".join(f"{name}: {count}" for name, count in report.failed_by.most_common()) + ")"
    out.append(items)
    if report.superseded:
        out.append(f"superseded lines: {report.superseded} (earlier tries of items that ran again)")
    missing = report.items - report.recorded
    partly = f" (from {report.recorded} of {report.items} items; older lines do not record it)" if missing else ""
    latency = report.latency()
    if latency is None:
        out.append("latency of answers: not recorded" if not report.recorded else "latency of answers: none answered")
    else:
        figures = ", ".join(f"{name} {_seconds(value)}" for name, value in latency.items())
        out.append(f"latency of answers: {figures}{partly}")
    if report.recorded:
        out.append(
            f"attempts: {report.attempts} for {report.recorded} items, {report.retried} items retried "
            f"(most {report.most_attempts}); 429s: {report.rate_limited} responses, "
            f"{report.rate_limited_items} items{partly}"
        )
    else:
        out.append("attempts and 429s: not recorded (lines written before deepseek-pool 0.2.0)")
    span = report.span
    if span is not None:
        start = _dt.datetime.fromtimestamp(report.first_start or 0, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        rate = f", {report.answered / span:.2f} answers/s" if span > 0 else ""
        out.append(f"span: {_seconds(span)} from {start} UTC{rate}")
    share = report.cache_hit_share
    out.append(
        f"tokens: {report.prompt_tokens:,} in ({'-' if share is None else f'{share:.1%}'} cache hits), "
        f"{report.completion_tokens:,} out"
        + (f"; {report.usage_missing} answers without usage" if report.usage_missing else "")
    )
    total = report.cost_peak + report.cost_off_peak + report.cost_untimed
    cost = f"estimated cost: {_dollars(total)}"
    if report.cost_untimed and not (report.cost_peak or report.cost_off_peak):
        cost += " at most (peak/off-peak split: not recorded; priced at the peak rate)"
    else:
        cost += f" (peak {_dollars(report.cost_peak)}, off-peak {_dollars(report.cost_off_peak)}"
        if report.cost_untimed:
            cost += f", time not recorded {_dollars(report.cost_untimed)} at the peak rate"
        cost += ")"
    if report.unpriced:
        cost += f"; {report.unpriced} answers of models without a known price (--price gives one)"
    out.append(cost)
    if report.billed_without_result:
        out.append(f"billed without a result (spend records): {_dollars(report.billed_without_result)}")
    if report.slowest and top:
        shown = ", ".join(f"{custom_id} {_seconds(seconds)}" for seconds, custom_id, _ in report.slowest[:top])
        out.append(f"slowest: {shown}")
    elif not report.recorded:
        out.append("slowest: not recorded")
    out.extend(_notes(report))
    return "\n".join(out)


def _notes(report: BatchReport) -> List[str]:
    notes = []
    if report.torn_last_line:
        notes.append("note: the last line is incomplete (a run is writing it, or was stopped mid-line): skipped")
    if report.unreadable:
        shown = "; ".join(f"line {number}: {why}" for number, why in report.unreadable[:_SHOWN])
        more = len(report.unreadable) - _SHOWN
        notes.append(
            f"note: skipped {len(report.unreadable)} unreadable lines ({shown}"
            + (f"; and {more} more" if more > 0 else "")
            + ")"
        )
    return notes


def report_command(args: argparse.Namespace, command_line: str) -> int:
    if args.plot:
        from .report_plot import require_matplotlib

        require_matplotlib()  # before reading: a missing extra is said at once
    try:
        report = read_report(args.output, prices=dict(args.price) or None)
    except OSError as err:
        raise CommandFailed(f"cannot read {args.output}: {err.strerror or err}") from None
    if args.json:
        data = report.as_dict(args.top)
        data["notes"] = _notes(report)
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report, args.top))
    if args.plot:
        from .report_plot import plot_report

        sys.stdout.flush()
        title = f"{report.path}: {report.answered} answered, {report.failed} failed"
        plot_report(report.calls, args.plot, title=title, marks=report.latency() or {})
    return EXIT_OK
