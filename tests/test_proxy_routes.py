"""Every guarantee on every route: routes x faults x entry points, one invariant (issue 22, item 1).

Routes: direct; ``HTTP_PROXY`` in the environment through tinyproxy, squid and proxy.py;
``session.proxies`` (tinyproxy); CONNECT over TLS with a private CA (``HTTPS_PROXY`` through
tinyproxy to a TLS-terminating :class:`~tests.proxies.FaultProxy`); a plain requests ``HTTPAdapter``
the user mounted on the base URL. Faults, all after the response head: a body that stalls (the
FaultProxy's ``stall_after_head``), keep-alive lines for ever (FakeDeepSeek's ``trickle_forever``),
a connection cut mid-body (``cut:2``), an RST right after the head (the FaultProxy's ``reset``).

Invariant per cell: the call ends within its deadline (read timeout per attempt for a stall, the
attempt's total and then ``call_timeout`` for a trickle, at once for a cut or a reset) plus
:data:`SLACK`, with the documented class (:class:`~deepseek_pool.APITimeoutError` for the first two,
:class:`~deepseek_pool.APIConnectionError` and not a timeout for the others), after the expected
number of attempts as FakeDeepSeek counted them. Cells of one environment run concurrently; a call
still running at :data:`WATCHDOG` has its servers stopped under it and the cell fails as hung.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type

import pytest
import requests
from requests.adapters import HTTPAdapter

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek

from .proxies import ENTRIES, PROXIES, FaultProxy, RunningProxy, Toxic, address_of, drive, proxy_py, streams, tinyproxy

KEY = "sk-ROUTE-SECRET-0123456789"
PROMPT = "over every route"
READ = 0.5  # read timeout: a stalled body must end after this, per attempt
TOTAL = 1.0  # each attempt's total deadline: a trickle forever ends here
CALL_TIMEOUT = 1.5
MAX_RETRIES = 1
BACKOFF = 0.05
SLACK = 0.75  # scheduling on a loaded two-core box, and a proxy hop or two
WATCHDOG = CALL_TIMEOUT + 3.0
PARALLEL = 24
ROUTES = ("direct", "env-tinyproxy", "env-squid", "env-proxy.py", "session-proxy", "connect-tls", "mounted-adapter")
FAULTS = ("stall", "trickle", "cut", "reset")


def make_client(base_url: str, session: Optional[requests.Session] = None) -> dp.DeepSeekClient:
    return dp.DeepSeekClient(
        KEY,
        base_url=base_url,
        session=session,
        timeout=dp.Timeout(TOTAL, connect=0.5, read=READ),
        call_timeout=CALL_TIMEOUT,
        max_retries=dp.DeepSeekRetry(MAX_RETRIES, backoff_factor=BACKOFF, backoff_jitter=0),
    )


@dataclass
class Expected:
    error: Type[BaseException]
    attempts: Tuple[int, ...]  # what the fake may count
    within: float  # seconds the call may take, before SLACK


def expected(route: str, fault: str, entry: str) -> Expected:
    """What a call through ``entry`` hitting ``fault`` on ``route`` must end in."""
    attempts = (MAX_RETRIES + 1,)
    # chat_stream handed the head to the caller, and on_chunk saw the first events of a cut stream:
    # a body that breaks then is not retried
    if entry == "chat_stream" or (entry == "chat_on_chunk" and fault == "cut"):
        attempts = (1,)
        if fault == "reset" and route == "connect-tls":
            # The RST right after the head races the head through the tunnelling proxy: a relay
            # that sees the RST first closes the tunnel without passing the head on, and a
            # call that got no head is retried like any connection failure.
            attempts = (1, MAX_RETRIES + 1)
    if fault == "stall":
        return Expected(dp.APITimeoutError, attempts, min(attempts[-1] * (READ + BACKOFF), CALL_TIMEOUT))
    if fault == "trickle":
        return Expected(dp.APITimeoutError, attempts, CALL_TIMEOUT if attempts[-1] > 1 else TOTAL)
    return Expected(dp.APIConnectionError, attempts, 0.3)


@dataclass
class Outcome:
    error: Optional[BaseException] = None
    content: Optional[str] = None
    wall: float = 0.0
    attempts: int = 0
    hung: bool = False


@dataclass(frozen=True)
class Shared:
    """What cells share: the running proxies, and the private CA for the TLS route."""

    proxies: Dict[str, RunningProxy]
    server_tls: ssl.SSLContext
    ca_path: str


def run_cell(route: str, fault: str, entry: str, shared: Shared) -> Outcome:
    """One call, on its own FakeDeepSeek behind its own FaultProxy; never hangs past WATCHDOG."""
    outcome = Outcome()
    with FakeDeepSeek(trickle_interval=0.05) as fake:
        if fault in ("trickle", "cut"):
            fake.script(*["trickle_forever" if fault == "trickle" else "cut:2"] * 3)
        toxic = {"stall": Toxic("stall_after_head"), "reset": Toxic("reset", limit=0, after_head=True)}.get(fault)
        tls = shared.server_tls if route == "connect-tls" else None
        with FaultProxy(address_of(fake.base_url), toxic, tls=tls) as front:
            session: Optional[requests.Session] = None
            if route == "session-proxy":
                session = requests.Session()
                session.proxies = {"http": shared.proxies["tinyproxy"].url}
            elif route == "mounted-adapter":
                session = requests.Session()
                session.mount(front.url, HTTPAdapter(max_retries=0))
            client = make_client(front.url, session)

            def call() -> None:
                start = time.monotonic()
                try:
                    outcome.content = drive(client, entry, PROMPT)
                except BaseException as err:
                    outcome.error = err
                outcome.wall = time.monotonic() - start

            worker = threading.Thread(target=call, daemon=True, name=f"cell:{route}/{fault}/{entry}")
            worker.start()
            worker.join(WATCHDOG)
            if worker.is_alive():
                outcome.hung = True
                front.stop()  # breaks every connection of the cell, so the call ends
                fake.stop()
                worker.join(WATCHDOG)
            outcome.attempts = fake.stats.requests
            client.close()
            if session is not None:
                session.close()
    return outcome


def _cells() -> Iterator[Any]:
    for route in ROUTES:
        for fault in FAULTS:
            for entry in ENTRIES:
                cell = f"{route}/{fault}/{entry}"
                yield pytest.param(cell, id=cell)


def _environment(route: str, shared: Shared) -> Dict[str, str]:
    """The process environment a route's cells run in (they run together, one environment at a time)."""
    if route.startswith("env-"):
        return {"HTTP_PROXY": shared.proxies[route[4:]].url}
    if route == "connect-tls":
        return {"HTTPS_PROXY": shared.proxies["tinyproxy"].url, "REQUESTS_CA_BUNDLE": shared.ca_path}
    return {}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    ca_path = str(tmp_path_factory.mktemp("ca") / "ca.pem")
    authority.cert_pem.write_to_path(ca_path)
    with contextlib.ExitStack() as stack:
        running = {}
        for name, start in PROXIES.items():
            try:
                running[name] = stack.enter_context(start())
            except pytest.skip.Exception:
                continue  # its cells skip, below
        yield Shared(running, context, ca_path)


