"""``deepseek-pool chat``: stream one answer to the terminal, the reasoning apart and first."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List

from ..batch.progress import Tally, format_cost
from ..errors import ConfigurationError, DeepSeekError
from .console import EXIT_FAILED, EXIT_OK, CommandFailed, is_tty
from .credentials import client_from_args


def chat_command(args: argparse.Namespace, command_line: str) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise CommandFailed("the prompt is empty")
    client = client_from_args(args)
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
    color = is_tty(out) and not os.environ.get("NO_COLOR")
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
        raise CommandFailed(str(err)) from None
    except DeepSeekError as err:
        out.write("\n" if section else "")
        raise CommandFailed(str(err), EXIT_FAILED) from None
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
