"""FastAPI + deepseek_pool: async endpoints await the pool's futures; the event loop never blocks.

Run it (``pip install fastapi uvicorn``, or ``pip install -e '.[examples]'`` in this repository)::

    python examples/fastapi_bridge.py                          # offline: a local FakeDeepSeek answers
    DEEPSEEK_API_KEY=sk-... python examples/fastapi_bridge.py  # the real API

then (``PORT=...`` changes the port)::

    curl 'http://127.0.0.1:8000/ask?prompt=Hello'
    curl 'http://127.0.0.1:8000/ideas?topic=tea&n=5'
    curl -N 'http://127.0.0.1:8000/stream?prompt=Why+is+the+sky+blue%3F'
    curl 'http://127.0.0.1:8000/health'

The bridge is one line: ``await asyncio.wrap_future(pool.submit(...))``. ``submit`` returns
at once (the call runs on one of the pool's threads) and ``wrap_future`` turns its
``concurrent.futures.Future`` into an awaitable, so while DeepSeek thinks the loop serves
other requests. Cancelling the await (a client that hangs up, ``asyncio.wait_for``)
cancels the call if it has not started yet. The same code works in a Django async view.

Never call ``client.chat()`` directly inside ``async def``: it blocks the whole loop for
the seconds DeepSeek takes.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek

#: Threads making DeepSeek calls: the most calls in flight at once, across all requests.
MAX_WORKERS = 64
#: Most calls one request may fan out to.
MAX_FAN_OUT = 20
#: Seconds an endpoint waits for DeepSeek before answering 504.
CALL_TIMEOUT = 120.0
#: How the offline FakeDeepSeek paces its answers (the real API: seconds, then many small pieces).
OFFLINE_LATENCY = 0.3
OFFLINE_CHUNK_DELAY = 0.01


class DeepSeekBackend:
    """The process-wide pool, on the real API when ``DEEPSEEK_API_KEY`` is set, else on a local fake."""

    def __init__(self, *, max_workers: int = MAX_WORKERS) -> None:
        self.fake: Optional[FakeDeepSeek] = None
        if os.environ.get("DEEPSEEK_API_KEY"):
            client = dp.DeepSeekClient()  # DEEPSEEK_API_KEY, DEEPSEEK_BASE_URL, DEEPSEEK_MODEL
        else:
            self.fake = FakeDeepSeek(latency=OFFLINE_LATENCY, stream_chunk_delay=OFFLINE_CHUNK_DELAY).start()
            client = dp.DeepSeekClient(api_key="sk-offline-example", base_url=self.fake.base_url)
        self.pool = dp.DeepSeekPool(client, max_workers=max_workers)

    def close(self) -> None:
        """Let running calls finish, then close the connections (and the fake)."""
        self.pool.close()
        self.pool.client.close()
        if self.fake is not None:
            self.fake.stop()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build the pool when the server starts, close it when the server stops."""
    backend = DeepSeekBackend()
    app.state.deepseek = backend
    try:
        yield
    finally:
        # close() waits for running calls: do it off the loop.
        await asyncio.to_thread(backend.close)


app = FastAPI(lifespan=lifespan)


def pool_of(request: Request) -> dp.DeepSeekPool:
    pool: dp.DeepSeekPool = request.app.state.deepseek.pool
    return pool


async def ask_deepseek(pool: dp.DeepSeekPool, prompt: str, **params: Any) -> dp.ChatCompletion:
    """Run one call on the pool's threads and await it without blocking the loop."""
    return await asyncio.wait_for(asyncio.wrap_future(pool.submit(prompt, **params)), CALL_TIMEOUT)


@app.exception_handler(dp.DeepSeekError)
async def deepseek_failed(request: Request, err: dp.DeepSeekError) -> JSONResponse:
    """A DeepSeek failure is a bad gateway for our own clients, whatever its kind."""
    return JSONResponse({"error": f"{type(err).__name__}: {err}"}, status_code=502)


@app.exception_handler(asyncio.TimeoutError)
async def deepseek_too_slow(request: Request, err: asyncio.TimeoutError) -> JSONResponse:
    return JSONResponse({"error": f"DeepSeek did not answer within {CALL_TIMEOUT} s"}, status_code=504)


@app.get("/health")
async def health(request: Request) -> Dict[str, Any]:
    """Answers at once, however many DeepSeek calls are in flight."""
    return {"status": "ok", "in_flight": pool_of(request).stats.in_flight}


@app.get("/ask")
async def ask(request: Request, prompt: str = Query("Hello!", min_length=1)) -> Dict[str, Any]:
    completion = await ask_deepseek(pool_of(request), prompt)
    return {"prompt": prompt, "answer": completion.content, "model": completion.model}


@app.get("/ideas")
async def ideas(request: Request, topic: str = "tea", n: int = Query(5, ge=1, le=MAX_FAN_OUT)) -> Dict[str, Any]:
    """n concurrent calls; one failure is reported in its slot, not raised for all."""
    pool = pool_of(request)
    prompts = [f"Give idea {i + 1} of {n} for a blog post about {topic}, in one sentence." for i in range(n)]
    outcomes = await asyncio.gather(
        *(ask_deepseek(pool, p, thinking=False, max_tokens=200) for p in prompts), return_exceptions=True
    )
    answers: List[Dict[str, Any]] = []
    for prompt, outcome in zip(prompts, outcomes):
        if isinstance(outcome, BaseException):
            answers.append({"prompt": prompt, "error": f"{type(outcome).__name__}: {outcome}"})
        else:
            answers.append({"prompt": prompt, "answer": outcome.content})
    return {"topic": topic, "ok": sum("answer" in a for a in answers), "answers": answers}


@app.get("/stream")
async def stream(request: Request, prompt: str = Query("Why is the sky blue?", min_length=1)) -> StreamingResponse:
    """Relay one answer as plain text, token by token (reasoning is left out)."""
    client = pool_of(request).client
    # Opening the stream waits for DeepSeek's first bytes: do it on a thread. Errors it
    # raises (401, 429 after retries...) still become a proper status through the handler.
    chunks = await asyncio.to_thread(client.chat_stream, prompt)

    def tokens() -> Iterator[str]:
        with chunks:
            for chunk in chunks:
                if chunk.content:
                    yield chunk.content

    # Starlette reads a plain iterator on its thread pool, so each blocking read stays off the loop.
    return StreamingResponse(tokens(), media_type="text/plain; charset=utf-8")


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
