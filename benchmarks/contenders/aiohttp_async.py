"""aiohttp: one ``ClientSession`` (``TCPConnector(limit=C)``) + ``asyncio.gather``."""

from __future__ import annotations

import asyncio
import time
from typing import List, Optional, Tuple

import aiohttp

from benchmarks import protocol
from benchmarks.contenders import TIMEOUT, Outcome, Spec


async def _run(spec: Spec, outcome: Outcome) -> None:
    url = spec.base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {protocol.API_KEY}"}
    stream = spec.stream
    context = spec.ssl_context()
    connector = aiohttp.TCPConnector(limit=spec.concurrency, ssl=context if context is not None else True)
    # The semaphore only makes the time to first chunk start when the request can go
    # out (as for the threads); the connector's limit alone would give the same load.
    semaphore = asyncio.Semaphore(spec.concurrency)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:

        async def call(i: int) -> Tuple[int, Optional[str], Optional[str], float, int]:
            async with semaphore:
                started = time.perf_counter()
                try:
                    async with session.post(url, json=protocol.chat_body(i, stream)) as response:
                        if response.status != 200:
                            return i, None, f"HTTP {response.status}", 0.0, 0
                        if not stream:
                            data = await response.json()
                            return i, data["choices"][0]["message"]["content"], None, 0.0, 0
                        parts: List[str] = []
                        first = 0.0
                        async for line in response.content:
                            piece = protocol.sse_content(line)
                            if piece:
                                if not parts:
                                    first = time.perf_counter() - started
                                parts.append(piece)
                        return i, "".join(parts), None, first, len(parts)
                except Exception as err:
                    return i, None, type(err).__name__, 0.0, 0

        for i, content, error, first, chunks in await asyncio.gather(*(call(i) for i in range(spec.n))):
            outcome.contents[i] = content
            outcome.errors[i] = error
            if first:
                outcome.ttfc.append(first)
            outcome.chunks += chunks


def run(spec: Spec) -> Outcome:
    outcome = Outcome.empty(spec.n)
    asyncio.run(_run(spec, outcome))
    return outcome
