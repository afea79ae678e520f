"""Properties, checked with hypothesis: the SSE decoder ignores how bytes are split, and
attempts and deadlines add up for any sequence of per-attempt outcomes.
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import List, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import deepseek_pool as dp
from deepseek_pool.wire.sse import ServerSentEvent, SSEDecoder

from .rawserver import RawServer, respond, run_step

# Hypothesis's report of a failing example touches mypy_extensions.TypedDict, which warns; under
# filterwarnings=error that warning would turn a test failure into a pytest INTERNALERROR.
pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")

# --- (1) the SSE decoder: splitting never changes the events -------------------------------------------

EOLS = ["\n", "\r\n", "\r"]
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

#: an item of a stream: ("data", text) is an event (text may span lines), ("comment", text) a comment line
Item = Tuple[str, str]
items = st.lists(
    st.one_of(
        st.tuples(st.just("data"), st.text(max_size=40)),
        st.tuples(st.just("comment"), st.text(max_size=20).map(lambda t: _LINE_BREAK.sub(" ", t))),
    ),
    max_size=8,
)


def encode(stream_items: Sequence[Item], eols: Sequence[str]) -> Tuple[bytes, List[ServerSentEvent]]:
    """The stream's bytes (line endings drawn from ``eols`` in turn) and the events it means."""
    lines: List[str] = []
    expected: List[ServerSentEvent] = []
    for kind, text in stream_items:
        if kind == "comment":
            lines.append(":" + text)
        else:
            parts = _LINE_BREAK.split(text)
            lines.extend("data: " + part for part in parts)
            lines.append("")  # the blank line that dispatches
            expected.append(ServerSentEvent("message", "\n".join(parts)))
    out: List[str] = []
    previous = ""
    for i, line in enumerate(lines):
        eol = eols[i % len(eols)]
        if previous == "\r" and line == "" and eol.startswith("\n"):
            eol = "\r"  # CR then LF would be one CRLF, not two line endings: not what we mean
        out.append(line + eol)
        previous = eol
    return "".join(out).encode("utf-8"), expected


def decode(chunks: Sequence[bytes]) -> List[ServerSentEvent]:
    decoder = SSEDecoder()
    events: List[ServerSentEvent] = []
    for piece in chunks:
        events.extend(decoder.feed(piece))
    events.extend(decoder.close())
    return events


@settings(max_examples=300, deadline=None, database=None)
@given(
    stream_items=items,
    eols=st.lists(st.sampled_from(EOLS), min_size=1, max_size=4),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=12),
)
def test_sse_decoding_does_not_depend_on_the_split(
    stream_items: List[Item], eols: List[str], cuts: List[float]
) -> None:
    data, expected = encode(stream_items, eols)
    positions = sorted({int(c * len(data)) for c in cuts})  # anywhere: inside CRLF, inside UTF-8
    bounds = [0, *positions, len(data)]
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    whole = decode([data])
    assert whole == expected
    assert decode(chunks) == whole


@settings(max_examples=100, deadline=None, database=None)
@given(stream_items=items, eol=st.sampled_from(EOLS))
def test_sse_decoding_byte_by_byte(stream_items: List[Item], eol: str) -> None:
    data, expected = encode(stream_items, [eol])
    assert decode([data[i : i + 1] for i in range(len(data))]) == decode([data]) == expected


# --- (2) attempts and deadlines for any sequence of outcomes -------------------------------------------

KEY = "sk-SECRET-0123456789"
CALL_TIMEOUT = 5.0
OUTCOMES = ["503", "429", "reset", "empty", "ok"]
OK_BODY = json.dumps(
    {"id": "c1", "choices": [{"index": 0, "message": {"content": "fine"}, "finish_reason": "stop"}]}
).encode()
SCRIPTS = {
    "503": [respond(503, b'{"error": {"message": "busy"}}')],
    "429": [respond(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "0"})],
    "reset": [("reset",)],
    "empty": [respond(200, b"")],
    "ok": [respond(200, OK_BODY)],
}
ERRORS = {
    "503": dp.ServiceUnavailableError,
    "429": dp.RateLimitError,
    "reset": dp.APIConnectionError,
    "empty": dp.IncompleteResponseError,
}


class Scripted:
    """Serves ``outcomes`` in order, one per request; after them, 503s."""

    def __init__(self, outcomes: Sequence[str]) -> None:
        self.outcomes = list(outcomes)
        self.served: List[str] = []

    def __call__(self, conn: socket.socket, request: bytes) -> bool:
        n = len(self.served)
        outcome = self.outcomes[n] if n < len(self.outcomes) else "503"
        self.served.append(outcome)
        return any(run_step(conn, request, step) for step in SCRIPTS[outcome])


