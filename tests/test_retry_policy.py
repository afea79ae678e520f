"""DeepSeekRetry as a value: parsing server-directed waits, backoff, and what it retries."""

from __future__ import annotations

import email.utils
import time
from typing import Dict

import pytest
from urllib3.util.retry import RequestHistory

import deepseek_pool as dp


class _Response:
    def __init__(self, headers: Dict[str, str], status: int = 429) -> None:
        self.headers = headers
        self.status = status


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "1.5"}, 1.5),  # urllib3 itself rejects fractional seconds
        ({"Retry-After": " 0.25 "}, 0.25),
        ({"retry-after-ms": "1200"}, 1.2),
        ({"retry-after-ms": "800", "Retry-After": "9"}, 0.8),  # the precise one wins
        ({"Retry-After": "3600"}, 60.0),  # capped
        ({"Retry-After": "soon"}, None),  # unusable: fall back to backoff
        ({}, None),
    ],
)
def test_retry_after_forms(headers: Dict[str, str], expected: float) -> None:
    assert dp.DeepSeekRetry().get_retry_after(_Response(headers)) == expected


def test_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 5, usegmt=True)
    seconds = dp.DeepSeekRetry().get_retry_after(_Response({"Retry-After": when}))
    assert seconds is not None and 3.0 <= seconds <= 5.0


def test_backoff_waits_from_the_first_retry_grows_and_is_capped() -> None:
    retry = dp.DeepSeekRetry(10, backoff_factor=0.5, backoff_max=8, backoff_jitter=0)
    delays = []
    for n in range(1, 7):
        history = tuple(RequestHistory("POST", "/chat/completions", None, 503, None) for _ in range(n))
        delays.append(retry.new(history=history).get_backoff_time())
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_jitter_stays_within_its_bound() -> None:
    retry = dp.DeepSeekRetry(3, backoff_factor=0.5, backoff_jitter=0.25)
    history = (RequestHistory("POST", "/", None, 503, None),)
    delays = {retry.new(history=history).get_backoff_time() for _ in range(50)}
    assert all(0.5 <= d <= 0.75 for d in delays) and len(delays) > 1


def test_policy_retries_post_on_the_transient_statuses_only() -> None:
    retry = dp.DeepSeekRetry()
    for status in (429, 500, 502, 503, 504):
        assert retry.is_retry("POST", status)
    for status in (400, 401, 402, 404, 413, 422):
        assert not retry.is_retry("POST", status, has_retry_after=True)


def test_new_keeps_the_deepseek_settings_and_repr_shows_them() -> None:
    retry = dp.DeepSeekRetry(4, max_retry_after=7, retry_timeouts=False).new(total=3)
    assert (retry.total, retry.max_retry_after, retry.retry_timeouts) == (3, 7, False)
    assert "max_retry_after=7" in repr(retry) and "retry_timeouts=False" in repr(retry)
