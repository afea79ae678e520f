"""Flask + deepseek_pool: fan one request out to N concurrent DeepSeek calls, and relay a stream.

Run it (``pip install flask``, or ``pip install -e '.[examples]'`` in this repository)::

    python examples/flask_app.py                          # offline: a local FakeDeepSeek answers
    DEEPSEEK_API_KEY=sk-... python examples/flask_app.py  # the real API

then open http://127.0.0.1:5000/ (``PORT=...`` changes the port) or::

    curl 'http://127.0.0.1:5000/ideas?topic=tea&n=5'
    curl -N 'http://127.0.0.1:5000/stream?prompt=Why+is+the+sky+blue%3F'

One :class:`~deepseek_pool.DeepSeekPool` serves the whole process. It is built once, when
the app is created, never per request: every request shares its threads, its connection
pool and its rate limits, and the calls of one request run at the same time. Flask's own
threaded server, gunicorn's ``gthread`` workers and uWSGI threads all work this way. With
several worker *processes*, each process builds its own pool when it creates the app.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import os
from typing import Any, Dict, List, Optional

from flask import Flask, Response, current_app, jsonify, request

import deepseek_pool as dp
from deepseek_pool.contrib.relay import client_socket, relay_sse
from deepseek_pool.testing import FakeDeepSeek

#: Threads making DeepSeek calls for the whole process; calls beyond this wait their turn.
MAX_WORKERS = 32
#: Most calls one request may fan out to.
MAX_FAN_OUT = 20
#: Seconds a fan-out view waits before answering with what it has.
VIEW_TIMEOUT = 60.0
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


def backend() -> DeepSeekBackend:
    backend: DeepSeekBackend = current_app.extensions["deepseek"]
    return backend


def create_app() -> Flask:
    """Build the app and, once for the process, its DeepSeek pool (closed at exit)."""
    app = Flask(__name__)
    deepseek = DeepSeekBackend()
    app.extensions["deepseek"] = deepseek
    atexit.register(deepseek.close)

    @app.get("/ideas")
    def ideas() -> Any:
        """Ask for ``n`` ideas at once: n concurrent calls, one answer in about one call's time."""
        topic = request.args.get("topic", "tea")
        n = request.args.get("n", default=5, type=int)
        if not 1 <= n <= MAX_FAN_OUT:
            return jsonify(error=f"n must be between 1 and {MAX_FAN_OUT}"), 400
        prompts = [f"Give idea {i + 1} of {n} for a blog post about {topic}, in one sentence." for i in range(n)]
        pool = backend().pool
        futures = [pool.submit(prompt, thinking=False, max_tokens=200) for prompt in prompts]
        # Bound the view: whatever has not finished in time is reported, not waited for.
        _, late = cf.wait(futures, timeout=VIEW_TIMEOUT)
        answers: List[Dict[str, Any]] = []
        for prompt, future in zip(prompts, futures):
            if future in late:
                pool.abort(future)  # not started: dropped; running: its connection broken, unbilled from here
                answers.append({"prompt": prompt, "error": "timed out"})
                continue
            error = future.exception()
            if error is not None:
                answers.append({"prompt": prompt, "error": f"{type(error).__name__}: {error}"})
            else:
                answers.append({"prompt": prompt, "answer": future.result().content})
        ok = sum("answer" in a for a in answers)
        return jsonify(topic=topic, ok=ok, answers=answers), (200 if ok else 502)

    @app.get("/stream")
    def stream() -> Any:
        """Relay one answer token by token as server-sent events (reasoning first, then content).

        While DeepSeek thinks without sending, a ``: keep-alive`` comment goes out every
        KEEPALIVE seconds, so proxies and browsers keep the response open. When the
        browser leaves, the server's next write fails and it closes the body: the relay
        then aborts the DeepSeek call (no more tokens generated or billed).
        """
        prompt = request.args.get("prompt", "Why is the sky blue?")
        # The web server's thread serving this request relays the stream itself, so it uses
        # the shared (thread-safe) client directly; the pool's threads are for fan-out.
        try:
            chunks = backend().pool.client.chat_stream(prompt)
        except dp.DeepSeekError as err:  # 401, 402, 429 after retries... before any byte is sent
            return jsonify(error=f"{type(err).__name__}: {err}"), 502
        # Flask's Response closes the relay when the response ends or the browser leaves,
        # even before the first token: that aborts the call unless it had ended. Given the
        # client's socket (gunicorn and Werkzeug show it), the relay also notices a browser
        # that left during a silence, without waiting for a write to fail.
        events = relay_sse(chunks, keepalive=KEEPALIVE, peer=client_socket(request.environ))
        return Response(events, mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/")
    def index() -> str:
        return PAGE

    return app


PAGE = """<!doctype html>
<title>deepseek_pool + Flask</title>
<form onsubmit="ask(); return false"><input id="q" size="60" value="Why is the sky blue?"> <button>Ask</button></form>
<pre id="thinking" style="color: grey; white-space: pre-wrap"></pre>
<pre id="answer" style="white-space: pre-wrap"></pre>
<script>
function ask() {
  thinking.textContent = answer.textContent = "";
  const source = new EventSource("/stream?prompt=" + encodeURIComponent(q.value));
  source.addEventListener("reasoning", e => thinking.textContent += JSON.parse(e.data));
  source.addEventListener("content", e => answer.textContent += JSON.parse(e.data));
  source.addEventListener("done", () => source.close());
  source.addEventListener("error", e => { source.close(); if (e.data) answer.textContent += JSON.parse(e.data); });
}
</script>
"""


if __name__ == "__main__":
    # threaded=True (the default): each request gets a thread, and they all share one pool.
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=True)
