"""The session route's own rules: the key as ``auth``, errors a retry cannot fix, masked credentials.

What the client sends compared with requests' ``Session.send`` is in
``tests/test_session_route.py``; the proxies and faults in ``tests/test_proxy_routes.py``.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Any, List

import pytest
import requests
from urllib3.exceptions import ProxyError

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek
from deepseek_pool.wire.calls import CallHandle, Silence
from deepseek_pool.wire.failures import final_failure, translate_error

KEY = "sk-route-rules-key"


def test_the_sessions_auth_runs_after_the_key_and_netrc_never_replaces_it(
    fake_deepseek: FakeDeepSeek, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password from-netrc\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    plain = dp.DeepSeekClient(KEY, base_url=fake_deepseek.base_url, max_retries=0)
    plain.chat("netrc?")
    assert fake_deepseek.received[-1].headers["authorization"] == f"Bearer {KEY}"

    class Gateway(requests.auth.AuthBase):
        def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
            assert request.headers["Authorization"] == f"Bearer {KEY}"  # the key is already there
            request.headers["X-Gateway"] = "passed"
            return request

    session = requests.Session()
    session.auth = Gateway()
    dp.DeepSeekClient(KEY, base_url=fake_deepseek.base_url, session=session, max_retries=0).chat("gateway?")
    headers = fake_deepseek.received[-1].headers
    assert headers["x-gateway"] == "passed" and headers["authorization"] == f"Bearer {KEY}"


def test_an_untrusted_certificate_and_a_tunnels_407_are_final_and_named() -> None:
    untrusted = requests.exceptions.SSLError(ssl.SSLCertVerificationError(1, "certificate verify failed"))
    assert isinstance(final_failure(untrusted), dp.TLSError)
    refused = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")
    refused.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"  # type: ignore[misc]
    assert isinstance(final_failure(requests.exceptions.SSLError(refused)), dp.TLSError)
    tunnel = requests.exceptions.ProxyError(
        ProxyError("Unable to connect to proxy", OSError("Tunnel connection failed: 407 Proxy Authentication Required"))
    )
    failure = final_failure(tunnel)
    assert isinstance(failure, dp.ProxyAuthenticationError) and "407" in str(failure)
    assert final_failure(requests.ConnectionError(ConnectionResetError(104, "reset"))) is None


def test_a_proxys_credentials_are_masked_in_every_translated_error() -> None:
    err = requests.exceptions.ProxyError("Cannot connect to proxy http://alice:s3cret@127.0.0.1:3128: refused")
    translated = translate_error(err)
    assert isinstance(translated, dp.APIConnectionError)
    assert "s3cret" not in str(translated) and "alice" not in str(translated)
    assert "http://***@127.0.0.1:3128" in str(translated)


def test_a_silence_waits_while_the_caller_holds_a_piece() -> None:
    """``last = inf`` pauses the read timeout: no connection is broken while no read waits."""
    handle = CallHandle()

    class Connection:
        sock = None

    connection = Connection()
    handle.attach(connection)
    silence = Silence(handle, connection, 0.05)
    silence.last = float("inf")
    silence.expire()  # the watchdog's look, long after the last read: nothing happens
    assert not silence.fired
    silence.last = time.monotonic() - 1.0  # a read has waited a second: silence
    silence.expire()
    silence.stop()
    assert silence.fired


def _resolver(monkeypatch: pytest.MonkeyPatch, delay: float) -> List[str]:
    """``deepseek.test`` resolves to 127.0.0.1 after ``delay`` seconds; returns the names looked up."""
    real = socket.getaddrinfo
    asked: List[str] = []

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "deepseek.test":
            asked.append(host)
            time.sleep(delay)
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_host_name_resolves_and_the_call_is_answered(  # a slow resolver: test_deadline_clocks.py
    fake_deepseek: FakeDeepSeek, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = _resolver(monkeypatch, 0.0)
    base = fake_deepseek.base_url.replace("127.0.0.1", "deepseek.test")
    client = dp.DeepSeekClient(KEY, base_url=base, max_retries=0)
    assert client.chat("named?").content == FakeDeepSeek.answer_for("named?")
    assert asked == ["deepseek.test"]