class Matrix(Dict[str, Outcome]):
    """cell -> Outcome, with a short repr (pytest shows fixture values in tracebacks)."""

    def __repr__(self) -> str:
        return f"<the outcomes of {len(self)} cells>"


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest, shared: Shared) -> Iterator[Dict[str, Outcome]]:
    """Run the selected cells, one environment at a time, the cells of each concurrently."""
    wanted: Dict[str, List[str]] = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or getattr(item, "module", None) is not request.module or "cell" not in callspec.params:
            continue
        cell = callspec.params["cell"]
        route = cell.split("/")[0]
        needs = {"env-squid": "squid", "env-proxy.py": "proxy.py"}.get(route, "tinyproxy" if "proxy" in route else "")
        if route == "connect-tls":
            needs = "tinyproxy"
        if needs and needs not in shared.proxies:
            continue
        wanted.setdefault(route, []).append(cell)
    outcomes = Matrix()
    with cf.ThreadPoolExecutor(PARALLEL, thread_name_prefix="route-matrix") as executor:
        for route, cells in wanted.items():
            with pytest.MonkeyPatch.context() as patch:
                for name, value in _environment(route, shared).items():
                    patch.setenv(name, value)
                futures = {cell: executor.submit(run_cell, *cell.split("/"), shared) for cell in cells}
                for cell, future in futures.items():
                    outcomes[cell] = future.result(timeout=3 * WATCHDOG)
    yield outcomes


@pytest.mark.timeout(300)  # the first cell's setup runs the whole matrix
@pytest.mark.parametrize("cell", list(_cells()))
def test_cell(cell: str, matrix: Dict[str, Outcome], shared: Shared) -> None:
    route, fault, entry = cell.split("/")
    if cell not in matrix:
        pytest.skip(f"the proxy for route {route} is not installed")
    outcome = matrix[cell]
    want = expected(route, fault, entry)
    err = outcome.error
    what = f"{type(err).__name__}: {err}" if err is not None else f"success {outcome.content!r}"
    problems = []
    if outcome.hung:
        problems.append(f"hung: still running at {WATCHDOG} s, ended only by stopping its servers")
    if outcome.wall > want.within + SLACK:
        problems.append(f"took {outcome.wall:.2f} s > {want.within:.2f} + {SLACK} s")
    if not isinstance(err, want.error):
        problems.append(f"expected {want.error.__name__}")
    elif fault in ("cut", "reset") and isinstance(err, dp.APITimeoutError):
        problems.append("a cut or a reset is not a timeout")
    if outcome.attempts not in want.attempts:
        problems.append(f"{outcome.attempts} attempts, expected {' or '.join(map(str, want.attempts))}")
    if err is not None and KEY[3:] in f"{err} {err!r}":
        problems.append("the error shows the API key")
    assert not problems, f"{cell}: {what}, {outcome.wall:.2f} s, {outcome.attempts} attempts\n  " + "\n  ".join(
        problems
    )


