"""The resumable JSONL batch runner behind ``deepseek-pool run``: requests in, results out, nothing lost.

Input: one request per line -- an OpenAI batch line (``{"custom_id", "method", "url",
"body"}``), a dict of chat params (``messages`` or ``prompt``, optional ``custom_id``), a
JSON string (one user prompt) or a JSON list of messages. A line without a ``custom_id``
gets its 1-based line number, as a string; blank lines are ignored. Duplicate custom_ids
stop the run before anything is sent (:class:`BatchFileError`).

Output: one line per item in OpenAI's batch output shape, in completion order::

    {"id": "batch_req_...", "custom_id": "7",
     "response": {"status_code": 200, "request_id": "...", "body": <the server's JSON>},
     "error": null}

A failed item has ``"error": {"code": <exception class name>, "message": ...}`` and
``response`` holds the error status, request id and body when the server answered (else
null). A line that is not JSON, too long, nested too deep or not a request becomes such
an error line too (code ``JSONDecodeError``, ``LineTooLong``, ``JSONTooDeep``,
``ValueError`` ...; custom_id = its own when it has a usable one, else its line number),
and the rest still run. Every line written is valid UTF-8 JSON that a resume reads back
(:mod:`deepseek_pool.batch.jsonl`). Batch ``url`` values are routed by
:data:`deepseek_pool.pool.items.BATCH_URLS` (chat, beta chat, FIM).

Locking: the output is locked (``flock``) for the whole run, compaction included; the
lock is re-checked to be on the file at the path, so a run that opened the file just
before another run replaced it starts over on the new one. Other programs must not
append while a run owns the file: lines a resume cannot read are skipped with a warning
naming their line numbers, and a compaction drops them.

Durability: each line is written whole with one ``write`` and flushed as it completes,
so a crash (even SIGKILL) loses at most the calls in flight -- flushed lines are in the
operating system's hands. ``fsync`` is called at most every :data:`FSYNC_INTERVAL`
seconds, at the end and on interrupt: an fsync per line would cost more than many
calls' CPU, and only a power cut or kernel crash can lose unsynced lines.

Resume: a rerun with the same output file truncates a half-written last line, skips
items that already have a successful line, and tries earlier failures again unless
``retry_failed=False``. A run that was not interrupted then compacts the file
atomically (temporary file + ``os.replace``) when it holds superseded lines, so it
ends with exactly one line per custom_id: its success, else its latest failure. A
compaction that fails (a full disk) is a warning naming the temporary file; the output
stays complete and valid, and the next run finishes the job. A reader of a file from an
interrupted run should take, per custom_id, the successful line if there is one, else
the last line.

Drain and spend cap: after the first Ctrl-C (:class:`Interrupter`) no request of any
kind is sent; calls refused by the drain are not written, so the rerun sends them. With
a pool's ``max_cost``, calls the cap refuses are not started and not written; the run
stops feeding new requests and its summary says ``capped``. The cap belongs to the
output file: each line records ``cost_usd`` (what the cap counted for its item over
every run) and a call billed without a result leaves a spend record
(:mod:`~deepseek_pool.batch.results_file`), so a rerun counts what the earlier runs
spent, and one whose cap is already spent stops before sending, naming both amounts.

Off-peak: with an off-peak-only pool (``DeepSeekPool(off_peak_only=...)``) the progress
says when a peak window holds the calls and until when, and the summary counts the
windows (``off_peak_holds``); the running cost prices each answer at the rate the peak
calendar gives its start and end (:mod:`deepseek_pool.money.offpeak`).

Example::

    with DeepSeekPool(max_workers=16) as pool:
        summary = run_batch("prompts.jsonl", "results.jsonl", pool)
    print(summary.tally.ok, "answered")
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as _dt
import errno
import os
import threading
import time
from functools import partial
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from ..errors import AuthenticationError, ConfigurationError, InsufficientBalanceError, SpendCapReached
from ..money.offpeak import PeakCalendar, SystemClock
from ..money.spend import SpendCap
from ..pool.pool import DeepSeekPool, Result
from ..types import Usage
from ..wire.calls import RetryCancelled
from .input_file import Feed, Malformed, check_input, parse_line, request_of
from .jsonl import MAX_LINE_BYTES
from .paths import BatchFileError, PathLike, check_regular
from .progress import BatchProgress, BatchSummary, Tally
from .result_lines import NOT_CALLED, LineMaker, call_record
from .results_file import FSYNC_INTERVAL, ResultsFile

__all__ = ["FSYNC_INTERVAL", "BatchFileError", "BatchSummary", "Interrupter", "run_batch", "run_lines"]

#: Errors that every other item would meet too: the run stops sending at the first one.
FATAL_ERRORS = (AuthenticationError, InsufficientBalanceError)


class Interrupter:
    """Two-stage Ctrl-C for :func:`run_batch`; call it from a SIGINT handler.

    The first call sets :attr:`stop`, a drain: no request of any kind is sent any more
    (retries included), answers already on their way are written, and calls that
    would need another attempt are left for the rerun. The second raises ``KeyboardInterrupt``, which
    cancels the calls in flight -- but never while a result line is being written: it
    is then raised as soon as the line is complete.
    """

    __slots__ = ("_pending", "_writing", "presses", "stop")

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.presses = 0
        self._writing = False
        self._pending = False

    def __call__(self, *_signal: Any) -> None:
        self.presses += 1
        if self.presses == 1:
            self.stop.set()
        elif self._writing:
            self._pending = True
        else:
            raise KeyboardInterrupt

    def _begin_write(self) -> None:
        self._writing = True

    def _end_write(self) -> None:
        self._writing = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt


def run_lines(
    lines: Iterable[Union[str, bytes]],
    pool: DeepSeekPool,
    *,
    first_line: int = 1,
    model: Optional[str] = None,
) -> List[str]:
    """Run a chunk of batch input lines through ``pool``; return their batch-output lines, in input order.

    The chunk runner behind :mod:`deepseek_pool.contrib.celery`: the lines are those of a
    batch input file and the answers are the lines :func:`run_batch` would write (see the
    module docstring), one per non-blank input line, each without its newline. A line
    without a ``custom_id`` gets its line number, counted from ``first_line``. It never
    raises for one item: a malformed line, a failed or cancelled call, each becomes an
    error line. Nothing is written to disk and nothing is resumed: the caller collects
    the lines (custom_ids are not checked for duplicates).

    :param first_line: the number of the chunk's first line in the whole input.
    :param model: a model for every request, replacing the one a line names.
    """
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError(f"model must be a non-empty model id, got {model!r}")
    maker = LineMaker()
    answers: List[Optional[bytes]] = []
    requests: List[Dict[str, Any]] = []
    slots: List[Tuple[int, str]] = []  # (answer slot, custom_id) of each request sent
    for number, line in enumerate(lines, first_line):
        raw = (line.encode("utf-8", "surrogatepass") if isinstance(line, str) else line).rstrip(b"\r\n")
        scanned = parse_line(number, raw if len(raw) <= MAX_LINE_BYTES else None)
        if scanned is None:
            continue
        _number, custom_id, routed, bad = scanned
        if routed is None:
            assert bad is not None
            answers.append(maker.failure(custom_id, bad[0], bad[1], call=NOT_CALLED))
            continue
        slots.append((len(answers), custom_id))
        answers.append(None)
        requests.append(request_of(custom_id, routed, model))
    for (slot, custom_id), result in zip(slots, pool.map(requests)):
        call = call_record(result)
        if result.error is None and result.completion is not None:
            answers[slot] = maker.success(custom_id, result.completion, result.cost, call)[0]
        else:
            answers[slot] = maker.error(custom_id, result.error or RuntimeError("no answer"), result.cost, call)
    return [answer.decode("utf-8").rstrip("\n") for answer in answers if answer is not None]


def run_batch(
    input_path: PathLike,
    output_path: PathLike,
    pool: DeepSeekPool,
    *,
    retry_failed: bool = True,
    model: Optional[str] = None,
    interrupter: Optional[Interrupter] = None,
    progress: Optional[BatchProgress] = None,
) -> BatchSummary:
    """Run every request of ``input_path`` not yet answered in ``output_path`` through ``pool``.

    See the module docstring for the file formats, durability and resume rules. Nothing
    is sent when the input has duplicate custom_ids, when a path cannot be used, or when
    the pool has a spend cap and a model of the input has no known price.

    :param pool: the pool to run on (its workers, limits, spend cap and client apply); not closed here.
    :param retry_failed: try again items whose last line in the output is a failure.
    :param model: a model for every request, replacing the one a line names.
    :param interrupter: the Ctrl-C handling (see :class:`Interrupter`); the CLI installs it.
    :param progress: where the progress bar and notices go (default: nowhere).
    :returns: the :class:`BatchSummary`; after a second Ctrl-C (``KeyboardInterrupt``) the
        run ends early and its summary says ``interrupted="cancelled"``.
    :raises BatchFileError: duplicate custom_ids, input and output being one file, an
        input or output that is not a regular file, or an output another run is writing.
    :raises ConfigurationError: a spend cap with a model whose price is unknown.
    :raises ValueError: an empty ``model``.
    :raises OSError: the input cannot be read or the output cannot be written.
    """
    started = time.monotonic()
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError(f"model must be a non-empty model id, got {model!r}")
    check_regular(input_path, "input (it is read twice: save a pipe to a file first)")
    if not os.path.exists(input_path):
        raise FileNotFoundError(errno.ENOENT, "no such file", os.fspath(input_path))
    check_regular(output_path, "output")
    if os.path.exists(output_path) and os.path.samefile(input_path, output_path):
        raise BatchFileError("the output file must not be the input file")
    found = check_input(input_path)
    spend = pool.spend
    if spend is not None:
        spend.check_models({model} if model is not None else found.models | {pool.client.model})
    ids = found.lines
    interrupter = interrupter or Interrupter()
    progress = progress or BatchProgress()
    tally = Tally(prices=spend.prices if spend is not None else None)
    summary = BatchSummary(items=len(ids), tally=tally, max_cost=spend.max_cost if spend is not None else None)
    out = ResultsFile(output_path)
    try:
        summary.repaired = out.repaired
        if out.repaired:
            progress.warn(
                f"repaired {out.path}: removed a half-written last line ({out.repaired} bytes) left by an "
                "interrupted run; that item runs again"
            )
        summary.unreadable = out.unreadable_count
        if out.unreadable:
            shown = "; ".join(f"line {number}: {why}" for number, why in out.unreadable)
            more = out.unreadable_count - len(out.unreadable)
            progress.warn(
                f"{out.path}: skipped {out.unreadable_count} lines that are not readable result lines ({shown}"
                + (f"; and {more} more" if more else "")
                + "); their items, if any, run again"
            )
        if spend is not None:
            summary.spent_before = _count_earlier_spend(out, spend)
        ok_ids = out.ok_ids
        seen = out.keep

        def should_run(custom_id: str) -> bool:
            return custom_id not in ok_ids and (retry_failed or custom_id not in seen)

        to_run = 0
        for custom_id in ids:
            if should_run(custom_id):
                to_run += 1
            elif custom_id not in ok_ids:
                summary.skipped_failed += 1
        summary.skipped = len(ids) - to_run
        if summary.skipped:
            text = f"resuming {out.path}: {summary.skipped - summary.skipped_failed} items already answered"
            if summary.skipped_failed:
                text += f", {summary.skipped_failed} failed ones skipped (--no-retry-failed)"
            progress.info(text + f"; {to_run} to run")
        progress.start(to_run)
        feed = Feed(input_path, should_run, model)
        gate = pool.off_peak
        listener = None
        if gate is not None:  # an off-peak-only pool: its holds through peak windows show in the progress
            holds = gate.holds
            listener = partial(progress.hold, tally=tally)
            gate.add_listener(listener)
        try:
            interrupted = _run(pool, out, feed, found.malformed, should_run, model, interrupter, progress, summary)
        finally:
            if gate is not None and listener is not None:
                gate.remove_listener(listener)
                summary.off_peak_holds = gate.holds - holds
        summary.not_run = to_run - tally.ok - tally.failed
        if spend is not None:
            summary.spent = spend.spent
        if interrupted == "stopped" and (summary.aborted is not None or not summary.not_run):
            interrupted = None  # stopped by a fatal error, or Ctrl-C after the last request: not an interrupt
        summary.interrupted = interrupted
        if summary.interrupted is None:
            out.sync()
            try:
                summary.compacted = out.compact()
            except OSError as err:
                summary.compaction_error = f"writing {out.temporary} failed: {err.strerror or err}"
                progress.warn(
                    f"could not compact {out.path}: {summary.compaction_error}. The output is complete and valid "
                    "(it still holds superseded lines: per custom_id its success stands, else its last line); "
                    "a rerun with nothing left to do finishes the compaction"
                )
    finally:
        progress.close()
        out.close()
        summary.elapsed = time.monotonic() - started
    return summary


def _run(
    pool: DeepSeekPool,
    out: ResultsFile,
    feed: Feed,
    malformed: List[Malformed],
    should_run: Any,
    model: Optional[str],
    interrupter: Interrupter,
    progress: BatchProgress,
    summary: BatchSummary,
) -> Optional[str]:
    """Write error lines for malformed input, then run the rest; return how it was interrupted."""
    tally = summary.tally
    lines = LineMaker()
    begin, end = interrupter._begin_write, interrupter._end_write
    default_model = model or pool.client.model
    gate = pool.off_peak
    calendar = gate.calendar if gate is not None else pool.spend.calendar if pool.spend is not None else PeakCalendar()
    now = gate.clock.now if gate is not None else SystemClock().now
    requests = iter(feed)
    results = pool.as_completed(requests, stop=interrupter.stop)
    try:
        for _number, custom_id, code, message in malformed:
            if interrupter.stop.is_set():
                return "stopped"
            if should_run(custom_id):
                begin()
                try:
                    cost = out.costs.get(custom_id)
                    out.append(
                        custom_id, False, lines.failure(custom_id, code, message, cost=cost, call=NOT_CALLED), cost
                    )
                finally:
                    end()
                tally.add_failed()
                progress.update(tally)
        for result in results:
            error = result.error
            custom_id = result.custom_id or str(result.index + 1)
            completion = result.completion
            cost = None if result.cost is None else out.costs.get(custom_id, 0.0) + result.cost
            if error is None and completion is not None:
                data, ok = lines.success(custom_id, completion, cost, call_record(result))
            elif isinstance(error, SpendCapReached) or _is_cancellation(error):
                if isinstance(error, SpendCapReached):
                    summary.capped = True
                    feed.stopped = True  # not started (or not retried): left for a rerun, nothing more is fed
                # Never answered: no result line, so a rerun sends it; what its attempts were billed is kept.
                if result.cost:
                    begin()
                    try:
                        out.append(None, False, lines.spend(custom_id, result.cost, type(error).__name__), result.cost)
                    finally:
                        end()
                continue
            else:
                assert error is not None
                data = lines.error(custom_id, error, cost, call_record(result))
                ok = False
                if summary.aborted is None and isinstance(error, FATAL_ERRORS):
                    summary.aborted = f"{error}; no new requests were sent"
                    interrupter.stop.set()
            begin()
            try:
                out.append(custom_id, ok, data, cost)
            finally:
                end()
            if ok:
                ended = now()  # priced off-peak only if no peak instant lay between its start and end
                peak = calendar.peak_between(ended - _dt.timedelta(seconds=result.elapsed), ended)
                tally.add_ok(completion, _requested_model(result, default_model), peak=peak)
            else:
                tally.add_failed()
            progress.update(tally)
    except KeyboardInterrupt:
        return "cancelled"
    finally:
        # Closing the iteration cancels what it queued and aborts what it runs; this is
        # needed when the interrupt hit this loop rather than the pool's generator.
        close = getattr(results, "close", None)
        if close is not None:
            close()
        close = getattr(requests, "close", None)
        if close is not None:
            close()
    return "stopped" if interrupter.stop.is_set() else None


def _count_earlier_spend(out: ResultsFile, spend: SpendCap) -> float:
    """Count what earlier runs on ``out`` spent into the pool's cap; refuse to start when none is left.

    The output is the record: the ``cost_usd`` of its lines and its spend records, and
    answers written without one priced from their usage at the dearest hour.
    """
    before = out.spent
    for model, usage in out.unpriced.values():
        counted = Usage.from_dict(usage) if isinstance(usage, dict) else None
        if counted is not None and isinstance(model, str):
            with contextlib.suppress(ConfigurationError):  # a model priced nowhere: its answer counts $0
                before += spend.peak_cost(model, counted)
    try:
        spend.count_earlier(before)
    except SpendCapReached:
        raise ConfigurationError(
            f"{out.path} records ${before:.6f} spent by earlier runs, at or above the spend cap "
            f"${spend.max_cost:g}: nothing was sent. The cap covers every run on one output; to run the items "
            f"left, raise it above ${before:.6f} (deepseek-pool run --max-cost, DeepSeekPool(max_cost=...))"
        ) from None
    return before


def _requested_model(result: Result, default: str) -> str:
    request = result.request
    if isinstance(request, dict) and isinstance(request.get("body"), dict):
        request = request["body"]
    model = request.get("model") if isinstance(request, dict) else None
    return model if isinstance(model, str) else default


def _is_cancellation(error: Optional[BaseException]) -> bool:
    return isinstance(error, (cf.CancelledError, RetryCancelled))
