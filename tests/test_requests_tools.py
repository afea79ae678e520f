"""The test tools users mock requests with, each driving the client through every entry point.

A user's test suite that mocks requests must see every call the client makes, and nothing may
leave for the network: ``DEEPSEEK_BASE_URL`` points at a 127.0.0.1 port where nothing listens, so
a call that goes around the tool fails loudly instead of reaching anything. Tools: ``responses``,
requests-mock (its ``Mocker`` and a mounted ``Adapter``), vcrpy (record against FakeDeepSeek,
stop it, replay), betamax (on a session given to the client, and on ``client.session``), and
pytest-recording (its ``vcr`` marker and fixture).

Each tool also has a control test that drives plain requests the same way: it shows the tool's
setup works, so a failure of the client's test is the client's (issue 22, item 2).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Tuple

import pytest
import requests

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek

from .proxies import ENTRIES, drive, free_port, streams

betamax = pytest.importorskip("betamax")
requests_mock = pytest.importorskip("requests_mock")
responses = pytest.importorskip("responses")
vcrpy = pytest.importorskip("vcr")

KEY = "sk-tools-test-key"
PROMPT = "mocked or recorded?"
ANSWER = "a mocked answer"


# --- answers the mocks give ----------------------------------------------------------------------------


def completion_body(content: str) -> bytes:
    """A non-streamed ``chat.completion`` carrying ``content``."""
    message = {"role": "assistant", "content": content}
    body = {
        "id": "mock-1",
        "object": "chat.completion",
        "model": "deepseek-flash",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    }
    return json.dumps(body).encode()


def sse_body(content: str) -> bytes:
    """A whole SSE stream carrying ``content``: ``data: {...}\\n\\n`` events, a finish, ``data: [DONE]``."""

    def event(delta: Dict[str, Any], finish: Any = None) -> bytes:
        chunk = {"id": "mock-1", "object": "chat.completion.chunk", "model": "deepseek-flash"}
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    half = len(content) // 2
    parts = [event({"role": "assistant", "content": ""}), event({"content": content[:half]})]
    parts += [event({"content": content[half:]}), event({}, "stop"), b"data: [DONE]\n\n"]
    return b"".join(parts)


def answer(body: Any) -> Tuple[Dict[str, str], bytes]:
    """Headers and body answering a request whose JSON body is ``body`` (SSE when it asks to stream)."""
    if json.loads(body).get("stream"):
        return {"Content-Type": "text/event-stream"}, sse_body(ANSWER)
    return {"Content-Type": "application/json"}, completion_body(ANSWER)


@pytest.fixture
def dead_url(monkeypatch: pytest.MonkeyPatch) -> str:
    """``DEEPSEEK_BASE_URL`` at a 127.0.0.1 port nothing listens on (a bypass fails there, loudly)."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("DEEPSEEK_BASE_URL", url)
    monkeypatch.setenv("DEEPSEEK_API_KEY", KEY)
    return url


def client_for(session: Any = None) -> dp.DeepSeekClient:
    """A client from the environment; no retries, so a bypass shows as one loud failure."""
    return dp.DeepSeekClient(session=session, max_retries=0, timeout=5)


def plain_call(session: requests.Session, url: str, entry: str) -> str:
    """What the client's call amounts to, made with plain requests (for the control tests)."""
    body = {"model": "deepseek-flash", "messages": [{"role": "user", "content": PROMPT}]}
    if streams(entry):
        body["stream"] = True
    response = session.post(url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    response.raise_for_status()
    if not streams(entry):
        return str(response.json()["choices"][0]["message"]["content"])
    content = []
    for line in response.iter_lines():
        if line.startswith(b"data: {"):
            content.extend(c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"])
    return "".join(content)


#: betamax 0.9 stamps its cassettes with ``datetime.utcnow()``, deprecated since Python 3.12: its
#: warning, not ours, would be an error under the suite's ``filterwarnings``.
BETAMAX_UTCNOW = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")

# --- responses (patches HTTPAdapter.send) ----------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_responses_sees_every_call(entry: str, dead_url: str) -> None:
    def callback(request: Any) -> Tuple[int, Dict[str, str], bytes]:
        headers, body = answer(request.body)
        return 200, headers, body

    client = client_for()
    with responses.RequestsMock() as mock:
        mock.add_callback(responses.POST, dead_url + "/chat/completions", callback=callback)
        assert drive(client, entry, PROMPT) == ANSWER
        assert len(mock.calls) == 1
        assert json.loads(mock.calls[0].request.body)["messages"][0]["content"] == PROMPT


# --- requests-mock (Mocker patches Session.send; Adapter is mounted) ---------------------------------------


def _requests_mock_content(request: Any, context: Any) -> bytes:
    headers, body = answer(request.body)
    context.headers.update(headers)
    return body


@pytest.mark.parametrize("entry", ENTRIES)
def test_requests_mock_mocker_sees_every_call(entry: str, dead_url: str) -> None:
    client = client_for()
    with requests_mock.Mocker() as mock:
        mock.post(dead_url + "/chat/completions", content=_requests_mock_content)
        assert drive(client, entry, PROMPT) == ANSWER
        assert mock.call_count == 1


@pytest.mark.parametrize("entry", ["chat", "chat_stream"])
def test_control_requests_mock_mocker_with_plain_requests(entry: str, dead_url: str) -> None:
    with requests_mock.Mocker() as mock:
        mock.post(dead_url + "/chat/completions", content=_requests_mock_content)
        assert plain_call(requests.Session(), dead_url, entry) == ANSWER
        assert mock.call_count == 1


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("base", id="on-the-base-url"),
        pytest.param("http://", id="on-the-scheme"),
    ],
)
@pytest.mark.parametrize("entry", ENTRIES)
def test_a_mounted_requests_mock_adapter_sees_every_call(entry: str, prefix: str, dead_url: str) -> None:
    adapter = requests_mock.Adapter()
    adapter.register_uri("POST", dead_url + "/chat/completions", content=_requests_mock_content)
    session = requests.Session()
    session.mount(dead_url if prefix == "base" else prefix, adapter)
    client = client_for(session)
    assert drive(client, entry, PROMPT) == ANSWER
    assert adapter.call_count == 1


