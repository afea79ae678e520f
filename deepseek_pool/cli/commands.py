"""The ``deepseek-pool`` command (also ``python -m deepseek_pool``).

::

    deepseek-pool demo                              # offline: one by one vs. the pool
    deepseek-pool run prompts.jsonl -o results.jsonl  # resumable batch; rerun to resume
    deepseek-pool chat "Say hi"                      # stream one answer: check key and URL
    deepseek-pool serve-fake --latency 0.2-0.5      # a local DeepSeek-compatible server

Exit status: 0 success, 1 some items or the call failed, 2 bad invocation or
configuration, 3 the spend cap (``run --max-cost``) stopped the run, 130
interrupted. A bad invocation prints one line on stderr, never a traceback. The API
key comes from ``DEEPSEEK_API_KEY`` or ``--api-key-file``, never from an argument
that would show in ``ps``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, TextIO, Tuple

from .. import __version__
from ..batch.progress import BatchProgress, Tally, format_cost, format_summary, summary_dict
from ..batch.runner import BatchFileError, BatchSummary, Interrupter, run_batch
from ..budget.limiter import Limiter
from ..client import DeepSeekClient
from ..config import ENV_API_KEY
from ..errors import ConfigurationError, DeepSeekError
from ..models import DEFAULT_MODEL, ModelPrice
from ..pool.pool import DeepSeekPool
from ..process import tune_process

__all__ = ["main"]

PROG = "deepseek-pool"
#: Seconds a cancelled run waits for its worker threads before exiting without them.
CANCEL_EXIT_GRACE = 2.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: ``run`` stopped by its spend cap (``--max-cost``): the items not started are left for a rerun.
EXIT_SPEND_CAP = 3

#: The demo's prompts: varied, like a real batch (answers are made up by FakeDeepSeek).
DEMO_PROMPTS = (
    "Summarise the plot of Hamlet in one sentence.",
    "Translate 'good morning' into French, Spanish and German.",
    "Write a haiku about a slow database.",
    "What is the capital of Australia?",
    "Explain a Python generator to a beginner.",
    "Give three names for a coffee shop run by cats.",
    "Convert 72 degrees Fahrenheit to Celsius.",
    "What does HTTP status 429 mean?",
    "Suggest a title for a talk about thread pools.",
    "List the planets of the solar system in order.",
    "Write a one-line commit message for fixing a typo.",
    "What is the difference between a list and a tuple?",
    "Name a good first book on statistics.",
    "Rewrite 'the meeting is moved' more politely.",
    "Classify the sentiment of: 'the update broke my app'.",
    "What is 17 times 23?",
    "Describe the smell of rain in five words.",
    "Give a SQL query that counts rows per day.",
    "Why is the sky blue? One paragraph.",
    "Extract the date from: 'due on 3 March 2027'.",
    "Suggest a variable name for a retry counter.",
    "What rhymes with 'orange'?",
    "Write a limerick about a flaky test.",
    "Explain backoff with jitter in two sentences.",
    "Tag this ticket: 'login page shows a blank screen'.",
    "What is the boiling point of water on Everest?",
    "Give an example of a regular expression for an email.",
    "Turn 'ship it' into a motivational quote.",
    "What is a good name for a pet turtle?",
    "Summarise the GIL in one sentence.",
)


class _Fail(Exception):
    """A clean, one-line failure of a command: message and exit status."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump) and never exit the interpreter."""

    def error(self, message: str) -> NoReturn:
        raise _Fail(f"{message} (see {self.prog} --help)")


