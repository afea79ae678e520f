"""``deepseek-pool run``: a JSONL batch through a pool, with Ctrl-C and SIGTERM handled, a summary and exit status.

The one command that decides process-wide state (the SIGINT and SIGTERM handlers, while
it runs, given back on return): it is the application. SIGTERM is how Docker, Kubernetes
and systemd stop a process, so it drains exactly like the first Ctrl-C; a second signal
of either kind cancels. The temporary copy of a piped input is removed on every exit
path but SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Optional

from ..batch.progress import BatchProgress, format_summary, summary_dict
from ..batch.runner import BatchFileError, BatchSummary, Interrupter, run_batch
from ..budget.limiter import Limiter
from ..errors import ConfigurationError
from ..money.offpeak import OffPeakOnly
from ..pool.pool import DeepSeekPool
from ..process import tune_process
from .console import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SPEND_CAP,
    EXIT_TERMINATED,
    PROG,
    CommandFailed,
    is_tty,
)
from .credentials import client_from_args

#: Seconds a cancelled run waits for its worker threads before exiting without them.
CANCEL_EXIT_GRACE = 2.0
#: The signals that stop a run: the first drains, a second of either kind cancels.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SIGNAL_NAMES: Dict[int, str] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


def _raw_stderr(text: str) -> None:
    """Write straight to fd 2: safe from a signal handler, unlike the buffered sys.stderr."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.write(sys.stderr.fileno(), text.encode("utf-8", "replace"))


def _check_run_paths(args: argparse.Namespace) -> None:
    """Refuse, before anything is sent, paths the run could not use."""
    if args.input != "-":
        try:
            mode = os.stat(args.input).st_mode
        except FileNotFoundError:
            raise CommandFailed(f"cannot read {args.input}: no such file") from None
        except OSError as err:
            raise CommandFailed(f"cannot read {args.input}: {err.strerror or err}") from None
        if stat.S_ISDIR(mode):
            raise CommandFailed(f"cannot read {args.input}: it is a directory")
        if stat.S_ISREG(mode) and not os.access(args.input, os.R_OK):
            raise CommandFailed(f"cannot read {args.input}: permission denied")
    output = args.output
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise CommandFailed(f"cannot write {output}: the directory {directory} does not exist")
    try:
        mode = os.stat(output).st_mode
    except FileNotFoundError:
        if not os.access(directory, os.W_OK):
            why = f"permission denied (the directory {directory} is not writable)"
            raise CommandFailed(f"cannot use {output}: {why}") from None
    else:
        if stat.S_ISDIR(mode):
            raise CommandFailed(f"cannot write {output}: it is a directory")
        if not stat.S_ISREG(mode):
            why = "it is not a regular file (a device or a pipe); give a file path"
            raise CommandFailed(f"cannot write {output}: {why}")
        if not os.access(output, os.R_OK | os.W_OK):
            raise CommandFailed(f"cannot use {output}: permission denied (it is read to resume and appended to)")
    if args.json_summary:
        where = os.path.dirname(os.path.abspath(args.json_summary))
        if os.path.isdir(args.json_summary) or not os.path.isdir(where):
            raise CommandFailed(f"cannot write the summary to {args.json_summary}: no such directory or it is one")


class StopSignals:
    """SIGINT and SIGTERM for one run: the first drains (:class:`Interrupter`), a second cancels.

    While a piped input is being saved nothing has been sent, so the first signal stops
    the run at once (``KeyboardInterrupt``). Installed only from the main thread, where
    Python runs handlers; :meth:`restore` gives the previous handlers back.
    """

    def __init__(self, interrupter: Interrupter) -> None:
        self.interrupter = interrupter
        #: the signal that stopped the run (None: none came)
        self.first: Optional[int] = None
        #: saving a piped input: nothing is sent yet
        self.copying = False
        self._previous: Dict[int, Any] = {}

    @property
    def name(self) -> str:
        return _SIGNAL_NAMES.get(self.first or signal.SIGINT, "a signal")

    @property
    def status(self) -> int:
        """The exit status of a run the signals stopped: 143 after SIGTERM, 130 after Ctrl-C."""
        return EXIT_TERMINATED if self.first == signal.SIGTERM else EXIT_INTERRUPTED

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            # None: the old handler was not set from Python; the default is the closest.
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def __call__(self, signum: int, frame: Any) -> None:
        name = _SIGNAL_NAMES.get(signum, f"signal {signum}")
        if self.first is None:
            self.first = signum
            if self.copying:
                _raw_stderr(f"\n{name}: stopping; nothing was sent.\n")
                raise KeyboardInterrupt
            again = "Press Ctrl-C again" if signum == signal.SIGINT else "A second SIGTERM or Ctrl-C"
            _raw_stderr(
                f"\n{name}: stopping (a drain). No request of any kind is sent any more (retries included); the "
                f"answers already coming are saved. {again} to cancel them.\n"
            )
        else:
            _raw_stderr(f"\n{name} again: cancelling the calls in flight (a rerun sends them again).\n")
        self.interrupter()


@contextlib.contextmanager
def _input_file(path: str, output: str, signals: StopSignals) -> Any:
    """The input as a regular file: a pipe (``-``, ``/dev/stdin``, a FIFO) is saved to a temporary one first.

    The temporary file is removed when the block ends, however it ends (a signal included).
    """
    if path != "-" and stat.S_ISREG(os.stat(path).st_mode):
        yield path
        return
    directory = os.path.dirname(os.path.abspath(output))
    with tempfile.NamedTemporaryFile(prefix=".deepseek-pool-input-", suffix=".jsonl", dir=directory) as spool:
        signals.copying = True
        try:
            if path == "-":
                shutil.copyfileobj(sys.stdin.buffer, spool)
            else:
                with open(path, "rb") as source:
                    shutil.copyfileobj(source, spool)
        finally:
            signals.copying = False
        spool.flush()
        yield spool.name


