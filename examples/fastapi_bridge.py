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
other requests.

A client that hangs up must stop the call, or DeepSeek keeps generating (and billing) for
nobody. An ASGI server does not cancel an endpoint when its client leaves, and cancelling
``wrap_future`` drops only a call that has not started. So the endpoints await through
``deepseek_pool.contrib.relay``: :func:`await_call` watches the request's ``receive`` for
``http.disconnect`` and aborts the call (``pool.abort``: its connection broken) when the
client leaves; ``/stream`` opens its stream the same way (:func:`open_stream`) and relays
it with :func:`arelay_sse`, which Starlette cancels when the client disconnects, and which
sends ``: keep-alive`` comments while DeepSeek thinks. The same code works in a Django
async view.

Never call ``client.chat()`` directly inside ``async def``: it blocks the whole loop for
the seconds DeepSeek takes.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict, List, Optional

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

import deepseek_pool as dp
from deepseek_pool.contrib.relay import ClientDisconnected, arelay_sse, await_call, open_stream
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
#: Seconds without a token after which /stream sends a keep-alive comment (``RELAY_KEEPALIVE``).
KEEPALIVE = float(os.environ.get("RELAY_KEEPALIVE", "15"))


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


async def ask_deepseek(request: Request, prompt: str, **params: Any) -> dp.ChatCompletion:
    """Run one call on the pool's threads and await it without blocking the loop.

    If the client disconnects first, the call is aborted and ClientDisconnected raised; if
    CALL_TIMEOUT passes first, it is aborted too (``wait_for`` cancels the await).
    """
    pool = pool_of(request)
    future = pool.submit(prompt, **params)
    return await asyncio.wait_for(await_call(pool, future, request.receive), CALL_TIMEOUT)


@app.exception_handler(dp.DeepSeekError)
async def deepseek_failed(request: Request, err: dp.DeepSeekError) -> JSONResponse:
    """A DeepSeek failure is a bad gateway for our own clients, whatever its kind."""
    return JSONResponse({"error": f"{type(err).__name__}: {err}"}, status_code=502)


@app.exception_handler(ClientDisconnected)
async def client_left(request: Request, err: ClientDisconnected) -> Response:
    """Nobody is listening any more: the call was aborted; 499 is what nginx logs for this."""
    return Response(status_code=499)


@app.exception_handler(asyncio.TimeoutError)
async def deepseek_too_slow(request: Request, err: asyncio.TimeoutError) -> JSONResponse:
    return JSONResponse({"error": f"DeepSeek did not answer within {CALL_TIMEOUT} s"}, status_code=504)


@app.get("/health")
async def health(request: Request) -> Dict[str, Any]:
    """Answers at once, however many DeepSeek calls are in flight."""
    return {"status": "ok", "in_flight": pool_of(request).stats.in_flight}


@app.get("/ask")
async def ask(request: Request, prompt: str = Query("Hello!", min_length=1)) -> Dict[str, Any]:
    completion = await ask_deepseek(request, prompt)
    return {"prompt": prompt, "answer": completion.content, "model": completion.model}


@app.get("/ideas")
async def ideas(request: Request, topic: str = "tea", n: int = Query(5, ge=1, le=MAX_FAN_OUT)) -> Dict[str, Any]:
    """n concurrent calls; one failure is reported in its slot, not raised for all."""
    prompts = [f"Give idea {i + 1} of {n} for a blog post about {topic}, in one sentence." for i in range(n)]
    outcomes = await asyncio.gather(
        *(ask_deepseek(request, p, thinking=False, max_tokens=200) for p in prompts), return_exceptions=True
    )
    if any(isinstance(outcome, ClientDisconnected) for outcome in outcomes):
        raise ClientDisconnected("the client disconnected; its calls were aborted")
    answers: List[Dict[str, Any]] = []
    for prompt, outcome in zip(prompts, outcomes):
        if isinstance(outcome, BaseException):
            answers.append({"prompt": prompt, "error": f"{type(outcome).__name__}: {outcome}"})
        else:
            answers.append({"prompt": prompt, "answer": outcome.content})
    return {"topic": topic, "ok": sum("answer" in a for a in answers), "answers": answers}


@app.get("/stream")
async def stream(request: Request, prompt: str = Query("Why is the sky blue?", min_length=1)) -> StreamingResponse:
    """Relay one answer as server-sent events: reasoning first, then content, then done."""
    # Opening the stream waits for DeepSeek's response head: on a thread, aborted if the
    # client leaves meanwhile. Errors it raises (401, 429 after retries...) still become a
    # proper status through the handler.
    chunks = await open_stream(pool_of(request).client, prompt, receive=request.receive)
    # Starlette cancels the relay when the client disconnects: the call is aborted then.
    return StreamingResponse(
        arelay_sse(chunks, keepalive=KEEPALIVE), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
