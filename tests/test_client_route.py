"""The client's direct route to urllib3: same behaviour as going through requests' ``Session.send``.

``DeepSeekClient`` sends straight to the urllib3 pool that requests would use only when
requests' layers would add nothing to the request (see :mod:`deepseek_pool.wire.route`);
these tests pin that it gives the same answers and errors, and that mocks, hooks and
proxies take requests' own path.
"""

from __future__ import annotations

import socket

import pytest
import requests
import responses

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek

KEY = "sk-route-test-key"


def test_the_direct_route_answers_like_the_adapter(fake_deepseek: FakeDeepSeek) -> None:
    client = dp.DeepSeekClient(KEY, base_url=fake_deepseek.base_url)
    url = fake_deepseek.base_url + "/chat/completions"
    assert client._route.direct(url) is not None
    direct = client.chat("same answer?")
    seen = []
    client.session.hooks["response"].append(lambda response, **kwargs: seen.append(response.status_code))
    assert client._route.direct(url) is None  # a hook: requests' own Session.send from now on
    through_adapter = client.chat("same answer?")
    assert seen == [200]
    for name in ("content", "reasoning_content", "finish_reason", "model"):
        assert getattr(direct, name) == getattr(through_adapter, name)
    assert direct.content == FakeDeepSeek.answer_for("same answer?")
    assert (direct.request_id is None) == (through_adapter.request_id is None)
    assert fake_deepseek.stats.connections_opened == 1  # both ways share one pooled connection


def test_a_patched_adapter_send_is_honoured() -> None:
    client = dp.DeepSeekClient(KEY, base_url="http://127.0.0.1:9", max_retries=0)
    choice = {"index": 0, "message": {"content": "mocked"}, "finish_reason": "stop"}
    body = {"id": "r", "model": "deepseek-flash", "choices": [choice]}
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, "http://127.0.0.1:9/chat/completions", json=body)
        assert client._route.direct("http://127.0.0.1:9/chat/completions") is None
        assert client.chat("hi").content == "mocked"


def test_a_proxy_keeps_the_adapter_path(monkeypatch: pytest.MonkeyPatch) -> None:
    session = requests.Session()
    session.proxies = {"http": "http://127.0.0.1:9"}
    client = dp.DeepSeekClient(KEY, base_url="http://127.0.0.1:8", session=session, max_retries=0)
    assert client._route.direct("http://127.0.0.1:8/chat/completions") is None
    with pytest.raises(dp.APIConnectionError):
        client.chat("hi")  # the (closed) proxy port refuses: the proxy was used


def test_a_refused_connection_is_a_connection_error_on_the_direct_route() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    client = dp.DeepSeekClient(KEY, base_url=f"http://127.0.0.1:{port}", max_retries=0)
    with pytest.raises(dp.APIConnectionError) as caught:
        client.chat("hi")
    assert not isinstance(caught.value, dp.APITimeoutError)
