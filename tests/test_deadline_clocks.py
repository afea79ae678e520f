"""Deadlines that measure the right thing (issue 22, items 4 to 6).

* the read timeout measures the server's silence, not the time the caller spends between chunks;
* ``call_timeout`` runs from ``pool.submit`` (time queued behind a busy pool counts) and bounds name
  resolution too;
* ``data: [DONE]`` ends a stream within about 0.1 s whatever the framing and ``Connection`` header;
* a timeout is always an :class:`~deepseek_pool.APITimeoutError`, so ``retry_timeouts=False`` never
  sends a billed request twice.

Every call runs in a thread joined with a timeout, so a call that hangs fails the test instead.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, List, Optional

import pytest
import requests

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek

from .proxies import FaultProxy, Toxic, address_of, drive

KEY = "sk-clocks-test-key"
PROMPT = "count the seconds"


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``'s result (or its exception, raised here); fail if it is still running after ``seconds``."""
    box: List[Any] = []

    def run() -> None:
        try:
            box.append(("ok", call()))
        except BaseException as err:
            box.append(("error", err))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"the call was still running after {seconds} s")
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


# --- the read timeout measures the server, not the consumer ------------------------------------------


SLOW = 0.25  # the consumer's time per chunk: longer than the read timeout below
READ = 0.15


@pytest.mark.parametrize("entry", ["chat_on_chunk", "chat_stream"])
def test_a_slow_consumer_does_not_time_out_a_steady_server(entry: str) -> None:
    with FakeDeepSeek(stream_chunk_delay=0.05, chunks_per_answer=4) as fake:
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url, max_retries=0, timeout=dp.Timeout(20, read=READ))

        def consume() -> str:
            if entry == "chat_on_chunk":
                return client.chat(PROMPT, stream=True, on_chunk=lambda chunk: time.sleep(SLOW)).content or ""
            parts = []
            with client.chat_stream(PROMPT) as stream:
                for chunk in stream:
                    time.sleep(SLOW)
                    parts.append(chunk.content or "")
            return "".join(parts)

        assert within(10, consume) == FakeDeepSeek.answer_for(PROMPT)
        client.close()


def test_control_plain_requests_lets_a_slow_consumer_finish() -> None:
    """What the client must match: requests' read timeout is per socket read, the consumer's time aside."""
    with FakeDeepSeek(stream_chunk_delay=0.05, chunks_per_answer=4) as fake:
        body = {"model": "deepseek-flash", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
        headers = {"Authorization": f"Bearer {KEY}"}

        def consume() -> int:
            with requests.post(
                fake.base_url + "/chat/completions", json=body, headers=headers, stream=True, timeout=(5, READ)
            ) as response:
                lines = 0
                for line in response.iter_lines():
                    if line:
                        time.sleep(SLOW)
                        lines += 1
                return lines

        assert within(10, consume) >= 4


# --- call_timeout runs from submit, and bounds name resolution -------------------------------------------


def test_call_timeout_counts_the_time_queued_behind_a_busy_pool() -> None:
    with FakeDeepSeek(latency=0.8) as fake:
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url, max_retries=0, call_timeout=1.0)
        with dp.DeepSeekPool(client, max_workers=1) as pool:
            submitted, finished = [], [0.0] * 4
            futures = []
            for i in range(4):
                submitted.append(time.monotonic())
                future = pool.submit(PROMPT)
                future.add_done_callback(lambda _, i=i: finished.__setitem__(i, time.monotonic()))
                futures.append(future)
            errors = []
            for future in futures:
                errors.append(future.exception(timeout=10))
        assert isinstance(errors[3], dp.APITimeoutError), errors[3]
        late = [
            f"call {i + 1}: {finished[i] - submitted[i]:.2f} s" for i in range(4) if finished[i] - submitted[i] > 1.3
        ]
        assert not late, f"answered more than call_timeout (1.0 s) + 0.3 s after submit: {', '.join(late)}"
        client.close()


def test_call_timeout_bounds_name_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real = socket.getaddrinfo

    def slow_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow-dns.invalid":
            release.wait(3.0)  # a resolver that takes 3 s
            return real("127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    with FakeDeepSeek() as fake:
        port = address_of(fake.base_url)[1]
        client = dp.DeepSeekClient(KEY, base_url=f"http://slow-dns.invalid:{port}", max_retries=0, call_timeout=1.0)
        start = time.monotonic()
        try:
            with pytest.raises(dp.APITimeoutError):
                within(5, lambda: client.chat(PROMPT))
            assert time.monotonic() - start < 1.0 + 0.3
        finally:
            release.set()
            client.close()


# --- [DONE] ends a stream, however the body is framed ----------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("hold_after_done", id="chunked-keep-alive"),
        pytest.param(
            "hold_after_done_close",
            id="connection-close",
        ),
    ],
)
@pytest.mark.parametrize("entry", ["chat_stream", "chat_stream_true", "chat_on_chunk"])
def test_done_ends_a_stream_held_open_at_once(fault: str, entry: str) -> None:
    with FakeDeepSeek() as fake:
        fake.script(fault)
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url, max_retries=0, timeout=5)
        start = time.monotonic()
        assert within(1.5, lambda: drive(client, entry, PROMPT)) == FakeDeepSeek.answer_for(PROMPT)
        took = time.monotonic() - start
        client.close()
    assert took < 0.3, f"the stream ended {took:.2f} s after it began, though [DONE] came at once"


# --- a timeout is always a timeout ---------------------------------------------------------------------

SILENT = 30


def test_every_silent_stream_is_a_timeout_and_sent_once() -> None:
    with FakeDeepSeek() as fake, FaultProxy(address_of(fake.base_url), Toxic("stall_after_head")) as front:
        client = dp.DeepSeekClient(
            KEY, base_url=front.url, max_retries=2, retry_timeouts=False, timeout=dp.Timeout(10, read=0.3)
        )
        errors: List[Optional[BaseException]] = [None] * SILENT

        def one(i: int) -> None:
            try:
                client.chat(PROMPT, stream=True, on_chunk=lambda chunk: None)
            except BaseException as err:
                errors[i] = err

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(SILENT)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert not any(thread.is_alive() for thread in threads), "a silent stream hung"
        requests_sent = fake.stats.requests
        client.close()
    wrong = [f"{type(err).__name__}: {err}" for err in errors if not isinstance(err, dp.APITimeoutError)]
    assert not wrong, f"{len(wrong)} of {SILENT} silent streams were not timeouts: {wrong[:3]}"
    assert requests_sent == SILENT, "with retry_timeouts=False a request was sent twice"