# --- failures a retry cannot fix -------------------------------------------------------------------------

PROXY_USER, PROXY_PASSWORD = "gateway-user", "proxy-S3CRET-pw"


def _chain(err: BaseException) -> str:
    """Every message of ``err`` and what caused it, as a user would see them logged."""
    parts, seen = [], set()
    node: Optional[BaseException] = err
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        parts.append(f"{type(node).__name__}: {node} {node!r}")
        node = node.__cause__ or node.__context__
    return "\n".join(parts)


@pytest.mark.parametrize(
    "scheme",
    [
        pytest.param("http", id="plain-http-through-the-proxy"),
        pytest.param("https", id="CONNECT"),
    ],
)
@pytest.mark.parametrize("proxy_name", ["tinyproxy", "proxy.py"])
def test_a_proxy_407_is_not_retried_and_hides_the_credentials(
    proxy_name: str, scheme: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    start = tinyproxy if proxy_name == "tinyproxy" else proxy_py
    # A pass-through FaultProxy in front of the proxy counts what the client sent it.
    with contextlib.ExitStack() as stack:
        proxy = stack.enter_context(start(auth=(PROXY_USER, "the-right-password")))
        fake = stack.enter_context(FakeDeepSeek())
        counter = stack.enter_context(FaultProxy(("127.0.0.1", proxy.port)))
        wrong = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{counter.port}"
        monkeypatch.setenv(f"{scheme.upper()}_PROXY", wrong)
        host, port = address_of(fake.base_url)
        client = dp.DeepSeekClient(
            KEY, base_url=f"{scheme}://{host}:{port}", max_retries=2, timeout=dp.Timeout(5, connect=2)
        )
        with pytest.raises(dp.DeepSeekError) as caught:
            client.chat(PROMPT)
        sent = counter.upstream_bytes.lower()
    err = caught.value
    assert sent.count(b"proxy-authorization:") == 1, "retried a proxy authentication failure"
    assert fake.stats.requests == 0
    text = _chain(err)
    assert PROXY_PASSWORD not in text
    assert "407" in str(err) or "proxy" in str(err).lower()


def test_an_untrusted_certificate_is_not_retried() -> None:
    trustme = pytest.importorskip("trustme")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)  # a CA the client does not trust
    with FakeDeepSeek() as fake, FaultProxy(address_of(fake.base_url), tls=context) as front:
        client = dp.DeepSeekClient(KEY, base_url=front.url, max_retries=2, timeout=dp.Timeout(5, connect=2))
        with pytest.raises(dp.DeepSeekError) as caught:
            client.chat(PROMPT)
        handshakes = front.connections
    assert "certificate" in str(caught.value).lower()
    assert handshakes == 1, f"{handshakes} TLS handshakes: the certificate failure was retried"
    assert fake.stats.requests == 0


# --- the fault proxy itself ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "toxic",
    [
        Toxic("latency", seconds=0.05),
        Toxic("bandwidth", rate=20_000),
        Toxic("slicer", size=64, seconds=0.001),
        Toxic("slow_close", seconds=0.05),
    ],
    ids=lambda toxic: toxic.kind,
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_benign_toxic_delays_but_keeps_the_answer(toxic: Toxic, stream: bool) -> None:
    with FakeDeepSeek() as fake, FaultProxy(address_of(fake.base_url), toxic) as front:
        client = dp.DeepSeekClient(KEY, base_url=front.url, max_retries=0, timeout=10)
        answer = client.chat(PROMPT, stream=stream).content
        client.close()
    assert answer == FakeDeepSeek.answer_for(PROMPT)


def test_a_blackhole_ends_at_the_read_timeout() -> None:
    with FakeDeepSeek() as fake, FaultProxy(address_of(fake.base_url), Toxic("blackhole")) as front:
        client = dp.DeepSeekClient(KEY, base_url=front.url, max_retries=0, timeout=dp.Timeout(5, read=0.3))
        start = time.monotonic()
        with pytest.raises(dp.APITimeoutError):
            client.chat(PROMPT)
        assert time.monotonic() - start < 0.3 + SLACK
        client.close()


def test_streams_pass_a_real_proxy_untouched(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxies themselves work for a healthy call (so a failing cell is about the fault)."""
    for name, proxy in shared.proxies.items():
        with FakeDeepSeek() as fake:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            session = requests.Session()
            response = session.post(
                fake.base_url + "/chat/completions",
                json={"model": "deepseek-flash", "messages": [{"role": "user", "content": PROMPT}], "stream": True},
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=5,
            )
            assert response.status_code == 200, (name, response.text)
            assert b"data: [DONE]" in response.content, name
            assert fake.stats.requests == 1
            session.close()
    assert streams("chat_stream") and os.environ["HTTP_PROXY"]
