"""DeepSeekRetry as a value: parsing server-directed waits, backoff, and what it retries."""

from __future__ import annotations

import email.utils
import http.server
import inspect
import random
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import requests
import urllib3
from urllib3.exceptions import ConnectTimeoutError, InvalidHeader, MaxRetryError, ReadTimeoutError
from urllib3.response import HTTPResponse
from urllib3.util.retry import RequestHistory, Retry

from deepseek_pool import config
from deepseek_pool.wire.retry import DeepSeekRetry

POOL = urllib3.HTTPConnectionPool("example.invalid")
#: Retry-After values that are no usable number of seconds: they count as an absent header.
GARBAGE = ["nan", "NaN", "inf", "-inf", "Infinity", "-1", "-0.5", "+1", "", "   ", "1e3", "0x10", "\xb2", "1.5.2"]
GARBAGE += ["soon", "Mon, 32 Foo 2019 99:99:99 GMT"]


class _Response:
    def __init__(self, headers: Dict[str, str], status: int = 429) -> None:
        self.headers = headers
        self.status = status


def still(**kwargs: Any) -> DeepSeekRetry:
    """A policy without jitter, so backoffs are exact."""
    kwargs.setdefault("backoff_jitter", 0.0)
    return DeepSeekRetry(**kwargs)


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> List[float]:
    """What ``time.sleep`` was asked to sleep (it returns at once)."""
    calls: List[float] = []
    monkeypatch.setattr(time, "sleep", calls.append)
    return calls


# --- defaults and construction ------------------------------------------------------------


def test_defaults_are_deepseeks() -> None:
    retry = DeepSeekRetry()
    assert (retry.total, retry.redirect, retry.raise_on_status, retry.raise_on_redirect) == (2, 0, False, False)
    assert (retry.backoff_factor, retry.backoff_max, retry.backoff_jitter) == (0.25, 8.0, 0.1)
    assert retry.retry_after_max == retry.max_retry_after == 60.0
    assert retry.status_forcelist == config.RETRY_STATUSES
    assert retry.allowed_methods is not None and {"GET", "POST"} <= set(retry.allowed_methods)
    assert frozenset({429, 503}) == DeepSeekRetry.RETRY_AFTER_STATUS_CODES
    assert retry.retry_timeouts is True


def test_constructor_takes_urllib3s_arguments_in_urllib3s_order_then_ours_keyword_only() -> None:
    names = [
        *("total", "connect", "read", "redirect", "status", "other", "allowed_methods", "status_forcelist"),
        *("backoff_factor", "backoff_max", "raise_on_redirect", "raise_on_status", "history"),
        *("respect_retry_after_header", "remove_headers_on_redirect", "backoff_jitter", "retry_after_max"),
    ]
    parameters = inspect.signature(DeepSeekRetry).parameters
    assert list(parameters) == [*names, "retry_timeouts", "max_retry_after"]
    urllib3_names = list(inspect.signature(Retry).parameters)
    assert names[: len(urllib3_names)] == urllib3_names
    assert parameters["retry_timeouts"].kind is parameters["max_retry_after"].kind is inspect.Parameter.KEYWORD_ONLY

    history = (RequestHistory("GET", "/", None, 503, None),)
    values = (5, 4, 3, 2, 1, 6, ["GET"], [500], 0.1, 2.0, True, True, history, False, ["X-Key"], 0.3, 7.0)
    retry = DeepSeekRetry(*values)
    got = tuple(getattr(retry, name) for name in names)
    assert got[:14] == values[:14]
    assert (retry.remove_headers_on_redirect, retry.backoff_jitter, retry.retry_after_max) == ({"x-key"}, 0.3, 7.0)


def test_max_retry_after_is_an_alias_of_retry_after_max() -> None:
    assert DeepSeekRetry(max_retry_after=7).retry_after_max == 7
    assert DeepSeekRetry(retry_after_max=7, max_retry_after=7).max_retry_after == 7
    with pytest.raises(TypeError, match=r"retry_after_max=7.*max_retry_after=8"):
        DeepSeekRetry(retry_after_max=7, max_retry_after=8)


def test_new_keeps_every_field() -> None:
    retry = DeepSeekRetry(
        5, 4, 3, 2, 1, 6, ["GET"], [500], 0.1, 2.0, True, True, None, False, ["X-Key"], 0.3, 7.0, retry_timeouts=False
    )
    copy = retry.new()
    assert type(copy) is DeepSeekRetry
    assert vars(copy) == vars(retry)
    assert retry.new(max_retry_after=3).retry_after_max == 3
    assert retry.new(retry_after_max=3).retry_after_max == 3
    with pytest.raises(TypeError):
        retry.new(retry_after_max=3, max_retry_after=4)


