"""openai-python: one sync ``OpenAI`` client (its defaults, base_url at the server's ``/v1``) + threads."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple, cast

from openai import DefaultHttpxClient, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from benchmarks import protocol
from benchmarks.contenders import TIMEOUT, Outcome, Spec


def _messages(index: int) -> List[ChatCompletionMessageParam]:
    return cast(List[ChatCompletionMessageParam], protocol.messages_for(index))


def run(spec: Spec) -> Outcome:
    outcome = Outcome.empty(spec.n)
    context = spec.ssl_context()
    http_client = DefaultHttpxClient(verify=context) if context is not None else None
    client = OpenAI(api_key=protocol.API_KEY, base_url=spec.base_url + "/v1", timeout=TIMEOUT, http_client=http_client)
    stream = spec.stream

    def call(i: int) -> Tuple[int, Optional[str], Optional[str], float, int]:
        started = time.perf_counter()
        try:
            if not stream:
                completion = client.chat.completions.create(model=protocol.MODEL, messages=_messages(i))
                return i, completion.choices[0].message.content, None, 0.0, 0
            parts: List[str] = []
            first = 0.0
            events = client.chat.completions.create(
                model=protocol.MODEL,
                messages=_messages(i),
                stream=True,
            )
            with events:
                for chunk in events:
                    if chunk.choices:
                        piece = chunk.choices[0].delta.content
                        if piece:
                            if not parts:
                                first = time.perf_counter() - started
                            parts.append(piece)
            return i, "".join(parts), None, first, len(parts)
        except Exception as err:
            return i, None, type(err).__name__, 0.0, 0

    with ThreadPoolExecutor(spec.concurrency) as executor:
        for i, content, error, first, chunks in executor.map(call, range(spec.n)):
            outcome.contents[i] = content
            outcome.errors[i] = error
            if first:
                outcome.ttfc.append(first)
            outcome.chunks += chunks
    client.close()
    return outcome
