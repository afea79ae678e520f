"""The call path's promises at its edges, each as the reproduction that once broke it.

The fault matrix (test_fault_matrix.py) checks the invariants over every fault and entry
point; these tests pin the specific seams: deadlines across Retry-After sleeps and limiter
waits, aborts that must touch only their own call, the pool learning every status, the
pool's connection budget, and the API key that must never travel in an error.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, List

import pytest
import requests
import urllib3.connection
from requests.adapters import HTTPAdapter

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek

from .rawserver import RawServer, respond, script, sequence

KEY = "sk-SECRET-0123456789"
#: DeepSeek's 429 when the account's concurrency cap is reached (it names the cap).
CAP_429 = json.dumps({"error": {"message": "concurrency limit of 10 based on your remaining balance"}}).encode()
OK_BODY = json.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "model": "deepseek-flash",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


def ok() -> bytes:
    return respond(200, OK_BODY)


def fast_retry(total: int = 2) -> dp.DeepSeekRetry:
    return dp.DeepSeekRetry(total, backoff_factor=0.02, backoff_jitter=0)


def client_for(url: str, **kwargs: Any) -> dp.DeepSeekClient:
    kwargs.setdefault("max_retries", fast_retry())
    return dp.DeepSeekClient(KEY, base_url=url, **kwargs)


def prompt_of(request: bytes) -> str:
    body = json.loads(request.split(b"\r\n\r\n", 1)[1])
    return str(body["messages"][-1]["content"])


# -- deadlines -----------------------------------------------------------------------------


def test_each_attempt_has_its_own_deadline_even_after_a_retry_after_sleep() -> None:
    """timeout=1.5; a 503 asking for 1 s, then a 200 that takes 1 s: the good answer is kept."""
    server = RawServer(
        sequence(
            script([respond(503, b"{}", {"Retry-After": "1"})], close=False),
            script([("sleep", 1.0), ok()], close=False),
        )
    )
    with server:
        client = client_for(server.url, timeout=dp.Timeout(1.5))
        completion = client.chat("x")
    assert completion.content == "hi"
    assert server.requests == 2


def test_call_timeout_bounds_a_wait_for_another_pools_cool_down() -> None:
    """Pool A's 429 asks for 8 s; pool B's call with call_timeout=1 ends in time, unsent."""
    server = RawServer(script([respond(429, CAP_429, {"Retry-After": "8"})], close=False))
    limiter = dp.Limiter(max_in_flight=10)
    with server:
        pool_a = dp.DeepSeekPool(client_for(server.url, max_retries=0), limiter=limiter)
        pool_b = dp.DeepSeekPool(client_for(server.url, call_timeout=1.0), limiter=limiter)
        with pool_a, pool_b:
            with pytest.raises(dp.RateLimitError):
                pool_a.submit("a").result(timeout=5)  # its last (only) attempt: the cool-down starts anyway
            assert limiter.stats.cool_downs == 1
            start = time.monotonic()
            with pytest.raises(dp.APITimeoutError, match="call_timeout"):
                pool_b.submit("b").result(timeout=5)
            assert time.monotonic() - start < 1.5
    assert server.requests == 1


def test_call_timeout_bounds_a_retry_held_back_by_the_cool_down() -> None:
    """The retry waits for the cool-down; when that would pass call_timeout, the call ends now."""
    server = RawServer(script([respond(429, CAP_429, {"Retry-After": "5"})], close=False))
    with server, dp.DeepSeekPool(client_for(server.url, call_timeout=1.0)) as pool:
        start = time.monotonic()
        result = pool.map(["a"])[0]
        assert time.monotonic() - start < 1.5
    assert isinstance(result.error, (dp.RateLimitError, dp.APITimeoutError))
    assert server.requests == 1


# -- aborts --------------------------------------------------------------------------------


def test_an_abort_breaks_only_the_connection_its_call_holds_now() -> None:
    """Call A waits to retry after a 503 (its connection back in the pool); call B reuses that
    connection; aborting A must not break B."""
    seen: List[str] = []
    b_started = threading.Event()

    def handler(conn: socket.socket, request: bytes) -> bool:
        prompt = prompt_of(request)
        seen.append(prompt)
        if prompt == "a":
            conn.sendall(respond(503, b"{}", {"Retry-After": "2"}))
        else:
            b_started.set()
            time.sleep(0.5)
            conn.sendall(ok())
        return False

    in_backoff = threading.Event()

    class Waiting(dp.CallControl):
        def wait(self, delay: float, deadline: float) -> None:
            in_backoff.set()  # the 503 was read: A's connection is back in the pool
            super().wait(delay, deadline)

    server = RawServer(handler)
    with server, ThreadPoolExecutor(2) as executor:
        client = client_for(server.url, pool_maxsize=1)
        control = Waiting()
        a = executor.submit(client.chat, "a", control=control)
        assert in_backoff.wait(5)
        b = executor.submit(client.chat, "b")
        assert b_started.wait(5)
        control.handle.abort()
        assert b.result(timeout=5).content == "hi"
        with pytest.raises(dp.APIConnectionError, match="cancelled"):
            a.result(timeout=1)  # the abort also ends its wait before the retry
    assert seen == ["a", "b"]  # B was not broken and sent again; A was not retried
    assert server.connections == 1


def test_an_abort_that_lands_while_connecting_stops_the_request_before_it_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    control = dp.CallControl()
    real_new_conn = urllib3.connection.HTTPConnection._new_conn

    def slow_connect(self: Any) -> Any:
        sock = real_new_conn(self)
        control.handle.abort()  # another thread aborts while the socket is being opened
        return sock

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "_new_conn", slow_connect)
    server = RawServer(script([ok()], close=False))
    with server:
        with pytest.raises(dp.APIConnectionError, match="cancelled"):
            client_for(server.url).chat("x", control=control)
        time.sleep(0.1)
    assert server.requests == 0


# -- the pool hears every status ------------------------------------------------------------


def test_a_429_on_the_last_attempt_still_cools_the_pool_down() -> None:
    server = RawServer(script([respond(429, CAP_429, {"Retry-After": "1"})], close=False))
    with server, dp.DeepSeekPool(client_for(server.url, max_retries=0)) as pool:
        with pytest.raises(dp.RateLimitError):
            pool.submit("x").result(timeout=5)
        stats = pool.limiter.stats
        assert (stats.cool_downs, stats.cap) == (1, 10)
        assert stats.cooling_for > 0.5


@pytest.mark.parametrize("status, error", [(401, dp.AuthenticationError), (402, dp.InsufficientBalanceError)])
def test_a_fatal_status_on_a_retry_attempt_stops_the_pool(status: int, error: type) -> None:
    """A 503, then a 401/402 on the retry: the pool stops; later calls fail unsent."""
    server = RawServer(sequence(script([respond(503, b"{}")], close=False), script([respond(status, b"{}")])))
    with server, dp.DeepSeekPool(client_for(server.url), max_workers=1) as pool:
        results = pool.map(["first", "second", "third"])
    assert [type(r.error) for r in results] == [error, error, error]
    assert "not sent" in str(results[1].error) and "not sent" in str(results[2].error)
    assert pool.stopped_by == status
    assert server.requests == 2  # the 503 and the fatal answer; nothing after


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "1e309", "garbage"])
def test_a_nonsense_retry_after_ms_is_ignored_in_a_pool(value: str) -> None:
    server = RawServer(sequence(script([respond(429, b"{}", {"retry-after-ms": value})], close=False), script([ok()])))
    with server, dp.DeepSeekPool(client_for(server.url)) as pool:
        start = time.monotonic()
        result = pool.map(["x"])[0]
    assert result.ok, result.error
    assert time.monotonic() - start < 3.0
    assert server.requests == 2


def test_a_pool_of_64_finds_and_holds_a_cap_of_8() -> None:
    """DeepSeek names its cap in the 429; the pool lowers its own to it and queues retries."""
    with FakeDeepSeek(max_concurrency=8, latency=0.02) as fake:
        with dp.DeepSeekPool(client_for(fake.base_url, max_retries=fast_retry(3)), max_workers=64) as pool:
            results = pool.map(f"q{i}" for i in range(1000))
        assert all(r.ok for r in results), next(r.error for r in results if not r.ok)
        assert pool.limiter.stats.cap == 8
        rejected = fake.stats.by_status.get(429, 0)
        assert rejected <= 0.1 * fake.stats.requests, (rejected, fake.stats.requests)


# -- the connection pool ---------------------------------------------------------------------


def test_pools_sharing_a_client_add_up_their_workers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="urllib3")
    with FakeDeepSeek(latency=0.2) as fake:
        client = dp.DeepSeekClient(KEY, base_url=fake.base_url)
        with dp.DeepSeekPool(client, max_workers=40) as one, dp.DeepSeekPool(client, max_workers=40) as two:
            assert client.pool_maxsize == 80
            first = [one.submit(f"a{i}") for i in range(40)]
            second = [two.submit(f"b{i}") for i in range(40)]
            for future in first + second:
                future.result(timeout=20)
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


def test_a_users_own_adapter_keeps_its_pool_and_still_gets_the_clients_retries(fake_deepseek: FakeDeepSeek) -> None:
    session = requests.Session()
    adapter = HTTPAdapter(pool_maxsize=3)
    session.mount(fake_deepseek.base_url, adapter)
    client = dp.DeepSeekClient(KEY, base_url=fake_deepseek.base_url, session=session, max_retries=fast_retry())
    fake_deepseek.script("503", "ok")
    assert client.chat("x").content == FakeDeepSeek.answer_for("x")
    assert fake_deepseek.stats.requests == 2
    assert session.get_adapter(fake_deepseek.base_url) is adapter
    assert adapter._pool_maxsize == 3  # type: ignore[attr-defined]


def test_a_users_adapter_that_retries_by_itself_is_refused_at_construction() -> None:
    session = requests.Session()
    session.mount("http://127.0.0.1:9", HTTPAdapter(max_retries=3))
    with pytest.raises(dp.ConfigurationError, match="retries by itself"):
        dp.DeepSeekClient(KEY, base_url="http://127.0.0.1:9", session=session)


def test_stats_are_consistent_after_leaving_a_loop_early() -> None:
    with FakeDeepSeek(latency=0.3) as fake, dp.DeepSeekPool(client_for(fake.base_url), max_workers=4) as pool:
        for _ in pool.as_completed(f"q{i}" for i in range(50)):
            break
        stats = pool.stats
        assert stats.in_flight == 0
        assert stats.submitted == stats.done + stats.cancelled
        assert pool.limiter.stats.in_flight == 0


# -- the key -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sk-€abc123", "sk-abc\x01def", "sk-abc\ndef", "sk-abc def", "sk-\x7fabc"])
def test_a_key_that_cannot_be_a_header_is_refused_without_quoting_it(key: str) -> None:
    with pytest.raises(dp.ConfigurationError) as info:
        dp.DeepSeekClient(key, base_url="http://127.0.0.1:9")
    text = str(info.value) + repr(info.value)
    assert "position" in text
    assert key not in text and key.strip() not in text
    assert "abc" not in text  # no part of the key either


def test_a_header_value_that_cannot_be_sent_is_refused_naming_the_header() -> None:
    with pytest.raises(dp.ConfigurationError, match="X-Team"):
        dp.DeepSeekClient(KEY, base_url="http://127.0.0.1:9", headers={"X-Team": "caf\u00e9\u20ac"})


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    link: Any = err
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def test_no_error_carries_the_key_even_when_a_library_below_quotes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """http.client quotes the header value in a UnicodeEncodeError; a broken adapter may put
    the request in its message. Whatever goes wrong, the key does not come out."""
    real_putheader = urllib3.connection.HTTPConnection.putheader

    def putheader(self: Any, header: str, *values: Any) -> None:
        if header == "Authorization":
            value = str(values[0])
            raise UnicodeEncodeError("latin-1", value, 0, 1, f"cannot encode {value}")
        real_putheader(self, header, *values)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "putheader", putheader)
    server = RawServer(script([ok()], close=False))
    with server, pytest.raises(dp.DeepSeekError) as info:
        client_for(server.url, max_retries=0).chat("x")
    for link in _chain(info.value):
        assert KEY not in str(link) and KEY not in repr(link) and KEY not in repr(link.args)
        assert KEY.encode() not in pickle.dumps(link)
    assert "<api key>" in str(info.value)


def test_key_never_in_an_error_from_a_failing_adapter() -> None:
    class Leaky(HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            raise ValueError(f"could not send {dict(request.headers)}")

    session = requests.Session()
    session.mount("http://127.0.0.1:9", Leaky())
    client = dp.DeepSeekClient(KEY, base_url="http://127.0.0.1:9", session=session, max_retries=0)
    with pytest.raises(dp.APIConnectionError) as info:
        client.chat("x")
    for link in _chain(info.value):
        assert KEY not in repr(link.args) and KEY.encode() not in pickle.dumps(link)
