"""``deepseek-pool demo``: the same prompts one by one, then through the pool, against a local FakeDeepSeek."""

from __future__ import annotations

import argparse
import sys
import time
from typing import List

from ..client import DeepSeekClient
from ..config import ENV_API_KEY
from ..models import DEFAULT_MODEL
from ..pool.pool import DeepSeekPool
from .console import EXIT_FAILED, EXIT_OK, PROG

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


def demo_command(args: argparse.Namespace, command_line: str) -> int:
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
