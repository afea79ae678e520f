"""Django + deepseek_pool: the pool is built when the app is ready and closed at shutdown.

Run it (``pip install django``, or ``pip install -e '.[examples]'`` in this repository)::

    python examples/django_views.py                          # offline: a local FakeDeepSeek answers
    DEEPSEEK_API_KEY=sk-... python examples/django_views.py  # the real API

then::

    curl 'http://127.0.0.1:8000/ideas?topic=tea&n=5'
    curl -N 'http://127.0.0.1:8000/stream?prompt=Why+is+the+sky+blue%3F'

This one file is a whole Django app (its ``AppConfig``, views and URLs); its settings are in
``django_settings.py`` beside it. In a project, put :class:`DeepSeekConfig` in your app's
``apps.py``, the views in ``views.py``, and list the app in ``INSTALLED_APPS``.

Why ``AppConfig.ready()``: it runs once per process, after settings are loaded and before
the first request, so every request of the process shares one pool (its threads, its
connections, its rate limits). With several worker processes (gunicorn ``--workers``),
each builds its own. Django has no shutdown signal, so the pool is closed by ``atexit``,
which runs when ``runserver``, gunicorn or uWSGI stop a process normally.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import os
import sys
from typing import Any, Dict, List, Optional, cast

from django.apps import AppConfig, apps
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path

import deepseek_pool as dp
from deepseek_pool.contrib.relay import client_socket, relay_sse
from deepseek_pool.testing import FakeDeepSeek

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

    def __init__(self, *, max_workers: int) -> None:
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


class DeepSeekConfig(AppConfig):
    """Builds the process-wide pool at ready-time; ``settings.DEEPSEEK_MAX_WORKERS`` sizes it."""

    name = "django_views"
    backend: DeepSeekBackend

    def ready(self) -> None:
        self.backend = DeepSeekBackend(max_workers=getattr(settings, "DEEPSEEK_MAX_WORKERS", 32))
        atexit.register(self.backend.close)


def pool() -> dp.DeepSeekPool:
    config = cast(DeepSeekConfig, apps.get_app_config("django_views"))
    return config.backend.pool


def ideas(request: HttpRequest) -> HttpResponse:
    """Ask for ``n`` ideas at once: n concurrent calls, one answer in about one call's time."""
    topic = request.GET.get("topic", "tea")
    try:
        n = int(request.GET.get("n", "5"))
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_FAN_OUT:
        return JsonResponse({"error": f"n must be between 1 and {MAX_FAN_OUT}"}, status=400)
    prompts = [f"Give idea {i + 1} of {n} for a blog post about {topic}, in one sentence." for i in range(n)]
    futures = [pool().submit(prompt, thinking=False, max_tokens=200) for prompt in prompts]
    # Bound the view: whatever has not finished in time is reported, not waited for.
    _, late = cf.wait(futures, timeout=VIEW_TIMEOUT)
    answers: List[Dict[str, Any]] = []
    for prompt, future in zip(prompts, futures):
        if future in late:
            pool().abort(future)  # not started: dropped; running: its connection broken, unbilled from here
            answers.append({"prompt": prompt, "error": "timed out"})
            continue
        error = future.exception()
        if error is not None:
            answers.append({"prompt": prompt, "error": f"{type(error).__name__}: {error}"})
        else:
            answers.append({"prompt": prompt, "answer": future.result().content})
    ok = sum("answer" in a for a in answers)
    return JsonResponse({"topic": topic, "ok": ok, "answers": answers}, status=200 if ok else 502)


def stream(request: HttpRequest) -> HttpResponse:
    """Relay one answer token by token as server-sent events (reasoning first, then content).

    While DeepSeek thinks without sending, a ``: keep-alive`` comment goes out every
    KEEPALIVE seconds, so proxies and browsers keep the response open. Django closes the
    relay when the response ends or the server's write to a browser that left fails: the
    relay then aborts the DeepSeek call (no more tokens generated or billed).
    """
    prompt = request.GET.get("prompt", "Why is the sky blue?")
    # The thread serving this request relays the stream itself, so it uses the shared
    # (thread-safe) client directly; the pool's threads are for fan-out.
    try:
        chunks = pool().client.chat_stream(prompt)
    except dp.DeepSeekError as err:  # 401, 402, 429 after retries... before any byte is sent
        return JsonResponse({"error": f"{type(err).__name__}: {err}"}, status=502)
    # With the client's socket (gunicorn and Werkzeug show it) the relay also notices a
    # browser that left during a silence, without waiting for a write to fail.
    events = relay_sse(chunks, keepalive=KEEPALIVE, peer=client_socket(request.META))
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    return response


urlpatterns = [
    path("ideas", ideas),
    path("stream", stream),
]


if __name__ == "__main__":
    # Behaves like manage.py; with no arguments it serves on 127.0.0.1:8000. --noreload
    # keeps one process, so one pool (the autoreloader would run a second process).
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line([sys.argv[0], *(sys.argv[1:] or ["runserver", "--noreload", "127.0.0.1:8000"])])
