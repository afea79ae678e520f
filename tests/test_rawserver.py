"""The raw-socket test server works with plain requests: scripts, keep-alive, cuts, prompt stop."""

from __future__ import annotations

import socket
import time
from typing import Iterator, List

import pytest
import requests

from .rawserver import (
    CLOSE,
    LAST_CHUNK,
    RawServer,
    Step,
    chunk,
    head,
    respond,
    script,
    sequence,
    sse_head,
    stop_event,
)

TIMEOUT = 5.0  # every client call is bounded


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # loopback only, never a proxy
        yield s


def test_builders() -> None:
    assert chunk(b"data") == b"4\r\ndata\r\n"
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"
    assert head(404) == b"HTTP/1.1 404 Not Found\r\n\r\n"
    assert head(299, {"X-A": "1"}) == b"HTTP/1.1 299 Unknown\r\nX-A: 1\r\n\r\n"
    assert respond(200, b"{}") == (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


def test_keep_alive_reuses_one_connection(session: requests.Session) -> None:
    server = RawServer(script([respond(200, b'{"ok": true}')], close=False))
    with server as (host, port):
        for _ in range(3):
            r = session.get(f"http://{host}:{port}/models", timeout=TIMEOUT)
            assert r.json() == {"ok": True}
    assert (server.connections, server.requests) == (1, 3)
    assert server.raw_requests[0].startswith(b"GET /models HTTP/1.1\r\n")


def test_close_after_script_means_new_connections(session: requests.Session) -> None:
    # close=True is the default. "Connection: close" tells the client not to pool the connection;
    # without it, reusing a connection that the server is closing is a race (RemoteDisconnected).
    server = RawServer(script([respond(200, b"{}", {"Connection": "close"})]))
    with server as (host, port):
        for _ in range(3):
            assert session.get(f"http://{host}:{port}/", timeout=TIMEOUT).status_code == 200
    assert (server.connections, server.requests) == (3, 3)


def test_request_bodies_recorded(session: requests.Session) -> None:
    def gen() -> Iterator[bytes]:
        yield b"chunked "
        yield b"body"

    server = RawServer(script([respond(200, b"{}")], close=False))
    with server as (host, port):
        session.post(f"http://{host}:{port}/chat/completions", json={"a": 1}, timeout=TIMEOUT)
        session.post(f"http://{host}:{port}/chat/completions", data=gen(), timeout=TIMEOUT)
        session.post(f"http://{host}:{port}/chat/completions", data=b"", timeout=TIMEOUT)
    assert server.bodies == [b'{"a": 1}', b"chunked body", b""]
    assert server.connections == 1
    assert b"Transfer-Encoding: chunked" in server.raw_requests[1]


def test_split_chunked_stream_with_pauses(session: requests.Session) -> None:
    body = chunk(b"data: hel") + chunk(b"lo\n\n") + LAST_CHUNK
    steps: List[Step] = [sse_head()]
    # Cut the wire bytes at awkward places (inside chunk sizes, CRLFs and data), with pauses.
    for i in range(0, len(body), 5):
        steps += [body[i : i + 5], ("sleep", 0.002)]
    server = RawServer(script(steps, close=False))
    with server as (host, port):
        r = session.get(f"http://{host}:{port}/", stream=True, timeout=TIMEOUT)
        assert r.headers["Content-Type"] == "text/event-stream"
        assert b"".join(r.iter_content(chunk_size=None)) == b"data: hello\n\n"
        # The body ended cleanly, so the connection goes back to the pool.
        assert session.get(f"http://{host}:{port}/", timeout=TIMEOUT).content == b"data: hello\n\n"
    assert server.connections == 1


def test_cut_chunked_stream_is_an_error(session: requests.Session) -> None:
    server = RawServer(script([sse_head(), chunk(b"data: a\n\n"), b"5\r\nda"]))
    with server as (host, port):
        r = session.get(f"http://{host}:{port}/", stream=True, timeout=TIMEOUT)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            b"".join(r.iter_content(chunk_size=None))


def test_reset_step(session: requests.Session) -> None:
    server = RawServer(script([("reset",)]))
    with server as (host, port), pytest.raises(requests.exceptions.ConnectionError):
        session.get(f"http://{host}:{port}/", timeout=TIMEOUT)


def test_sequence_fails_then_answers(session: requests.Session) -> None:
    server = RawServer(
        sequence(script([respond(503, b"{}")], close=False), script([respond(200, b'{"n": 2}')], close=False))
    )
    with server as (host, port):
        codes = [session.get(f"http://{host}:{port}/", timeout=TIMEOUT).status_code for _ in range(3)]
    assert codes == [503, 200, 200]


def test_endless_trickle_does_not_block_exit(session: requests.Session) -> None:
    server = RawServer(script([sse_head(), ("trickle", chunk(b": keep-alive\n\n"), 0.005)]))
    with server as (host, port):
        r = session.get(f"http://{host}:{port}/", stream=True, timeout=TIMEOUT)
        pieces = r.iter_content(chunk_size=None)
        assert next(pieces).startswith(b": keep-alive\n\n")
        started = time.monotonic()
        server.close()  # what __exit__ does, timed while the handler is still trickling
        assert time.monotonic() - started < 1.0
        r.close()
    assert server.closed == server.connections == 1


def test_blocked_custom_handler_does_not_block_exit(session: requests.Session) -> None:
    def handler(conn: socket.socket, request: bytes) -> object:
        stop_event().wait(60)
        return CLOSE

    server = RawServer(handler)
    started = time.monotonic()
    with server as (host, port), pytest.raises(requests.exceptions.ReadTimeout):
        session.get(f"http://{host}:{port}/", timeout=0.05)
    assert time.monotonic() - started < 1.5


def test_wait_close_sees_the_client_hang_up(session: requests.Session) -> None:
    server = RawServer(script([sse_head(), chunk(b"data: a\n\n"), ("wait_close", TIMEOUT)]))
    with server as (host, port):
        r = session.get(f"http://{host}:{port}/", stream=True, timeout=TIMEOUT)
        # Keep the generator: an abandoned urllib3 stream generator closes the connection itself.
        pieces = r.iter_content(chunk_size=None)
        assert next(pieces) == b"data: a\n\n"
        time.sleep(0.05)
        assert server.closed == 0
        r.close()  # unfinished body: requests closes the socket rather than pooling it
        assert server.wait_until(lambda s: s.closed == 1, TIMEOUT)


def test_handler_bug_is_reported_on_exit(session: requests.Session) -> None:
    def handler(conn: socket.socket, request: bytes) -> object:
        raise KeyError("oops")

    server = RawServer(handler)
    # The server's __exit__ raises (outer), after the client saw the connection drop (inner).
    failed = pytest.raises(AssertionError, match="oops")
    with failed, server as (host, port), pytest.raises(requests.exceptions.ConnectionError):
        session.get(f"http://{host}:{port}/", timeout=TIMEOUT)
    assert isinstance(server.errors[0], KeyError)