def test_from_int_and_default_give_a_deepseek_policy() -> None:
    assert type(DeepSeekRetry.DEFAULT) is DeepSeekRetry and DeepSeekRetry.DEFAULT.total == 2
    assert DeepSeekRetry.from_int(None) is DeepSeekRetry.DEFAULT
    three = DeepSeekRetry.from_int(3)
    assert type(three) is DeepSeekRetry and three.total == 3 and three.is_retry("POST", 503)
    off = DeepSeekRetry.from_int(False)
    assert type(off) is DeepSeekRetry and off.total is False
    with pytest.raises(ConnectTimeoutError):  # retries disabled: the error itself comes back
        off.increment(method="POST", error=ConnectTimeoutError("down"))
    mine = DeepSeekRetry(4)
    assert DeepSeekRetry.from_int(mine) is mine
    assert type(Retry.DEFAULT) is Retry  # urllib3's own default is left alone


def test_repr_keeps_urllib3s_format_and_adds_our_fields() -> None:
    retry = DeepSeekRetry(4, retry_after_max=7, retry_timeouts=False).increment(method="POST")
    assert repr(retry) == (
        "DeepSeekRetry(total=3, connect=None, read=None, redirect=0, status=None, "
        "retry_after_max=7, retry_timeouts=False)"
    )


# --- what is retried ------------------------------------------------------------------------


def test_policy_retries_post_on_the_transient_statuses_only() -> None:
    retry = DeepSeekRetry()
    for status in (429, 500, 502, 503, 504):
        assert retry.is_retry("POST", status)
        assert retry.is_retry("GET", status)
    for status in (400, 401, 402, 404, 413, 422):
        assert not retry.is_retry("POST", status, has_retry_after=True)


def test_retry_after_alone_makes_429_and_503_retryable_but_not_413() -> None:
    retry = DeepSeekRetry(status_forcelist=())
    assert retry.is_retry("POST", 429, has_retry_after=True)
    assert retry.is_retry("POST", 503, has_retry_after=True)
    assert not retry.is_retry("POST", 413, has_retry_after=True)
    assert not retry.is_retry("POST", 429, has_retry_after=False)


def test_read_timeouts_are_counted_unless_retry_timeouts_is_false() -> None:
    error = ReadTimeoutError(POOL, "/chat/completions", "read timed out")
    counted = DeepSeekRetry(3).increment("POST", "/chat/completions", error=error)
    assert counted.total == 2 and counted.history[-1].error is error
    with pytest.raises(ReadTimeoutError) as raised:
        DeepSeekRetry(3, retry_timeouts=False).increment("POST", "/chat/completions", error=error)
    assert raised.value is error
    connect = DeepSeekRetry(3, retry_timeouts=False).increment("POST", "/", error=ConnectTimeoutError("slow"))
    assert connect.total == 2  # not sent yet: safe to retry


def test_increment_is_urllib3s_and_raises_max_retry_error_when_spent() -> None:
    retry = DeepSeekRetry(1).increment("POST", "/", response=HTTPResponse(status=503))
    assert retry.history == (RequestHistory("POST", "/", None, 503, None),)
    with pytest.raises(MaxRetryError, match="too many 503 error responses"):
        retry.increment("POST", "/", response=HTTPResponse(status=503))


# --- backoff ----------------------------------------------------------------------------------


def test_backoff_waits_from_the_first_retry_grows_and_is_capped() -> None:
    retry = still(total=10, backoff_factor=0.5, backoff_max=8)
    assert retry.get_backoff_time() == 0.0  # before the first attempt
    delays = []
    for _ in range(6):
        retry = retry.increment("POST", "/", response=HTTPResponse(status=503))
        delays.append(retry.get_backoff_time())
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_backoff_for_counts_retries_from_one() -> None:
    retry = still(backoff_factor=0.5, backoff_max=8)
    assert [retry.backoff_for(n) for n in (-1, 0, 1, 2, 3, 10_000)] == [0.0, 0.0, 0.5, 1.0, 2.0, 8.0]


def test_backoff_is_reset_after_a_redirect() -> None:
    retry = still(total=100, redirect=5, backoff_factor=0.2)
    retry = retry.increment(method="POST").increment(method="POST")
    assert retry.get_backoff_time() == 0.4
    retry = retry.increment(method="POST", response=HTTPResponse(status=302, headers={"location": "/elsewhere"}))
    assert retry.get_backoff_time() == 0.0
    assert retry.increment(method="POST").get_backoff_time() == 0.2


def test_jitter_stays_within_its_bound() -> None:
    retry = DeepSeekRetry(3, backoff_factor=0.5, backoff_jitter=0.25).increment(method="POST")
    delays = {retry.get_backoff_time() for _ in range(50)}
    assert all(0.5 <= d <= 0.75 for d in delays) and len(delays) > 1


def test_jitter_is_added_after_the_cap_so_capped_threads_still_spread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.5)
    retry = DeepSeekRetry(backoff_factor=1, backoff_max=2, backoff_jitter=1)
    assert retry.backoff_for(5) == 2.5


