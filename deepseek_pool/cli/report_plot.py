"""``deepseek-pool report --plot FILE.png``: a batch over time, in four panels.

Throughput (answers per second), calls in flight, cumulative estimated cost, and the
latency distribution of the answers, from the calls a :class:`~.report.BatchReport` read
(each item's standing line; lines without call times are left out). It is given those
calls rather than the report, so the report module need not be imported here. The series are
plain lists (:func:`series`) so they can be checked without drawing. matplotlib is an
optional extra (``pip install 'deepseek-pool[plot]'``), imported only here, and only
its object API is used: no pyplot, so no process-wide figure state or GUI backend.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

from .console import EXIT_FAILED, CommandFailed

__all__ = ["BUCKETS", "Call", "MissingExtra", "plot_report", "require_matplotlib", "series"]

#: One timed call: (started_at, ended_at, answered, estimated cost in USD).
Call = Tuple[float, float, bool, float]

#: Time buckets of the throughput panel over the batch's span.
BUCKETS = 60


class MissingExtra(CommandFailed):
    """matplotlib is not installed: the message names the extra that brings it."""


def require_matplotlib() -> None:
    """Fail with a message naming the extra, before any work, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtra(
            "--plot needs matplotlib, which is not installed: pip install 'deepseek-pool[plot]'"
        ) from None


def series(calls: Sequence[Call]) -> Dict[str, List[Tuple[float, float]]]:
    """The plotted series as ``(seconds since the first start, value)`` points.

    ``throughput``: answers per second in each of :data:`BUCKETS` buckets (at their
    starts); ``in_flight``: calls running just after each start or end; ``cost``: the
    estimated cost so far at each answer's end; ``latency``: ``(seconds, 1)`` per answer.
    """
    calls = sorted(calls)
    if not calls:
        return {"throughput": [], "in_flight": [], "cost": [], "latency": []}
    origin = calls[0][0]
    span = max(end for _, end, _, _ in calls) - origin
    width = span / BUCKETS if span > 0 else 1.0
    counts = [0] * BUCKETS
    for _, end, answered, _ in calls:
        if answered:
            counts[min(BUCKETS - 1, int((end - origin) / width))] += 1
    throughput = [(index * width, count / width) for index, count in enumerate(counts)]
    events = sorted([(start - origin, 1) for start, _, _, _ in calls] + [(end - origin, -1) for _, end, _, _ in calls])
    running = 0
    in_flight = []
    for at, step in events:
        running += step
        in_flight.append((at, float(running)))
    total = 0.0
    cost = []
    for _, end, answered, spent in sorted(calls, key=lambda call: call[1]):
        if answered:
            total += spent
            cost.append((end - origin, total))
    latency = [(end - start, 1.0) for start, end, answered, _ in calls if answered]
    return {"throughput": throughput, "in_flight": in_flight, "cost": cost, "latency": latency}


def plot_report(calls: Sequence[Call], path: str, *, title: str, marks: Mapping[str, float]) -> None:
    """Draw the four panels to ``path`` (PNG, or any format matplotlib knows by the suffix).

    :param marks: latencies to mark on the distribution, by name (``{"p50": 0.8, ...}``).
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    data = series(calls)
    if not data["in_flight"]:
        raise CommandFailed(
            f"{title}: no call times recorded (lines written before deepseek-pool 0.2.0): nothing to plot",
            EXIT_FAILED,
        )
    figure = Figure(figsize=(11, 7), layout="constrained")
    figure.suptitle(title)
    (top_left, top_right), (bottom_left, bottom_right) = figure.subplots(2, 2)
    starts, rates = zip(*data["throughput"])
    width = starts[1] - starts[0]
    top_left.stairs(rates, [*starts, starts[-1] + width])
    top_left.set(title="throughput", xlabel="seconds", ylabel="answers / s")
    xs, ys = zip(*data["in_flight"])
    top_right.step(xs, ys, where="post")
    top_right.set(title="calls in flight", xlabel="seconds", ylabel="calls")
    if data["cost"]:
        xs, ys = zip(*data["cost"])
        bottom_left.step(xs, ys, where="post")
    bottom_left.set(title="estimated cost so far", xlabel="seconds", ylabel="USD")
    latencies = sorted(seconds for seconds, _ in data["latency"])
    if latencies:
        bottom_right.hist(latencies, bins=min(50, max(5, len(latencies) // 4)))
        for name, value in marks.items():
            if name != "max":
                bottom_right.axvline(value, linestyle="--", linewidth=1, color="black")
                bottom_right.annotate(name, (value, 1), xycoords=("data", "axes fraction"), va="top")
    bottom_right.set(title="latency of answers", xlabel="seconds", ylabel="answers")
    figure.savefig(path)
