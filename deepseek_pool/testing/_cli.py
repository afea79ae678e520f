"""``deepseek-pool serve-fake``: run :class:`FakeDeepSeek` in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Dict, Optional, Sequence

from deepseek_pool.testing._cache import CacheRules
from deepseek_pool.testing._faults import FAULT_NAMES, parse_rates
from deepseek_pool.testing._server import FakeDeepSeek, Latency


def _latency(text: str) -> Latency:
    """``0.2`` (fixed) or ``0.1-0.5`` / ``0.1,0.5`` (uniform range)."""
    for sep in (",", "-"):
        low, found, high = text.partition(sep)
        if found and low:
            return (float(low), float(high))
    return float(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepseek-pool serve-fake",
        description="Serve a local DeepSeek-compatible API (FakeDeepSeek) until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    parser.add_argument(
        "--latency",
        type=_latency,
        default=0.0,
        metavar="SECONDS",
        help="delay before each answer: 0.2, or a uniform range 0.1-0.5",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME=RATE",
        help="inject a fault with a probability per request, e.g. 503=0.1 "
        f"(repeatable; names: {', '.join(FAULT_NAMES)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument(
        "--api-key-file", metavar="PATH", help="accept only the key in this file (default: any non-empty key)"
    )
    parser.add_argument(
        "--retry-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="Retry-After sent with injected 429 and 503 answers",
    )
    parser.add_argument(
        "--stream-chunk-delay", type=float, default=0.0, metavar="SECONDS", help="delay between streamed events"
    )
    parser.add_argument(
        "--chunks-per-answer",
        type=int,
        default=None,
        metavar="N",
        help="stream each answer in exactly N content events (default: tiny 1-4 character pieces)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        metavar="N",
        help="answer 429 'concurrency limit of N' above N requests in flight, as DeepSeek's account cap does",
    )
    parser.add_argument(
        "--cache-build-delay",
        type=float,
        default=CacheRules.build_delay,
        metavar="SECONDS",
        help="seconds before a prompt-cache unit can be hit (DeepSeek: seconds; default 0.05, for tests)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the fake server, print its base URL on stdout, serve until Ctrl-C.

    :param argv: arguments without the program name (default ``sys.argv[1:]``).
    :returns: the process exit status (0 after Ctrl-C, 2 on bad arguments).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        faults: Dict[str, float] = {}
        for item in args.fault:
            name, sep, rate = item.partition("=")
            if not sep:
                parser.error(f"--fault needs NAME=RATE, got {item!r}")
            try:
                faults[name] = float(rate)
            except ValueError:
                parser.error(f"--fault {item!r}: the rate must be a number")
        try:
            parse_rates(faults)
        except ValueError as exc:
            parser.error(str(exc))
        api_key = None
        if args.api_key_file:
            try:
                with open(args.api_key_file, encoding="utf-8") as f:
                    api_key = f.read().strip() or None
            except OSError as exc:
                parser.error(f"cannot read --api-key-file: {exc}")
        fake = FakeDeepSeek(
            api_key=api_key,
            latency=args.latency,
            faults=faults,
            seed=args.seed,
            host=args.host,
            port=args.port,
            retry_after=args.retry_after,
            stream_chunk_delay=args.stream_chunk_delay,
            chunks_per_answer=args.chunks_per_answer,
            max_concurrency=args.max_concurrency,
            cache_build_delay=args.cache_build_delay,
        )
    except SystemExit as exc:  # argparse exits on bad input; a main() returns its status
        return exc.code if isinstance(exc.code, int) else 2
    except ValueError as exc:
        print(f"deepseek-pool serve-fake: error: {exc}", file=sys.stderr)
        return 2
    with fake:
        print(fake.base_url, flush=True)
        print(
            f"FakeDeepSeek serving on {fake.base_url}; set DEEPSEEK_BASE_URL={fake.base_url} "
            "and any DEEPSEEK_API_KEY. Ctrl-C stops it.",
            file=sys.stderr,
            flush=True,
        )
        forever = threading.Event()
        try:
            while not forever.wait(3600):
                pass
        except KeyboardInterrupt:
            pass
    return 0
