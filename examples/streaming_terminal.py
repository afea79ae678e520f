"""Stream one answer to the terminal: DeepSeek's reasoning first (dimmed), then the answer.

Run it::

    python examples/streaming_terminal.py                                 # offline: a local FakeDeepSeek
    DEEPSEEK_API_KEY=sk-... python examples/streaming_terminal.py "Why is the sky blue?"
    DEEPSEEK_API_KEY=sk-... python examples/streaming_terminal.py --no-thinking "Say hi"

Current DeepSeek models think before they answer: the stream sends ``reasoning_content``
pieces first, then ``content`` pieces, a few characters each. With
``stream_options={"include_usage": True}`` a last chunk carries the token counts. Ctrl-C
leaves the ``with`` block, which closes the connection at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence, TextIO

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek

DIM, RESET = "\033[2m", "\033[0m"
#: How the offline FakeDeepSeek paces its answer (the real API: seconds, then many small pieces).
OFFLINE_LATENCY = 0.3
OFFLINE_CHUNK_DELAY = 0.01


def stream_answer(client: dp.DeepSeekClient, prompt: str, *, thinking: bool, out: TextIO) -> dp.ChatCompletion:
    """Print the reasoning and the answer as they arrive; return the whole completion."""
    color = out.isatty()
    started = time.monotonic()
    first_token: Optional[float] = None
    section = ""
    with client.chat_stream(prompt, thinking=thinking, stream_options={"include_usage": True}) as stream:
        for chunk in stream:
            for kind, piece in (("thinking", chunk.reasoning_content), ("answer", chunk.content)):
                if not piece:
                    continue
                if first_token is None:
                    first_token = time.monotonic() - started
                if kind != section:  # a header each time the stream moves on to the next part
                    out.write(f"\n--- {kind} ---\n" if section else f"--- {kind} ---\n")
                    section = kind
                out.write(f"{DIM}{piece}{RESET}" if color and kind == "thinking" else piece)
                out.flush()
        completion = stream.completion()  # the pieces joined, with the usage of the last chunk
    usage = completion.usage
    tokens = "usage unknown"
    if usage is not None:
        tokens = f"{usage.prompt_tokens} tokens in, {usage.completion_tokens} out"
        if usage.reasoning_tokens:
            tokens += f" ({usage.reasoning_tokens} of them reasoning)"
    first = f"{first_token:.2f} s" if first_token is not None else "-"
    elapsed = time.monotonic() - started
    out.write(f"\n--- {completion.model}: {tokens}; first token after {first}, done after {elapsed:.2f} s\n")
    return completion


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("prompt", nargs="?", default="Why is the sky blue? Answer in two sentences.")
    parser.add_argument("--no-thinking", dest="thinking", action="store_false", help="answer without reasoning first")
    args = parser.parse_args(argv)

    fake: Optional[FakeDeepSeek] = None
    if os.environ.get("DEEPSEEK_API_KEY"):
        client = dp.DeepSeekClient()  # DEEPSEEK_API_KEY, DEEPSEEK_BASE_URL, DEEPSEEK_MODEL
    else:
        print("(DEEPSEEK_API_KEY is not set: a local FakeDeepSeek answers)", file=out)
        fake = FakeDeepSeek(latency=OFFLINE_LATENCY, stream_chunk_delay=OFFLINE_CHUNK_DELAY).start()
        client = dp.DeepSeekClient(api_key="sk-offline-example", base_url=fake.base_url)
    try:
        stream_answer(client, args.prompt, thinking=args.thinking, out=out)
    except KeyboardInterrupt:
        out.write("\n(interrupted)\n")
        return 130
    except dp.DeepSeekError as err:
        print(f"\nerror: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        client.close()
        if fake is not None:
            fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
