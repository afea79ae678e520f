"""The ``deepseek-pool`` command (also ``python -m deepseek_pool``).

::

    deepseek-pool demo                              # offline: one by one vs. the pool
    deepseek-pool run prompts.jsonl -o results.jsonl  # resumable batch; rerun to resume
    deepseek-pool report results.jsonl              # what a batch did (finished or running)
    deepseek-pool chat "Say hi"                      # stream one answer: check key and URL
    deepseek-pool serve-fake --latency 0.2-0.5      # a local DeepSeek-compatible server

Exit status: 0 success, 1 some items or the call failed, 2 bad invocation or
configuration, 3 the spend cap (``run --max-cost``) stopped the run, 130 interrupted
by Ctrl-C, 143 stopped by SIGTERM (``run`` drains on the first SIGTERM as on the
first Ctrl-C; a second signal cancels). A bad invocation prints one line on stderr,
never a traceback. The API key comes from ``DEEPSEEK_API_KEY`` or ``--api-key-file``,
never from an argument that would show in ``ps``. ``DEEPSEEK_POOL_LOG=info`` logs each
retry on stderr, ``debug`` each attempt too (:mod:`.logs`).

This module holds the parser (the commands and their options) and :func:`main`; each
command's work lives in its own module: :mod:`.run`, :mod:`.report`, :mod:`.demo`, :mod:`.chat`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from typing import NoReturn, Optional, Sequence

from .. import __version__
from ..config import ENV_API_KEY
from ..models import DEFAULT_MODEL
from .chat import chat_command
from .console import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SPEND_CAP,
    EXIT_TERMINATED,
    EXIT_USAGE,
    PROG,
    CommandFailed,
)
from .demo import demo_command
from .logs import logging_from_env
from .options import dollars, latency_range, model_id, non_negative_int, positive_int, price, rate, seconds
from .report import report_command
from .run import run_command

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump) and never exit the interpreter."""

    def error(self, message: str) -> NoReturn:
        raise CommandFailed(f"{message} (see {self.prog} --help)")


# -- the parser ---------------------------------------------------------------------------------


def _add_connection_options(parser: argparse.ArgumentParser, model_help: str) -> None:
    parser.add_argument(
        "--base-url", metavar="URL", help="API base URL (default: $DEEPSEEK_BASE_URL, else https://api.deepseek.com)"
    )
    parser.add_argument(
        "--api-key-file", metavar="PATH", help=f"read the API key from this file (default: ${ENV_API_KEY})"
    )
    parser.add_argument("--model", type=model_id, metavar="ID", help=model_help)
    parser.add_argument(
        "--timeout", type=seconds, metavar="SECONDS", help="most seconds one attempt may take (default 900)"
    )