# --- vcrpy (patches urllib3's connection classes) --------------------------------------------------------


def _record_then_replay(tmp_path: Any, entry: str, call: Any) -> Tuple[str, str, int, int]:
    """Record ``call(base_url)`` against FakeDeepSeek into a cassette, stop the server, replay it.

    Returns (recorded answer, replayed answer, interactions recorded, interactions played).
    """
    path = str(tmp_path / f"{entry}.yaml")
    with FakeDeepSeek() as fake:
        base_url = fake.base_url
        with vcrpy.use_cassette(path, record_mode="once") as cassette:
            recorded = call(base_url)
        written = len(cassette)
        assert fake.stats.requests == 1  # recording went to the server
    with vcrpy.use_cassette(path, record_mode="none", allow_playback_repeats=False) as cassette:
        replayed = call(base_url)  # nothing listens there any more: only the cassette can answer
        played = cassette.play_count
    return recorded, replayed, written, played


@pytest.mark.parametrize("entry", ENTRIES)
def test_vcrpy_records_then_replays_with_the_server_gone(entry: str, tmp_path: Any) -> None:
    def call(base_url: str) -> str:
        return drive(dp.DeepSeekClient(KEY, base_url=base_url, max_retries=0, timeout=5), entry, PROMPT)

    recorded, replayed, written, played = _record_then_replay(tmp_path, entry, call)
    assert recorded == FakeDeepSeek.answer_for(PROMPT)
    assert (written, played) == (1, 1)
    assert replayed == recorded


@pytest.mark.parametrize("entry", ["chat", "chat_stream"])
def test_control_vcrpy_with_plain_requests(entry: str, tmp_path: Any) -> None:
    recorded, replayed, written, played = _record_then_replay(
        tmp_path, entry, lambda base_url: plain_call(requests.Session(), base_url, entry)
    )
    assert recorded == replayed == FakeDeepSeek.answer_for(PROMPT)
    assert (written, played) == (1, 1)


# --- betamax (mounts its adapter on the session for http:// and https://) -----------------------------------


def _betamax_round(tmp_path: Any, entry: str, wrap: str, call: Any) -> Tuple[str, str, int]:
    """Record through betamax against FakeDeepSeek, stop it, replay; (recorded, replayed, interactions)."""
    betamax_cls = betamax.Betamax
    options = {"match_requests_on": ["method", "uri"]}

    def run(base_url: str, record: str) -> Tuple[str, int]:
        if wrap == "plain-session":  # no client: the control
            session = requests.Session()
            recorder = betamax_cls(session, cassette_library_dir=str(tmp_path))
            with recorder.use_cassette(entry, record=record, **options):
                content = call(session, base_url)
                interactions = len(recorder.current_cassette.interactions)
            session.close()
            return content, interactions
        if wrap == "client.session":
            client = dp.DeepSeekClient(KEY, base_url=base_url, max_retries=0, timeout=5)
            recorder = betamax_cls(client.session, cassette_library_dir=str(tmp_path))
        else:
            session = requests.Session()
            recorder = betamax_cls(session, cassette_library_dir=str(tmp_path))
            client = dp.DeepSeekClient(KEY, base_url=base_url, max_retries=0, timeout=5, session=session)
        with recorder.use_cassette(entry, record=record, **options):
            content = call(client, base_url)
            interactions = len(recorder.current_cassette.interactions)
        client.close()
        client.session.close()
        return content, interactions

    with FakeDeepSeek() as fake:
        base_url = fake.base_url
        recorded, interactions = run(base_url, "once")
        assert fake.stats.requests == 1
    replayed, _ = run(base_url, "none")
    return recorded, replayed, interactions


