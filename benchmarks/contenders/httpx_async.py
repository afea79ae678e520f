"""httpx: one ``AsyncClient`` (pool limits set to C) + ``asyncio.gather`` under a semaphore of C."""

from __future__ import annotations

import asyncio
import time
from typing import List, Optional, Tuple

import httpx

from benchmarks import protocol
from benchmarks.contenders import TIMEOUT, Outcome, Spec


async def _run(spec: Spec, outcome: Outcome) -> None:
    url = spec.base_url + "/chat/completions"
    limits = httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency)
    headers = {"Authorization": f"Bearer {protocol.API_KEY}"}
    semaphore = asyncio.Semaphore(spec.concurrency)
    stream = spec.stream
    context = spec.ssl_context()
    verify = context if context is not None else True
    async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT, headers=headers, verify=verify) as client:

        async def call(i: int) -> Tuple[int, Optional[str], Optional[str], float, int]:
            async with semaphore:
                started = time.perf_counter()
                try:
                    if not stream:
                        response = await client.post(url, json=protocol.chat_body(i))
                        if response.status_code != 200:
                            return i, None, f"HTTP {response.status_code}", 0.0, 0
                        return i, response.json()["choices"][0]["message"]["content"], None, 0.0, 0
                    parts: List[str] = []
                    first = 0.0
                    async with client.stream("POST", url, json=protocol.chat_body(i, True)) as response:
                        if response.status_code != 200:
                            return i, None, f"HTTP {response.status_code}", 0.0, 0
                        async for line in response.aiter_lines():
                            piece = protocol.sse_content(line.encode())
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
