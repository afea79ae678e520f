"""The user's ``requests.Session``, used as requests uses it: a differential test against ``Session.send``.

For each session feature (auth, response hooks, params, cookies, headers changed after the client
was made, adapters mounted on the scheme or the base URL), the same logical request is sent twice
to FakeDeepSeek through the same session: once by the client, once by plain requests
(``Session.request``, which prepares it and calls ``Session.send``). What the server received must be
the same: method, path and query, and every header but the ones that only frame the body. The
headers the client chooses itself (key, content type, user agent) are given to requests as the
request's own headers, so any remaining difference is something of the session the client dropped.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Tuple

import pytest
import requests
from requests.adapters import HTTPAdapter

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek, ReceivedRequest

KEY = "sk-session-route-key"
PROMPT = "through my session"
#: headers the client sets itself; requests is handed the client's values for these
CLIENT_CHOSEN = ("authorization", "content-type", "accept", "user-agent")
#: headers about framing alone, or set by the connection rather than the session
FRAMING = ("content-length", "host", "transfer-encoding")


class GatewayAuth(requests.auth.AuthBase):
    """A custom auth, as a gateway in front of DeepSeek would want it: one header more per request."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        self.calls += 1
        request.headers["X-Gateway-Token"] = "gw-token-1"
        return request


class CountingAdapter(HTTPAdapter):
    """A plain requests adapter that counts what it sends (and never retries)."""

    def __init__(self) -> None:
        super().__init__(max_retries=0)
        self.sent: List[str] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sent.append(f"{request.method} {request.url}")
        return super().send(request, **kwargs)


def comparable(received: ReceivedRequest) -> Tuple[str, str, Dict[str, str]]:
    headers = {name: value for name, value in received.headers.items() if name not in FRAMING}
    return received.method, received.path, headers


def both_ways(
    fake: FakeDeepSeek, session: requests.Session, client: dp.DeepSeekClient
) -> Tuple[ReceivedRequest, ReceivedRequest]:
    """The same chat request sent by the client and by ``session.request``; what the server got each time."""
    assert client.chat(PROMPT).content == FakeDeepSeek.answer_for(PROMPT)
    by_client = fake.received[-1]
    own = {name: by_client.headers[name] for name in CLIENT_CHOSEN if name in by_client.headers}
    response = session.request(
        "POST", client.base_url + "/chat/completions", data=json.dumps(by_client.body).encode(), headers=own
    )
    assert response.status_code == 200, response.text
    response.close()
    by_requests = fake.received[-1]
    assert by_requests is not by_client
    return by_client, by_requests


def _auth(session: requests.Session, client_after: Callable[[], dp.DeepSeekClient]) -> Dict[str, Any]:
    auth = GatewayAuth()
    session.auth = auth
    return {"client": client_after(), "check": lambda: auth.calls == 2, "what": "the auth ran for both"}


def _hooks(session: requests.Session, client_after: Callable[[], dp.DeepSeekClient]) -> Dict[str, Any]:
    seen: List[Tuple[int, str]] = []

    def hook(response: requests.Response, **kwargs: Any) -> None:
        seen.append((response.status_code, response.url))

    session.hooks["response"].append(hook)
    client = client_after()
    url = client.base_url + "/chat/completions"
    return {"client": client, "check": lambda: seen == [(200, url)] * 2, "what": "the hook saw both responses"}


def _params(session: requests.Session, client_after: Callable[[], dp.DeepSeekClient]) -> Dict[str, Any]:
    session.params = {"api-version": "2025-01"}
    return {"client": client_after(), "check": lambda: True, "what": ""}


def _cookies(session: requests.Session, client_after: Callable[[], dp.DeepSeekClient]) -> Dict[str, Any]:
    session.cookies.set("gateway-session", "abc123")
    return {"client": client_after(), "check": lambda: True, "what": ""}


def _late_headers(session: requests.Session, client_after: Callable[[], dp.DeepSeekClient]) -> Dict[str, Any]:
    client = client_after()
    session.headers["X-Late-Header"] = "set after the client was made"
    session.headers["Accept-Encoding"] = "identity"
    return {"client": client, "check": lambda: True, "what": ""}


FEATURES = [
    pytest.param(_auth, id="auth"),
    pytest.param(_hooks, id="hooks"),
    pytest.param(_params, id="params"),
    pytest.param(_cookies, id="cookies"),
    pytest.param(_late_headers, id="late-headers"),
]


@pytest.mark.parametrize("feature", FEATURES)
def test_the_client_sends_what_session_send_sends(fake_deepseek: FakeDeepSeek, feature: Any) -> None:
    session = requests.Session()
    setup = feature(session, lambda: dp.DeepSeekClient(KEY, base_url=fake_deepseek.base_url, session=session))
    by_client, by_requests = both_ways(fake_deepseek, session, setup["client"])
    assert comparable(by_client) == comparable(by_requests)
    assert setup["check"](), setup["what"]
    session.close()


def test_a_plain_session_is_sent_alike(fake_deepseek: FakeDeepSeek) -> None:
    """The baseline of the differential test: with no feature set, both ways already agree."""
    session = requests.Session()
    client = dp.DeepSeekClient(KEY, base_url=fake_deepseek.base_url, session=session)
    by_client, by_requests = both_ways(fake_deepseek, session, client)
    assert comparable(by_client) == comparable(by_requests)
    session.close()


def test_an_adapter_mounted_on_the_scheme_is_used_and_keeps_the_users_other_requests(
    fake_deepseek: FakeDeepSeek,
) -> None:
    session = requests.Session()
    mine = CountingAdapter()
    session.mount("http://", mine)
    client = dp.DeepSeekClient(KEY, base_url=fake_deepseek.base_url, session=session)
    by_client, by_requests = both_ways(fake_deepseek, session, client)
    assert comparable(by_client) == comparable(by_requests)
    url = client.base_url + "/chat/completions"
    assert mine.sent == [f"POST {url}"] * 2  # the client's call went through the user's adapter
    other = fake_deepseek.base_url + "/models"
    assert session.get_adapter(other) is mine  # the user's other requests to the host: still theirs
    assert session.get(other, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert mine.sent[-1] == f"GET {other}"
    session.close()


def test_an_adapter_mounted_on_the_base_url_is_used(fake_deepseek: FakeDeepSeek) -> None:
    session = requests.Session()
    mine = CountingAdapter()
    session.mount(fake_deepseek.base_url, mine)
    client = dp.DeepSeekClient(KEY, base_url=fake_deepseek.base_url, session=session)
    by_client, by_requests = both_ways(fake_deepseek, session, client)
    assert comparable(by_client) == comparable(by_requests)
    url = client.base_url + "/chat/completions"
    assert mine.sent == [f"POST {url}"] * 2
    session.close()