# -- option types: each rejects a bad value with one clear sentence --------------------------


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _latency_range(text: str) -> Tuple[float, float]:
    low, sep, high = text.partition("-")
    try:
        pair = (float(low), float(high if sep else low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds like 0.2-0.5 or 0.3, got {text!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in pair) or pair[0] > pair[1]:
        raise argparse.ArgumentTypeError(f"expected seconds like 0.2-0.5 (low <= high, both >= 0), got {text!r}")
    return pair


def _dollars(text: str) -> float:
    try:
        value = float(text.strip().lstrip("$"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an amount of USD > 0 like 5.00, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected an amount of USD > 0 like 5.00, got {text!r}")
    return value


def _model_id(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a model id, got {text!r}")
    return text.strip()


def _price(text: str) -> Tuple[str, ModelPrice]:
    model, sep, figures = text.partition("=")
    parts = figures.split(",")
    message = f"expected MODEL=HIT,MISS,OUTPUT in USD per 1M tokens (e.g. my-model=0.01,0.3,1.2), got {text!r}"
    if not sep or not model.strip() or len(parts) != 3:
        raise argparse.ArgumentTypeError(message)
    try:
        hit, miss, output = (float(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not all(math.isfinite(v) and v >= 0 for v in (hit, miss, output)):
        raise argparse.ArgumentTypeError(message)
    return model.strip(), ModelPrice(hit, miss, output, off_peak_factor=1.0)


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


# -- the parser ---------------------------------------------------------------------------------


def _add_connection_options(parser: argparse.ArgumentParser, model_help: str) -> None:
    parser.add_argument(
        "--base-url", metavar="URL", help="API base URL (default: $DEEPSEEK_BASE_URL, else https://api.deepseek.com)"
    )
    parser.add_argument(
        "--api-key-file", metavar="PATH", help=f"read the API key from this file (default: ${ENV_API_KEY})"
    )
    parser.add_argument("--model", type=_model_id, metavar="ID", help=model_help)
    parser.add_argument(
        "--timeout", type=_seconds, metavar="SECONDS", help="most seconds one attempt may take (default 900)"
    )


_EXAMPLES = (
    ("demo", "offline: the same prompts one by one, then through the pool"),
    ("run prompts.jsonl -o results.jsonl", "a batch of requests; rerun the same command to resume"),
    ('chat "Say hi"', "stream one answer (checks the key and base URL)"),
    ("serve-fake --latency 0.2-0.5", "a local DeepSeek-compatible server for tests"),
)


def _build_parser(prog: str) -> _Parser:
    parser = _Parser(
        prog=prog,
        description="Call the DeepSeek API many times at once from plain threads.",
        epilog="examples:\n"
        + "".join(f"  {prog} {example}\n      {what}\n" for example, what in _EXAMPLES)
        + f"\nThe API key is read from ${ENV_API_KEY} (or --api-key-file).\n'{prog} COMMAND --help' tells more.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a JSONL file of requests; resumable",
        description=(
            "Run every request of a JSONL file and append one result line per item to the\n"
            "output as each completes (OpenAI batch output shape). Rerun the same command\n"
            "to resume: items already answered are skipped, failed ones are tried again,\n"
            "and a run that ends by itself compacts the output to one line per item.\n\n"
            "The output is locked for the whole run (compaction included): a second run on\n"
            "the same output is refused. Do not append to it from other programs while a\n"
            "run owns it: such lines may be lost in the compaction; lines a resume cannot\n"
            "read are skipped with a warning naming their line numbers.\n\n"
            "Ctrl-C once drains: no request of any kind is sent any more (retries\n"
            "included), the answers already coming are saved, and calls that would need\n"
            "another attempt are left for the rerun. Ctrl-C twice cancels the calls in flight."
        ),
        epilog=(
            "input lines, one JSON value each:\n"
            '  {"prompt": "..."}\n'
            '  {"messages": [...], "model": "...", "custom_id": "..."}    (any chat parameter)\n'
            '  {"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}\n'
            "batch urls: /chat/completions and /v1/chat/completions (chat), /beta/chat/completions\n"
            "(chat at the beta base: prefix completion), /beta/completions (FIM); any other url\n"
            "is an error line. A line without a custom_id gets its line number as one. A line\n"
            "that is not JSON, too long or nested too deep is an error line; the rest still run.\n"
            "IN.jsonl may be - (or a pipe) to read the requests from stdin: they are saved to a\n"
            "temporary file first; to resume, give the same lines again.\n\n"
            "spend cap: with --max-cost USD no call starts once the cost so far plus what the\n"
            "calls in flight reserved (prompt estimate + max_tokens, priced from the model table,\n"
            "peak or off-peak) would pass it; set max_tokens for a hard bound. Models without a\n"
            "known price are refused up front unless --price gives one.\n\n"
            "exit status: 0 all items answered, 1 some failed, 2 bad invocation (nothing sent),\n"
            f"{EXIT_SPEND_CAP} stopped by the spend cap (rerun with a higher cap for the rest), 130 interrupted."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("input", metavar="IN.jsonl", help="requests, one JSON object per line")
    run.add_argument("-o", "--output", metavar="OUT.jsonl", required=True, help="results file (appended; resumable)")
    run.add_argument("--workers", type=_positive_int, default=16, metavar="N", help="threads making calls (default 16)")
    run.add_argument("--max-in-flight", type=_positive_int, metavar="N", help="most calls running at once")
    run.add_argument("--rpm", type=_rate, metavar="N", help="most requests started per minute")
    run.add_argument("--tpm", type=_positive_int, metavar="N", help="most tokens per minute")
    run.add_argument(
        "--max-retries",
        type=_non_negative_int,
        metavar="N",
        help="retries per call after the first attempt (default 2)",
    )
    run.add_argument(
        "--retry-budget",
        type=_positive_int,
        default=500,
        metavar="N",
        help="shared retry budget: a failing API gets about N/5 retries in all (default 500)",
    )
    run.add_argument(
        "--retry-failed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on resume, try again the items that failed before (default: yes)",
    )
    run.add_argument(
        "--max-cost",
        type=_dollars,
        metavar="USD",
        help=f"spend cap: start no call that could pass it; items left are for a rerun (exit {EXIT_SPEND_CAP})",
    )
    run.add_argument(
        "--price",
        type=_price,
        action="append",
        default=[],
        metavar="MODEL=HIT,MISS,OUTPUT",
        help="a model's price in USD per 1M tokens (cache-hit input, cache-miss input, output), "
        "flat at all hours; for models the built-in table does not know (repeatable)",
    )
    run.add_argument(
        "--limiter-storage",
        metavar="URI",
        help="share the rate limits and the concurrency budget with every limiter on this storage and name: "
        "sqlite:////var/tmp/ds.db (processes on this machine), redis://host:6379/0 (many machines); "
        "default: this run alone",
    )
    run.add_argument(
        "--limiter-name",
        default="default",
        metavar="NAME",
        help="the shared budget's name in --limiter-storage (default 'default')",
    )
    run.add_argument("--json-summary", metavar="FILE", help="also write the summary as JSON to FILE (for scripts)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar, notices or summary")
    _add_connection_options(
        run,
        "model for every line, replacing the line's own "
        f"(default: the line's, else $DEEPSEEK_MODEL, else {DEFAULT_MODEL})",
    )
    run.set_defaults(handler=_cmd_run)

    demo = commands.add_parser(
        "demo",
        help="offline demo: the same prompts one by one, then through the pool",
        description=(
            "Start a local FakeDeepSeek with realistic latency (no key, no network), send the same prompts one "
            "by one and then through a DeepSeekPool, and print both wall times and the speedup."
        ),
    )
    demo.add_argument("--prompts", type=_positive_int, default=24, metavar="N", help="prompts to send (default 24)")
    demo.add_argument("--workers", type=_positive_int, default=16, metavar="N", help="pool threads (default 16)")
    demo.add_argument(
        "--latency",
        type=_latency_range,
        default=(0.2, 0.5),
        metavar="LOW-HIGH",
        help="seconds each answer takes, uniform in a range (default 0.2-0.5)",
    )
    demo.add_argument("--seed", type=int, default=1, help="seed of the simulated latencies (default 1)")
    demo.set_defaults(handler=_cmd_demo)

    chat = commands.add_parser(
        "chat",
        help="stream one answer to the terminal (checks a key and base URL)",
        description="Send one prompt and stream the answer; the model's reasoning is shown apart, first.",
    )
    chat.add_argument("prompt", help="the prompt ('-' reads it from stdin)")
    chat.add_argument(
        "--thinking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="switch thinking (reasoning) on or off (default: the model's)",
    )
    chat.add_argument("--system", metavar="TEXT", help="a system message")
    chat.add_argument("--max-tokens", type=_positive_int, metavar="N", help="cap on the answer's tokens")
    _add_connection_options(chat, f"model id (default: $DEEPSEEK_MODEL, else {DEFAULT_MODEL})")
    chat.set_defaults(handler=_cmd_chat)

    # Parsed by deepseek_pool.testing.main (see main()); listed here for --help.
    commands.add_parser(
        "serve-fake",
        help="serve a local DeepSeek-compatible API (FakeDeepSeek) until Ctrl-C",
        add_help=False,
    )
    return parser


# -- shared helpers --------------------------------------------------------------------------


def _api_key(path: Optional[str]) -> str:
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                key = file.read().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise _Fail(f"cannot read the API key file {path}: {getattr(err, 'strerror', None) or err}") from None
        if not key:
            raise _Fail(f"the API key file {path} is empty")
        return key
    key = os.environ.get(ENV_API_KEY, "").strip()
    if not key:
        raise _Fail(f"no API key: set {ENV_API_KEY} or pass --api-key-file PATH (a file holding the key)")
    return key


def _client(args: argparse.Namespace, **options: Any) -> DeepSeekClient:
    try:
        return DeepSeekClient(
            _api_key(args.api_key_file), base_url=args.base_url, model=args.model, timeout=args.timeout, **options
        )
    except ConfigurationError as err:
        raise _Fail(str(err)) from None


def _raw_stderr(text: str) -> None:
    """Write straight to fd 2: safe from a signal handler, unlike the buffered sys.stderr."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.write(sys.stderr.fileno(), text.encode("utf-8", "replace"))


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- run ---------------------------------------------------------------------------------------


def _check_run_paths(args: argparse.Namespace) -> None:
    """Refuse, before anything is sent, paths the run could not use."""
    if args.input != "-":
        try:
            mode = os.stat(args.input).st_mode
        except FileNotFoundError:
            raise _Fail(f"cannot read {args.input}: no such file") from None
        except OSError as err:
            raise _Fail(f"cannot read {args.input}: {err.strerror or err}") from None
        if stat.S_ISDIR(mode):
            raise _Fail(f"cannot read {args.input}: it is a directory")
        if stat.S_ISREG(mode) and not os.access(args.input, os.R_OK):
            raise _Fail(f"cannot read {args.input}: permission denied")
    output = args.output
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise _Fail(f"cannot write {output}: the directory {directory} does not exist")
    try:
        mode = os.stat(output).st_mode
    except FileNotFoundError:
        if not os.access(directory, os.W_OK):
            raise _Fail(f"cannot use {output}: permission denied (the directory {directory} is not writable)") from None
    else:
        if stat.S_ISDIR(mode):
            raise _Fail(f"cannot write {output}: it is a directory")
        if not stat.S_ISREG(mode):
            raise _Fail(f"cannot write {output}: it is not a regular file (a device or a pipe); give a file path")
        if not os.access(output, os.R_OK | os.W_OK):
            raise _Fail(f"cannot use {output}: permission denied (it is read to resume and appended to)")
    if args.json_summary:
        where = os.path.dirname(os.path.abspath(args.json_summary))
        if os.path.isdir(args.json_summary) or not os.path.isdir(where):
            raise _Fail(f"cannot write the summary to {args.json_summary}: no such directory or it is one")


@contextlib.contextmanager
def _input_file(path: str, output: str) -> Any:
    """The input as a regular file: a pipe (``-``, ``/dev/stdin``, a FIFO) is saved to a temporary one first."""
    if path != "-" and stat.S_ISREG(os.stat(path).st_mode):
        yield path
        return
    directory = os.path.dirname(os.path.abspath(output))
    with tempfile.NamedTemporaryFile(prefix=".deepseek-pool-input-", suffix=".jsonl", dir=directory) as spool:
        if path == "-":
            shutil.copyfileobj(sys.stdin.buffer, spool)
        else:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, spool)
        spool.flush()
        yield spool.name


def _limits(args: argparse.Namespace) -> Dict[str, Any]:
    """The limits of a run's own (unshared) limiter."""
    return {"max_in_flight": args.max_in_flight, "rpm": args.rpm, "tpm": args.tpm, "retry_budget": args.retry_budget}


def _cmd_run(args: argparse.Namespace, command_line: str) -> int:
    _check_run_paths(args)
    prices = dict(args.price)
    if prices and args.max_cost is None:
        raise _Fail("--price is only used with --max-cost")
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
            raise _Fail(f"--limiter-storage: {err}") from None
    elif args.limiter_name != "default":
        raise _Fail("--limiter-name is only used with --limiter-storage")
    client = _client(args, max_retries=args.max_retries)
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
        )
    except ValueError as err:
        client.close()
        if limiter is not None:
            limiter.close()
        tuning.restore()
        raise _Fail(str(err)) from None
    interrupter = Interrupter()
    stderr = sys.stderr
    progress = BatchProgress(stderr, bar=not args.quiet and _is_tty(stderr), quiet=args.quiet)

    def on_sigint(signum: int, frame: Any) -> None:
        if interrupter.presses == 0:
            _raw_stderr(
                "\nCtrl-C: stopping (a drain). No request of any kind is sent any more (retries included); the answers "
                "already coming are saved. Press Ctrl-C again to cancel them.\n"
            )
        else:
            _raw_stderr("\nCtrl-C again: cancelling the calls in flight (a rerun sends them again).\n")
        interrupter()

    previous = _set_sigint(on_sigint)
    summary: Optional[BatchSummary] = None
    try:
        with _input_file(args.input, args.output) as input_path:
            summary = run_batch(
                input_path,
                args.output,
                pool,
                retry_failed=args.retry_failed,
                model=args.model,
                interrupter=interrupter,
                progress=progress,
            )
    except (BatchFileError, ConfigurationError) as err:
        raise _Fail(str(err)) from None
    except OSError as err:
        name = err.filename or args.output
        raise _Fail(f"cannot use {name}: {err.strerror or err}") from None
    finally:
        _set_sigint(previous)
        cancelled = summary is not None and summary.interrupted == "cancelled"
        pool.close(wait=not cancelled, cancel=summary is None or cancelled)
        if not cancelled:
            client.close()
        if limiter is not None:
            limiter.close()
        tuning.restore()
    return _report_run(summary, args, command_line)


def _set_sigint(handler: Any) -> Any:
    """Install a SIGINT handler where one can be (the main thread); return the old one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)


def _run_status(summary: BatchSummary) -> int:
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.complete:
        return EXIT_OK
    if summary.capped and not summary.failed:
        return EXIT_SPEND_CAP
    return EXIT_FAILED


def _report_run(summary: BatchSummary, args: argparse.Namespace, command_line: str) -> int:
    err = sys.stderr
    status = _run_status(summary)
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
        print(f"to run the items left, raise --max-cost and rerun: {command_line}", file=err, flush=True)
    if summary.interrupted:
        verb = "cancelled" if summary.interrupted == "cancelled" else "interrupted"
        print(f"{verb}: {summary.not_run} items not run; everything completed is in {args.output}", file=err)
        print(f"to resume: {command_line}", file=err, flush=True)
        if summary.interrupted == "cancelled":
            _exit_without_workers(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
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


# -- demo --------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace, command_line: str) -> int:
    from ..testing import FakeDeepSeek  # the simulator is only imported when it is used

    count = args.prompts
    prompts: List[str] = [
        DEMO_PROMPTS[i % len(DEMO_PROMPTS)] + (f" (#{i // len(DEMO_PROMPTS) + 1})" if i >= len(DEMO_PROMPTS) else "")
        for i in range(count)
    ]
    low, high = args.latency
    latency = f"{low:g}-{high:g} s" if low != high else f"{low:g} s"
    out = sys.stdout
    print(
        f"deepseek-pool demo: {count} prompts to a local FakeDeepSeek that takes {latency} per answer, "
        "like the real API (no key, no network).",
        file=out,
    )
    with FakeDeepSeek(latency=(low, high) if low != high else low, seed=args.seed) as fake:
        client = DeepSeekClient("sk-demo", base_url=fake.base_url, model=DEFAULT_MODEL)
        try:
            print("\n1) one by one: for prompt in prompts: client.chat(prompt)", file=out, flush=True)
            start = time.perf_counter()
            for prompt in prompts:
                client.chat(prompt)
            one_by_one = time.perf_counter() - start
            print(f"   {count} answers in {one_by_one:.2f} s", file=out)

            print(f"\n2) through the pool: DeepSeekPool(max_workers={args.workers}).map(prompts)", file=out, flush=True)
            start = time.perf_counter()
            with DeepSeekPool(client, max_workers=args.workers) as pool:
                results = pool.map(prompts)
            pooled = time.perf_counter() - start
            failed = sum(1 for r in results if not r.ok)
            note = f" ({failed} failed)" if failed else ""
            print(f"   {count - failed} answers in {pooled:.2f} s{note}", file=out)
        finally:
            client.close()
    speedup = one_by_one / pooled if pooled > 0 else float("inf")
    print(f"\nspeedup: {speedup:.1f}x with {min(args.workers, count)} calls at once", file=out)
    print("\na few answers:", file=out)
    for result in results[:3]:
        answer = result.completion.content if result.completion is not None else f"error: {result.error}"
        answer = " ".join(answer.split())
        if len(answer) > 70:
            answer = answer[:67] + "..."
        print(f"  {result.request!r}\n    -> {answer}", file=out)
    print(
        f'\nnext: put prompts in a file, one {{"prompt": "..."}} per line, set {ENV_API_KEY}, and run\n'
        f"  {PROG} run prompts.jsonl -o results.jsonl",
        file=out,
        flush=True,
    )
    return EXIT_OK if not failed else EXIT_FAILED


# -- chat --------------------------------------------------------------------------------------


def _cmd_chat(args: argparse.Namespace, command_line: str) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise _Fail("the prompt is empty")
    client = _client(args)
    messages: List[Any] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": prompt})
    params: Dict[str, Any] = {"stream_options": {"include_usage": True}}
    if args.thinking is not None:
        params["thinking"] = args.thinking
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    out = sys.stdout
    color = _is_tty(out) and not os.environ.get("NO_COLOR")
    dim, reset = ("\x1b[2m", "\x1b[0m") if color else ("", "")
    section = ""
    try:
        with client.chat_stream(messages, **params) as stream:
            for chunk in stream:
                piece = chunk.reasoning_content
                if piece:
                    if section != "thinking":
                        out.write(f"{dim}[thinking]\n")
                        section = "thinking"
                    out.write(piece)
                    out.flush()
                piece = chunk.content
                if piece:
                    if section != "answer":
                        out.write(f"{reset}\n\n[answer]\n" if section == "thinking" else "")
                        section = "answer"
                    out.write(piece)
                    out.flush()
            completion = stream.completion()
    except ConfigurationError as err:
        raise _Fail(str(err)) from None
    except DeepSeekError as err:
        out.write("\n" if section else "")
        raise _Fail(str(err), EXIT_FAILED) from None
    finally:
        if section == "thinking":
            out.write(reset)  # never leave the terminal dimmed, Ctrl-C included
        client.close()
    out.write("\n")
    out.flush()
    usage = completion.usage
    if usage is not None:
        tally = Tally()
        tally.add_ok(completion, client.model)
        print(
            f"[{completion.model or client.model}: {usage.prompt_tokens} tokens in, {usage.completion_tokens} out"
            f" ({usage.reasoning_tokens} reasoning), about {format_cost(tally)}; finish: {completion.finish_reason}]",
            file=sys.stderr,
        )
    return EXIT_OK


# -- entry point -------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None, *, prog: str = PROG) -> int:
    """Run the ``deepseek-pool`` command and return its exit status.

    :param argv: the arguments without the program name (default ``sys.argv[1:]``).
    :param prog: how the command was invoked, for messages and the resume hint.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] == "serve-fake":
        from ..testing import main as serve_fake

        try:
            return serve_fake(arguments[1:])
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    parser = _build_parser(prog)
    command = arguments[0] if arguments and arguments[0] in ("run", "demo", "chat") else None
    where = f"{prog} {command}" if command else prog
    try:
        try:
            args = parser.parse_args(arguments)
        except SystemExit as exit_:  # --help and --version
            return exit_.code if isinstance(exit_.code, int) else EXIT_OK
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        command_line = " ".join([prog, shlex.join(arguments)])
        status: int = handler(args, command_line)
        return status
    except _Fail as fail:
        print(f"{where}: error: {fail}", file=sys.stderr)
        return fail.status
    except KeyboardInterrupt:
        print(f"\n{where}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as Unix tools do.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the exit-time flush does not fail again
        return EXIT_FAILED