@pytest.mark.timeout(120)
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(outcomes=st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=5), max_retries=st.integers(0, 3))
@example(outcomes=["empty"], max_retries=3)  # a body retry, then urllib3's: found by this test, kept
def test_attempts_add_up_for_any_sequence_of_outcomes(outcomes: List[str], max_retries: int) -> None:
    first_ok = outcomes.index("ok") if "ok" in outcomes else len(outcomes) + 99
    script = Scripted(outcomes)
    server = RawServer(script)
    with server as (host, port):
        client = dp.DeepSeekClient(
            KEY,
            base_url=f"http://{host}:{port}",
            timeout=dp.Timeout(2.0, connect=0.5),
            call_timeout=CALL_TIMEOUT,
            max_retries=dp.DeepSeekRetry(max_retries, backoff_factor=0.01, backoff_jitter=0),
        )
        start = time.monotonic()
        try:
            completion = client.chat("x")
            error = None
        except Exception as err:
            completion, error = None, err
        wall = time.monotonic() - start
    assert server.requests == min(first_ok + 1, max_retries + 1), (script.served, error)
    assert wall <= CALL_TIMEOUT + 0.5
    if first_ok < max_retries + 1:
        assert error is None, (script.served, error)
        assert completion is not None and completion.content == "fine"
    else:
        assert isinstance(error, dp.DeepSeekError), (script.served, error)
        last = script.served[-1]
        assert isinstance(error, ERRORS[last]), (script.served, error)
        assert server.connections <= server.requests


# --- (3) the chunked-body reader: framing split anywhere gives the same payload ------------------------


class _SplitFile:
    """A socket file whose ``read1`` hands out the bytes in the given pieces."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self._pieces = list(pieces)

    def read1(self, size: int) -> bytes:
        if not self._pieces:
            return b""
        piece = self._pieces.pop(0)
        if len(piece) > size:
            self._pieces.insert(0, piece[size:])
            piece = piece[:size]
        return piece


class _FakeResponse:
    """What the chunked reader touches of urllib3's and http.client's responses."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self.fp = _SplitFile(pieces)
        self.released = self.closed = False

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        self.released = True


def _framed(payloads: Sequence[bytes], extension: bool, trailer: bool) -> bytes:
    out = b""
    for payload in payloads:
        out += b"%x%s\r\n%s\r\n" % (len(payload), b";ext=1" if extension else b"", payload)
    return out + b"0\r\n" + (b"X-Trailer: 1\r\n" if trailer else b"") + b"\r\n"


def _split(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


@settings(max_examples=300, deadline=None, database=None)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    cuts=st.lists(st.integers(0, 4000), max_size=12),
    extension=st.booleans(),
    trailer=st.booleans(),
)
def test_chunked_reading_does_not_depend_on_the_split(
    payloads: List[bytes], cuts: List[int], extension: bool, trailer: bool
) -> None:
    from deepseek_pool.wire.body import _dechunk

    raw = _FakeResponse(_split(_framed(payloads, extension, trailer), cuts))
    assert b"".join(_dechunk(raw, raw)) == b"".join(payloads)  # type: ignore[arg-type]
    assert raw.released and raw.closed  # read to its end: back to the pool


@settings(max_examples=100, deadline=None, database=None)
@given(payloads=st.lists(st.binary(min_size=1, max_size=50), min_size=1, max_size=4), cut=st.integers(1, 400))
def test_a_chunked_body_cut_short_is_a_protocol_error_and_closes(payloads: List[bytes], cut: int) -> None:
    from urllib3.exceptions import ProtocolError

    from deepseek_pool.wire.body import _dechunk

    data = _framed(payloads, False, False)
    cut = min(cut, len(data) - 3)  # at least the final blank line and one byte of "0\r\n" missing
    raw = _FakeResponse([data[:cut]])
    with pytest.raises(ProtocolError):
        b"".join(_dechunk(raw, raw))  # type: ignore[arg-type]
    assert raw.closed and not raw.released


def test_bytes_after_a_chunked_body_close_the_connection() -> None:
    from deepseek_pool.wire.body import _dechunk

    raw = _FakeResponse([_framed([b"hello"], False, False) + b"HTTP/1.1 200 OK\r\n"])
    assert b"".join(_dechunk(raw, raw)) == b"hello"  # type: ignore[arg-type]
    assert raw.closed and not raw.released