def _limits(args: argparse.Namespace) -> Dict[str, Any]:
    """The limits of a run's own (unshared) limiter."""
    return {"max_in_flight": args.max_in_flight, "rpm": args.rpm, "tpm": args.tpm, "retry_budget": args.retry_budget}


def run_command(args: argparse.Namespace, command_line: str) -> int:
    _check_run_paths(args)
    prices = dict(args.price)
    if prices and args.max_cost is None:
        raise CommandFailed("--price is only used with --max-cost")
    limiter = None
    if args.limiter_storage is not None:
        try:  # checked (and the storage opened) before any request is sent
            limiter = Limiter(
                args.max_in_flight,
                args.rpm,
                args.tpm,
                retry_budget=args.retry_budget,
                storage=args.limiter_storage,
                name=args.limiter_name,
            )
        except (ValueError, TypeError) as err:
            raise CommandFailed(f"--limiter-storage: {err}") from None
    elif args.limiter_name != "default":
        raise CommandFailed("--limiter-name is only used with --limiter-storage")
    client = client_from_args(args, max_retries=args.max_retries)
    # An application owns the process: raise what its calls in flight need, given back on return.
    tuning = tune_process(min(args.workers, args.max_in_flight or args.workers))
    try:
        pool = DeepSeekPool(
            client,
            max_workers=args.workers,
            limiter=limiter,
            **({} if limiter is not None else _limits(args)),
            max_cost=args.max_cost,
            prices=prices or None,
            warm_prefix=args.warm_prefix,
            off_peak_only=OffPeakOnly() if args.off_peak_only else False,
        )
    except ValueError as err:
        client.close()
        if limiter is not None:
            limiter.close()
        tuning.restore()
        raise CommandFailed(str(err)) from None
    interrupter = Interrupter()
    stderr = sys.stderr
    progress = BatchProgress(stderr, bar=not args.quiet and is_tty(stderr), quiet=args.quiet)

    signals = StopSignals(interrupter)
    signals.install()
    summary: Optional[BatchSummary] = None
    try:
        with _input_file(args.input, args.output, signals) as input_path:
            summary = run_batch(
                input_path,
                args.output,
                pool,
                retry_failed=args.retry_failed,
                model=args.model,
                interrupter=interrupter,
                progress=progress,
            )
    except KeyboardInterrupt:
        if signals.first is None:
            raise
        # A signal outside the batch loop: while saving stdin, or a second one as the run ended.
    except (BatchFileError, ConfigurationError) as err:
        raise CommandFailed(str(err)) from None
    except OSError as err:
        name = err.filename or args.output
        raise CommandFailed(f"cannot use {name}: {err.strerror or err}") from None
    finally:
        signals.restore()
        cancelled = summary is not None and summary.interrupted == "cancelled"
        pool.close(wait=not cancelled, cancel=summary is None or cancelled)
        if not cancelled:
            client.close()
        if limiter is not None:
            limiter.close()
        tuning.restore()
    if summary is None:
        stderr = sys.stderr
        print(f"{PROG} run: stopped by {signals.name}; everything completed is in {args.output}", file=stderr)
        print(f"to resume: {command_line}", file=stderr, flush=True)
        return signals.status
    return _report_run(summary, args, command_line, signals.status)


def _run_status(summary: BatchSummary, interrupted: int) -> int:
    if summary.interrupted:
        return interrupted
    if summary.complete:
        return EXIT_OK
    if summary.capped and not summary.failed:
        return EXIT_SPEND_CAP
    return EXIT_FAILED


def _report_run(summary: BatchSummary, args: argparse.Namespace, command_line: str, interrupted: int) -> int:
    """Print the summary and hints; return the exit status (``interrupted``: the one for a stopped run)."""
    err = sys.stderr
    status = _run_status(summary, interrupted)
    if args.json_summary:
        data = summary_dict(summary)
        data["exit_status"] = status
        try:
            with open(args.json_summary, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=2)
                file.write("\n")
        except OSError as error:
            print(f"{PROG} run: cannot write {args.json_summary}: {error.strerror or error}", file=err)
    if summary.aborted:
        print(f"{PROG} run: stopped early: {summary.aborted}", file=err)
    if not args.quiet or summary.interrupted or summary.capped:
        print(format_summary(summary), file=err)
    if summary.capped and not summary.interrupted:
        spent = f" (this output has spent ${summary.spent:.6f} of it)" if summary.spent is not None else ""
        print(
            f"to run the items left, raise --max-cost{spent} and rerun: {command_line}; the cap covers every "
            "run on this output",
            file=err,
            flush=True,
        )
    if summary.interrupted:
        verb = "cancelled" if summary.interrupted == "cancelled" else "interrupted"
        print(f"{verb}: {summary.not_run} items not run; everything completed is in {args.output}", file=err)
        print(f"to resume: {command_line}", file=err, flush=True)
        if summary.interrupted == "cancelled":
            _exit_without_workers(status)
        return status
    if status != EXIT_FAILED:
        return status
    if not args.quiet or summary.tally.failed:
        failed = summary.tally.failed + summary.skipped_failed
        hint = command_line if args.retry_failed else command_line.replace("--no-retry-failed", "--retry-failed")
        print(f"{failed} items failed (see their error in {args.output}); to try them again: {hint}", file=err)
    return EXIT_FAILED


def _exit_without_workers(status: int) -> None:
    """After a cancel, give worker threads a moment to end, then exit without waiting for them.

    The interpreter joins executor threads at exit, so a call blocked in a socket read
    would keep the process alive for up to its timeout.
    """
    deadline = time.monotonic() + CANCEL_EXIT_GRACE
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