# --- Retry-After ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "1.5"}, 1.5),  # urllib3 itself rejects fractional seconds
        ({"Retry-After": " 0.25 "}, 0.25),
        ({"Retry-After": "0"}, 0.0),
        ({"retry-after-ms": "1200"}, 1.2),
        ({"retry-after-ms": "2.5"}, 0.0025),
        ({"retry-after-ms": "800", "Retry-After": "9"}, 0.8),  # the precise one wins
        ({"Retry-After": "3600"}, 60.0),  # capped
        ({"retry-after-ms": "3600000"}, 60.0),
        ({"Retry-After": "1" * 400}, 60.0),  # beyond any float: still capped, not infinite
        ({"retry-after-ms": "1" * 400}, 60.0),
        ({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, 60.0),
        ({"Retry-After": "Mon, 03 Jun 2019 11:30:12 GMT"}, 0.0),  # already past
        ({}, None),
    ],
)
def test_retry_after_forms(headers: Dict[str, str], expected: Optional[float]) -> None:
    assert DeepSeekRetry().get_retry_after(_Response(headers)) == expected


def test_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 5, usegmt=True)
    seconds = DeepSeekRetry().get_retry_after(_Response({"Retry-After": when}))
    assert seconds is not None and 3.0 <= seconds <= 5.0


def test_retry_after_max_caps_every_form() -> None:
    retry = DeepSeekRetry(retry_after_max=5)
    when = email.utils.formatdate(time.time() + 3600, usegmt=True)
    assert retry.parse_retry_after("30") == 5
    assert retry.parse_retry_after(when) == 5
    assert retry.get_retry_after(_Response({"retry-after-ms": "30000"})) == 5
    assert retry.new(total=1).get_retry_after(_Response({"Retry-After": "30"})) == 5
    assert DeepSeekRetry(max_retry_after=0.2).get_retry_after(_Response({"Retry-After": "30"})) == 0.2


@pytest.mark.parametrize("value", GARBAGE)
def test_parse_retry_after_rejects_garbage_as_urllib3_does(value: str) -> None:
    with pytest.raises(InvalidHeader):
        DeepSeekRetry().parse_retry_after(value)


@pytest.mark.parametrize("header", ["Retry-After", "retry-after-ms"])
@pytest.mark.parametrize("value", GARBAGE)
def test_an_unusable_header_counts_as_absent_everywhere(header: str, value: str, slept: List[float]) -> None:
    retry = still(backoff_factor=0.5).increment(method="POST")
    response = _Response({header: value})
    assert retry.get_retry_after(response) is None
    assert retry.sleep_for_retry(response) is False  # type: ignore[arg-type]
    assert retry.is_retry("POST", 429, has_retry_after=True)
    assert retry.delay_after(response) == 0.5
    retry.sleep(response)  # type: ignore[arg-type]
    assert slept == [0.5]


@pytest.mark.parametrize("value", GARBAGE)
def test_unusable_retry_after_ms_falls_back_to_retry_after(value: str) -> None:
    assert DeepSeekRetry().get_retry_after(_Response({"retry-after-ms": value, "Retry-After": "2"})) == 2.0


# --- delay_after and sleep --------------------------------------------------------------------


def test_delay_after_is_the_retry_after_else_the_backoff() -> None:
    retry = still(backoff_factor=0.5).increment(method="POST")
    assert retry.delay_after(_Response({"Retry-After": "3"})) == 3.0
    assert retry.delay_after(_Response({})) == 0.5
    assert retry.delay_after(None) == 0.5
    assert retry.delay_after(_Response({"Retry-After": "0"})) == 0.5  # zero: back off anyway, as urllib3
    ignoring = retry.new(respect_retry_after_header=False)
    assert ignoring.delay_after(_Response({"Retry-After": "3"})) == 0.5


def test_delay_after_reads_a_falsy_requests_response() -> None:
    response = requests.Response()
    response.status_code = 429
    response.headers["Retry-After"] = "3"
    assert not response  # requests makes an error response falsy
    assert still().increment(method="POST").delay_after(response) == 3.0


def test_sleep_blocks_for_exactly_delay_after(slept: List[float], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.5)
    retry = DeepSeekRetry(backoff_factor=0.5, backoff_jitter=0.25).increment(method="POST")
    for response in (None, _Response({}), _Response({"Retry-After": "1.5"}), _Response({"retry-after-ms": "20"})):
        retry.sleep(response)  # type: ignore[arg-type]
        assert slept[-1] == retry.delay_after(response)
    assert slept == [0.625, 0.625, 1.5, 0.02]
    DeepSeekRetry().sleep()  # nothing failed yet: no wait
    assert len(slept) == 4


# --- mounted on plain urllib3 -----------------------------------------------------------------


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 429 with a short Retry-After twice, then 200."""

    statuses: List[int] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status = self.statuses.pop(0) if self.statuses else 200
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0.05")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def flaky_server() -> Iterator[Tuple[str, int]]:
    _Flaky.statuses = [429, 429]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_mounted_on_a_plain_urllib3_pool_it_retries_post_and_waits_the_retry_after(
    flaky_server: Tuple[str, int],
) -> None:
    host, port = flaky_server
    with urllib3.HTTPConnectionPool(host, port) as pool:
        started = time.monotonic()
        response = pool.request("POST", "/chat/completions", body=b"{}", retries=DeepSeekRetry())
        elapsed = time.monotonic() - started
    assert response.status == 200
    assert response.retries is not None and [entry.status for entry in response.retries.history] == [429, 429]
    assert elapsed >= 0.1  # two server-directed waits of 0.05 s
