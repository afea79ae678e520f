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


def _mount_counting(session: requests.Session) -> Callable[[], bool]:
    mine = CountingAdapter()
    session.mount("http://", mine)  # the same prefix as the adapter the first call used: replaced in place
    return lambda: len(mine.sent) == 2


def _remount_ours(session: requests.Session) -> Callable[[], bool]:
    old = session.get_adapter("http://")
    session.mount("http://", dp.DeepSeekAdapter())
    # the old adapter's pool served the first call only: the call after the mount used the new one
    return lambda: [pool.num_requests for pool in old.poolmanager.pools._container.values()] == [1]


def _patch_adapter_send(session: requests.Session) -> Callable[[], bool]:
    adapter = session.get_adapter("http://")
    sent: List[str] = []
    genuine = adapter.send

    def send(request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        sent.append(str(request.url))
        return genuine(request, **kwargs)

    adapter.send = send  # type: ignore[method-assign]
    return lambda: len(sent) == 2


def _headers_in_place(session: requests.Session) -> Callable[[], bool]:
    session.headers["X-Changed-Between-Calls"] = "1"
    session.headers["User-Agent"] = "changed-agent/2"
    return lambda: True


def _hook_appended(session: requests.Session) -> Callable[[], bool]:
    seen: List[int] = []
    session.hooks["response"].append(lambda response, **kwargs: seen.append(response.status_code))
    return lambda: seen == [200, 200]


def _auth_set(session: requests.Session) -> Callable[[], bool]:
    auth = GatewayAuth()
    session.auth = auth
    return lambda: auth.calls == 2


def _cookie_set(session: requests.Session) -> Callable[[], bool]:
    session.cookies.set("late-cookie", "c1")
    return lambda: True


def _cookie_set_and_cleared(session: requests.Session) -> Callable[[], bool]:
    session.cookies.set("gone", "x", domain="127.0.0.1", path="/")
    session.cookies.clear("127.0.0.1", "/", "gone")  # leaves the jar's emptied dicts behind
    return lambda: len(session.cookies) == 0


def _params_set(session: requests.Session) -> Callable[[], bool]:
    session.params["api-version"] = "2025-02"  # the session's own dict, changed in place
    return lambda: True


CHANGES = [
    pytest.param(_mount_counting, id="adapter-mounted"),
    pytest.param(_remount_ours, id="deepseek-adapter-remounted"),
    pytest.param(_patch_adapter_send, id="adapter-send-patched"),
    pytest.param(_headers_in_place, id="headers-in-place"),
    pytest.param(_hook_appended, id="hook-appended"),
    pytest.param(_auth_set, id="auth-set"),
    pytest.param(_cookie_set, id="cookie-set"),
    pytest.param(_cookie_set_and_cleared, id="cookie-cleared"),
    pytest.param(_params_set, id="params-in-place"),
]


@pytest.mark.parametrize("change", CHANGES)
def test_a_change_to_the_session_between_calls_applies_to_the_next(fake_deepseek: FakeDeepSeek, change: Any) -> None:
    """The direct route is kept between calls; a change made to the session after one call (in place,
    as users make them) reaches the next call just as it reaches ``Session.send``."""
    session = requests.Session()
    session.mount("http://", dp.DeepSeekAdapter())  # what the direct route needs
    client = dp.DeepSeekClient(KEY, base_url=fake_deepseek.base_url, session=session)
    assert client.chat(PROMPT).content == FakeDeepSeek.answer_for(PROMPT)
    assert client._route._direct, "the first call took the direct route and kept it"
    check = change(session)
    by_client, by_requests = both_ways(fake_deepseek, session, client)
    assert comparable(by_client) == comparable(by_requests)
    assert check()
    session.close()


def test_the_ca_bundle_variable_set_between_calls_applies(fake_deepseek: FakeDeepSeek, monkeypatch: Any) -> None:
    """With ``trust_env``, ``REQUESTS_CA_BUNDLE`` is part of the route: one set after a call is a new route."""
    session = requests.Session()
    session.mount("http://", dp.DeepSeekAdapter())
    client = dp.DeepSeekClient(KEY, base_url=fake_deepseek.base_url, session=session)
    client.chat(PROMPT)
    first = next(iter(client._route._direct.values()))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
    client.chat(PROMPT)  # plain HTTP: the bundle is not used, but the route is made again from it
    assert next(iter(client._route._direct.values())) is not first
    session.close()