_EXAMPLES = (
    ("demo", "offline: the same prompts one by one, then through the pool"),
    ("run prompts.jsonl -o results.jsonl", "a batch of requests; rerun the same command to resume"),
    ("report results.jsonl", "what a batch did: outcomes, latency, retries, tokens, cost"),
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
            "another attempt are left for the rerun. Ctrl-C twice cancels the calls in flight.\n"
            "SIGTERM (docker stop, Kubernetes, systemd) drains the same way; a second SIGTERM\n"
            "or Ctrl-C cancels."
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
            f"{EXIT_SPEND_CAP} stopped by the spend cap (rerun with a higher cap for the rest), {EXIT_INTERRUPTED}\n"
            f"stopped by Ctrl-C, {EXIT_TERMINATED} stopped by SIGTERM (rerun to resume)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("input", metavar="IN.jsonl", help="requests, one JSON object per line")
    run.add_argument("-o", "--output", metavar="OUT.jsonl", required=True, help="results file (appended; resumable)")
    run.add_argument("--workers", type=positive_int, default=16, metavar="N", help="threads making calls (default 16)")
    run.add_argument("--max-in-flight", type=positive_int, metavar="N", help="most calls running at once")
    run.add_argument("--rpm", type=rate, metavar="N", help="most requests started per minute")
    run.add_argument("--tpm", type=positive_int, metavar="N", help="most tokens per minute")
    run.add_argument(
        "--max-retries",
        type=non_negative_int,
        metavar="N",
        help="retries per call after the first attempt (default 2)",
    )
    run.add_argument(
        "--retry-budget",
        type=positive_int,
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
        type=dollars,
        metavar="USD",
        help=f"spend cap: start no call that could pass it; items left are for a rerun (exit {EXIT_SPEND_CAP})",
    )
    run.add_argument(
        "--price",
        type=price,
        action="append",
        default=[],
        metavar="MODEL=HIT,MISS,OUTPUT",
        help="a model's price in USD per 1M tokens (cache-hit input, cache-miss input, output), "
        "flat at all hours; for models the built-in table does not know (repeatable)",
    )
    run.add_argument(
        "--warm-prefix",
        action="store_true",
        help="warm DeepSeek's prompt cache first: two one-token calls carrying the leading messages the "
        "items share, a 3 s wait, then the batch, which pays that prefix at the cache-hit price "
        "(not done, and logged, for a shared prefix under 1,024 tokens)",
    )
    run.add_argument(
        "--off-peak-only",
        action="store_true",
        help="start no call in DeepSeek's peak hours (01:00-04:00 and 06:00-10:00 UTC on Chinese working "
        "days), which cost twice the off-peak price: at a peak's start the calls running finish, the run "
        "says when the next off-peak window opens, waits, and goes on there",
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
    run.set_defaults(handler=run_command)

    report = commands.add_parser(
        "report",
        help="what a batch did, from its output file (finished or still running)",
        description=(
            "Read the output of 'run' (while it runs too) and tell what the batch did: items by\n"
            "outcome (failures by error class and status), latency percentiles of the answers,\n"
            "attempts and 429s, tokens and the cache-hit share, the estimated cost split between\n"
            "peak and off-peak hours, and the slowest items. Per custom_id the line that stands\n"
            "is counted (its success, else its last line). Lines written before deepseek-pool\n"
            "0.2.0 do not record times, attempts or 429s: those parts say 'not recorded'."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("output", metavar="OUT.jsonl", help="a results file written by 'run'")
    report.add_argument("--json", action="store_true", help="print the report as JSON (for scripts)")
    report.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw throughput, calls in flight, cumulative cost and the latency distribution to FILE "
        "(needs matplotlib: pip install 'deepseek-pool[plot]')",
    )
    report.add_argument(
        "--top", type=non_negative_int, default=5, metavar="N", help="slowest items to name (default 5)"
    )
    report.add_argument(
        "--price",
        type=price,
        action="append",
        default=[],
        metavar="MODEL=HIT,MISS,OUTPUT",
        help="a model's price in USD per 1M tokens, flat at all hours, for models the built-in table "
        "does not know (repeatable)",
    )
    report.set_defaults(handler=report_command)

    demo = commands.add_parser(
        "demo",
        help="offline demo: the same prompts one by one, then through the pool",
        description=(
            "Start a local FakeDeepSeek with realistic latency (no key, no network), send the same prompts one "
            "by one and then through a DeepSeekPool, and print both wall times and the speedup."
        ),
    )
    demo.add_argument("--prompts", type=positive_int, default=24, metavar="N", help="prompts to send (default 24)")
    demo.add_argument("--workers", type=positive_int, default=16, metavar="N", help="pool threads (default 16)")
    demo.add_argument(
        "--latency",
        type=latency_range,
        default=(0.2, 0.5),
        metavar="LOW-HIGH",
        help="seconds each answer takes, uniform in a range (default 0.2-0.5)",
    )
    demo.add_argument("--seed", type=int, default=1, help="seed of the simulated latencies (default 1)")
    demo.set_defaults(handler=demo_command)

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
    chat.add_argument("--max-tokens", type=positive_int, metavar="N", help="cap on the answer's tokens")
    _add_connection_options(chat, f"model id (default: $DEEPSEEK_MODEL, else {DEFAULT_MODEL})")
    chat.set_defaults(handler=chat_command)

    # Parsed by deepseek_pool.testing.main (see main()); listed here for --help.
    commands.add_parser(
        "serve-fake",
        help="serve a local DeepSeek-compatible API (FakeDeepSeek) until Ctrl-C",
        add_help=False,
    )
    return parser


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
    command = arguments[0] if arguments and arguments[0] in ("run", "report", "demo", "chat") else None
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
        with logging_from_env():
            status: int = handler(args, command_line)
        return status
    except CommandFailed as fail:
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
