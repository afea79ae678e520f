"""A plain script, no event loop: run a CSV or JSONL file of prompts, write each result as it comes.

Run it::

    python examples/batch_script.py                         # offline demo on a generated file
    python examples/batch_script.py prompts.csv -o out.jsonl
    DEEPSEEK_API_KEY=sk-... python examples/batch_script.py prompts.jsonl -o out.jsonl --workers 32

Input: a ``.csv`` with a ``prompt`` column (and an optional ``id`` column), or a ``.jsonl``
file with one request per line: ``{"prompt": ...}``, ``{"messages": [...], "max_tokens": ...}``
or an OpenAI batch line, each with an optional ``custom_id``. Items without an id are
numbered by their position (1-based).

Output: one JSON line per item, in completion order, flushed as soon as it is written::

    {"custom_id": "7", "ok": true, "answer": "...", "error": null, "usage": {...}}

Run it again with the same output file and it only sends what has no successful line yet,
so a crash or Ctrl-C costs at most the calls that were in flight. (``deepseek-pool run``
is the complete tool: OpenAI batch output, cost, Ctrl-C that finishes what is in flight.)

The input is read lazily: the pool keeps only a small window of requests in flight, so
a file of millions of lines runs in constant memory.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, Optional, Sequence, Set, TextIO

from tqdm import tqdm

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek

#: Seconds the offline FakeDeepSeek takes per answer (uniform range; the real API takes seconds).
OFFLINE_LATENCY = (0.05, 0.25)


def read_requests(path: str) -> Iterator[Dict[str, Any]]:
    """Yield one request dict per item, each with a ``custom_id``, without loading the file."""
    with open(path, newline="", encoding="utf-8") as f:
        if path.endswith(".csv"):
            for number, row in enumerate(csv.DictReader(f), start=1):
                yield {"custom_id": row.get("id") or str(number), "prompt": row["prompt"]}
            return
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as err:
                print(f"{path}:{number}: skipped, not JSON ({err})", file=sys.stderr)
                continue
            if isinstance(item, str):
                item = {"prompt": item}
            item.setdefault("custom_id", str(number))
            yield item


def count_items(path: str) -> int:
    """Items in the file, for the progress bar's total (a fast pass over the lines)."""
    with open(path, encoding="utf-8") as f:
        lines = sum(1 for line in f if line.strip())
    return lines - 1 if path.endswith(".csv") else lines


def answered(path: str) -> Set[str]:
    """The custom_ids that already have a successful line in ``path`` (a previous run).

    A last line cut short by a crash is removed, so that new lines start on a line of their own.
    """
    done: Set[str] = set()
    if not os.path.exists(path):
        return done
    with open(path, "rb+") as f:
        kept = 0
        for line in f:
            if not line.endswith(b"\n"):
                f.truncate(kept)  # that item runs again
                break
            kept += len(line)
            record = json.loads(line)
            if record.get("ok"):
                done.add(record["custom_id"])
    return done


def record_of(result: dp.Result) -> Dict[str, Any]:
    """The output line of one result; an error is a value here, it never stops the batch."""
    completion = result.completion
    usage = completion.usage if completion is not None else None
    return {
        "custom_id": result.custom_id,
        "ok": result.ok,
        "answer": completion.content if completion is not None else None,
        "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}",
        "usage": None if usage is None else {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens},
    }


def run(client: dp.DeepSeekClient, input_path: str, output_path: str, *, workers: int, out: TextIO) -> int:
    """Run every item not yet answered; return how many failed."""
    done = answered(output_path)
    pending = (r for r in read_requests(input_path) if r["custom_id"] not in done)
    total = count_items(input_path)
    failed = 0
    started = time.monotonic()
    with dp.DeepSeekPool(client, max_workers=workers) as pool, open(output_path, "a", encoding="utf-8") as sink:
        # tqdm draws on stderr, and only when it is a terminal (disable=None).
        with tqdm(total=total, initial=len(done), unit="req", disable=None) as bar:
            for result in pool.as_completed(pending):
                sink.write(json.dumps(record_of(result), ensure_ascii=False) + "\n")
                sink.flush()  # written as it comes: a crash loses at most the calls in flight
                failed += not result.ok
                bar.update()
                bar.set_postfix(failed=failed, refresh=False)
        stats = pool.stats
    print(
        f"{stats.ok} answered, {failed} failed, {len(done)} already done, "
        f"{stats.usage.total_tokens} tokens in {time.monotonic() - started:.1f} s -> {output_path}",
        file=out,
    )
    return failed


def write_sample(directory: str, count: int = 200) -> str:
    """A CSV of ``count`` prompts, for the offline demo."""
    path = os.path.join(directory, "prompts.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "prompt"])
        for i in range(1, count + 1):
            writer.writerow([f"q{i}", f"In one sentence, what is {i} squared?"])
    return path


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("input", nargs="?", help=".csv (prompt column) or .jsonl; default: a generated sample")
    parser.add_argument("-o", "--output", help="results file (JSONL, appended); default: beside the input")
    parser.add_argument("--workers", type=int, default=16, help="concurrent calls (default 16)")
    args = parser.parse_args(argv)

    fake: Optional[FakeDeepSeek] = None
    if os.environ.get("DEEPSEEK_API_KEY"):
        client = dp.DeepSeekClient()  # DEEPSEEK_API_KEY, DEEPSEEK_BASE_URL, DEEPSEEK_MODEL
    else:
        print("DEEPSEEK_API_KEY is not set: answering with a local FakeDeepSeek", file=out)
        fake = FakeDeepSeek(latency=OFFLINE_LATENCY, seed=1).start()
        client = dp.DeepSeekClient(api_key="sk-offline-example", base_url=fake.base_url)
    input_path = args.input or write_sample(tempfile.mkdtemp(prefix="deepseek-batch-"))
    output_path = args.output or os.path.splitext(input_path)[0] + ".results.jsonl"
    try:
        failed = run(client, input_path, output_path, workers=args.workers, out=out)
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to finish {output_path}", file=out)
        return 130
    finally:
        client.close()
        if fake is not None:
            fake.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
