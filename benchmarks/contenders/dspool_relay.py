"""deepseek_pool read chunk by chunk: ``client.chat_stream`` in ``ThreadPoolExecutor(C)``, as a relay would.

Each thread reads its own stream and sees every chunk as it comes (a web handler relaying
tokens to its user); the ``deepseek_pool`` contender instead lets the pool fold the stream
into one answer (the shared stream reader). Streaming cells only.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

from benchmarks import protocol
from benchmarks.contenders import TIMEOUT, Outcome, Spec
from deepseek_pool import DeepSeekClient


def run(spec: Spec) -> Outcome:
    if not spec.stream:
        raise NotImplementedError("deepseek_pool_relay runs in the streaming cells only")
    outcome = Outcome.empty(spec.n)
    client = DeepSeekClient(protocol.API_KEY, base_url=spec.base_url, model=protocol.MODEL, timeout=TIMEOUT)
    client.ensure_pool_size(spec.concurrency)
    if spec.ca_file:
        client.session.verify = spec.ca_file

    def call(i: int) -> Tuple[int, Optional[str], Optional[str], float, int]:
        started = time.perf_counter()
        try:
            parts: List[str] = []
            first = 0.0
            with client.chat_stream(protocol.prompt_for(i)) as stream:
                for chunk in stream:
                    piece = chunk.content
                    if piece:
                        if not parts:
                            first = time.perf_counter() - started
                        parts.append(piece)
            return i, "".join(parts), None, first, len(parts)
        except Exception as err:
            return i, None, type(err).__name__, 0.0, 0

    with client, ThreadPoolExecutor(spec.concurrency) as executor:
        for i, content, error, first, chunks in executor.map(call, range(spec.n)):
            outcome.contents[i] = content
            outcome.errors[i] = error
            if first:
                outcome.ttfc.append(first)
            outcome.chunks += chunks
    return outcome