@pytest.mark.parametrize(
    "wrap",
    [
        "session-given-to-the-client",
        "client.session",  # Betamax mounts on every prefix the session has, the client's own included
    ],
)
@BETAMAX_UTCNOW
@pytest.mark.parametrize("entry", ENTRIES)
def test_betamax_records_then_replays_with_the_server_gone(entry: str, wrap: str, tmp_path: Any) -> None:
    recorded, replayed, interactions = _betamax_round(
        tmp_path, entry, wrap, lambda client, base_url: drive(client, entry, PROMPT)
    )
    assert recorded == FakeDeepSeek.answer_for(PROMPT)
    assert interactions == 1
    assert replayed == recorded


@BETAMAX_UTCNOW
@pytest.mark.parametrize("entry", ["chat", "chat_stream"])
def test_control_betamax_with_plain_requests(entry: str, tmp_path: Any) -> None:
    recorded, replayed, interactions = _betamax_round(
        tmp_path, entry, "plain-session", lambda session, base_url: plain_call(session, base_url, entry)
    )
    assert recorded == replayed == FakeDeepSeek.answer_for(PROMPT)
    assert interactions == 1


# --- pytest-recording (vcrpy as pytest markers and fixtures) -------------------------------------------------
# What it adds beyond vcrpy: the cassette opened by the ``vcr`` marker around the whole test, and
# its ``vcr`` fixture. (Its ``block_network`` is not used: the guard raises RuntimeError inside
# urllib3's create_connection, which leaks the socket to a later test as a ResourceWarning; a
# replay against a stopped server proves the same thing: no connection.)


@pytest.fixture
def vcr_cassette_dir(tmp_path: Any) -> str:
    """This test's own cassette directory."""
    directory = tmp_path / "cassettes"
    directory.mkdir()
    return str(directory)


@pytest.fixture
def replay_url() -> str:
    """Where the replay tests' cassette was recorded: a port nothing listens on once it is made."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def vcr_config(request: pytest.FixtureRequest, vcr_cassette_dir: str, replay_url: str) -> Dict[str, Any]:
    """Record once; for a replay test (``default_cassette``), first record the interaction it replays.

    That cassette is made with plain requests against a FakeDeepSeek stopped right after, here
    because pytest-recording's ``vcr`` fixture loads the cassette before the test begins.
    """
    marker = request.node.get_closest_marker("default_cassette")
    if marker is not None:
        entry = request.node.callspec.params["entry"]
        path = os.path.join(vcr_cassette_dir, marker.args[0])
        port = int(replay_url.rsplit(":", 1)[1])
        with FakeDeepSeek(port=port), vcrpy.use_cassette(path, record_mode="all"):
            plain_call(requests.Session(), replay_url, entry)
    return {"record_mode": "once"}


@pytest.mark.vcr
@pytest.mark.parametrize("entry", ENTRIES)
def test_pytest_recording_vcr_marker_records_every_call(entry: str, vcr: Any, fake_deepseek: FakeDeepSeek) -> None:
    client = dp.DeepSeekClient(KEY, base_url=fake_deepseek.base_url, max_retries=0, timeout=5)
    assert drive(client, entry, PROMPT) == FakeDeepSeek.answer_for(PROMPT)
    assert len(vcr) == 1


@pytest.mark.vcr(record_mode="none")
@pytest.mark.default_cassette("replay.yaml")
@pytest.mark.parametrize("entry", ["chat", "chat_stream", "chat_on_chunk"])
def test_pytest_recording_replays_with_the_server_gone(entry: str, vcr: Any, replay_url: str) -> None:
    client = dp.DeepSeekClient(KEY, base_url=replay_url, max_retries=0, timeout=5)
    content = drive(client, entry, PROMPT)
    assert content == FakeDeepSeek.answer_for(PROMPT)
    assert vcr.play_count == 1


@pytest.mark.vcr(record_mode="none")
@pytest.mark.default_cassette("replay.yaml")
@pytest.mark.parametrize("entry", ["chat", "chat_stream"])
def test_control_pytest_recording_replay_with_plain_requests(entry: str, vcr: Any, replay_url: str) -> None:
    assert plain_call(requests.Session(), replay_url, entry) == FakeDeepSeek.answer_for(PROMPT)
    assert vcr.play_count == 1
