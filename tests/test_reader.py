"""The shared stream reader (deepseek_pool.wire.reader): one thread reads every aggregated stream.

Over real sockets on 127.0.0.1 (tests/rawserver.py, and a TLS server with a trustme
certificate): which streams it takes and which it leaves to their thread, many streams
interleaved, bytes that came with the head, an abort that ends only its own stream,
Ctrl-C while a thread waits for it, a forked child, and TLS records. The deadline,
silence and ``[DONE]`` guarantees are checked over the fault matrix (tests/test_fault_matrix.py)
and tests/test_silence.py, which run both the reader and the calling thread's read.
"""

from __future__ import annotations

import concurrent.futures as cf
import random
import signal
import socket
import ssl
import threading
import time
from typing import Any, Iterator, List, Optional, Tuple

import pytest

import deepseek_pool as dp
from deepseek_pool.wire import reader as reader_module
from deepseek_pool.wire.reader import READER

from .rawserver import RawServer, script, sse_head
from .test_processes import run_in_fork
from .test_silence import DONE, event

KEY = "sk-SECRET-0123456789"
READER_THREAD = "deepseek-stream-reader"
#: an answer in three events a little apart, so each comes in a read of its own
SLOW = [sse_head(), ("sleep", 0.05), event("a"), ("sleep", 0.05), event("b"), ("sleep", 0.05), event("c", "stop"), DONE]


def client_for(url: str, **options: Any) -> dp.DeepSeekClient:
    options.setdefault("max_retries", 0)
    return dp.DeepSeekClient(KEY, base_url=url, timeout=dp.Timeout(10), **options)


class FirstTokenThread(dp.CallControl):
    """Notes the thread that saw the first token: the reader's, or the caller's."""

    thread: Optional[str] = None

    def first_token(self, at: float) -> None:
        self.thread = threading.current_thread().name


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> List[Optional[bool]]:
    """What READER.read answered for each stream handed to it (None: it left the body to its thread)."""
    answers: List[Optional[bool]] = []
    real = READER.read

    def read(stream: Any) -> Optional[bool]:
        answer = real(stream)
        answers.append(answer)
        return answer

    monkeypatch.setattr(READER, "read", read)
    return answers


def test_an_aggregated_stream_is_read_on_the_reader_thread(taken: List[Optional[bool]]) -> None:
    with RawServer(script(SLOW, close=False)) as address:
        control = FirstTokenThread()
        completion = client_for(_url(address)).chat("x", stream=True, control=control)
    assert completion.content == "abc" and completion.finish_reason == "stop"
    assert control.thread == READER_THREAD and taken == [True]  # read to [DONE] by the reader


def test_streams_someone_watches_are_read_by_their_own_thread(taken: List[Optional[bool]]) -> None:
    with RawServer(script(SLOW, close=False)) as address:
        url = _url(address)
        seen: List[str] = []
        completion = client_for(url).chat(
            "x", stream=True, on_chunk=lambda c: seen.append(threading.current_thread().name)
        )
        assert completion.content == "abc" and set(seen) == {threading.current_thread().name}
        with client_for(url).chat_stream("x") as stream:
            assert "".join(c.content or "" for c in stream) == "abc"
        control = FirstTokenThread()
        assert client_for(url, shared_stream_reader=False).chat("x", stream=True, control=control).content == "abc"
        assert control.thread == threading.current_thread().name
    assert taken == []


def test_a_pools_streams_go_to_the_reader_unless_the_pool_has_on_chunk(taken: List[Optional[bool]]) -> None:
    with RawServer(script(SLOW, close=False)) as address:
        client = client_for(_url(address))
        with dp.DeepSeekPool(client, max_workers=4) as pool:
            results = list(pool.as_completed([{"prompt": f"p{i}", "stream": True} for i in range(4)]))
        assert [r.completion.content for r in results if r.completion] == ["abc"] * 4
        assert all(r.first_token is not None and 0.04 < r.first_token < 5 for r in results)
        assert taken == [True] * 4
        workers: List[str] = []
        with dp.DeepSeekPool(client, max_workers=2, on_chunk=lambda r, c: workers.append(c.content or "")) as pool:
            results = list(pool.as_completed([{"prompt": "p", "stream": True}]))
        assert results[0].ok and "".join(workers) == "abc" and results[0].first_token is not None
        assert taken == [True] * 4  # the pool's on_chunk watches: its worker read the stream


def _url(address: Tuple[str, int]) -> str:
    return f"http://{address[0]}:{address[1]}"


def _split_stream(n: int, rng: random.Random) -> List[Any]:
    """A stream of ``n`` events whose bytes go out in random pieces a little apart."""
    data = b"".join(event(f"{i},") for i in range(n - 1)) + event(f"{n - 1}.", "stop") + DONE
    steps: List[Any] = [sse_head()]
    pos = 0
    while pos < len(data):
        size = rng.randint(1, 400)
        steps += [data[pos : pos + size], ("sleep", rng.random() * 0.01)]
        pos += size
    return steps


def test_many_interleaved_streams_through_one_reader_are_each_whole(taken: List[Optional[bool]]) -> None:
    rng = random.Random(7)
    scripts = [_split_stream(30, rng) for _ in range(8)]
    calls = 0
    lock = threading.Lock()

    def handler(conn: socket.socket, request: bytes) -> bool:
        nonlocal calls
        with lock:
            steps = scripts[calls % len(scripts)]
            calls += 1
        return script(steps, close=False)(conn, request)  # type: ignore[return-value]

    expected = "".join(f"{i}," for i in range(29)) + "29."
    server = RawServer(handler)
    with server as address:
        client = client_for(_url(address))
        with dp.DeepSeekPool(client, max_workers=24) as pool:
            results = list(pool.as_completed([{"prompt": f"p{i}", "stream": True} for i in range(72)]))
    assert sorted(r.index for r in results) == list(range(72))
    assert all(r.ok and r.completion is not None and r.completion.content == expected for r in results)
    assert len(taken) == 72 and all(taken)
    assert server.connections <= 24  # every body read to its end gave its connection back


def test_a_connection_leaves_the_reader_before_it_goes_back_to_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    # Back in the pool, a connection may carry another call at once, whose stream the
    # reader may then be handed: the old body must be gone from its epoll set by then.
    still_watched: List[bool] = []
    real = reader_module.finish_chunked

    def finish(raw: Any, fp: Any, *, reuse: bool) -> bool:
        still_watched.append(raw.connection.sock.fileno() in READER._bodies)
        return real(raw, fp, reuse=reuse)

    monkeypatch.setattr(reader_module, "finish_chunked", finish)
    with RawServer(script(SLOW, close=False)) as address:
        client = client_for(_url(address))
        assert [client.chat("x", stream=True).content for _ in range(3)] == ["abc"] * 3
    assert still_watched == [False] * 3


def test_bytes_that_came_with_the_head_are_read(taken: List[Optional[bool]]) -> None:
    whole = sse_head() + event("a") + event("b") + event("c", "stop") + DONE
    first_with_head = [sse_head() + event("a"), ("sleep", 0.05), event("b"), event("c", "stop"), DONE]
    with RawServer(script([whole], close=False)) as address:
        client = client_for(_url(address))
        assert [client.chat("x", stream=True).content for _ in range(3)] == ["abc"] * 3
    with RawServer(script(first_with_head, close=False)) as address:
        assert client_for(_url(address)).chat("x", stream=True).content == "abc"
    assert taken == [True] * 4


def test_an_abort_ends_its_own_stream_and_no_other(taken: List[Optional[bool]]) -> None:
    long = [sse_head(), ("trickle", event("x"), 0.02, 75), event("y", "stop"), DONE]
    with RawServer(script(long, close=False)) as address:
        client = client_for(_url(address))
        doomed, other = dp.CallControl(), dp.CallControl()
        with cf.ThreadPoolExecutor(2) as executor:
            first = executor.submit(client.chat, "x", stream=True, control=doomed)
            second = executor.submit(client.chat, "x", stream=True, control=other)
            time.sleep(0.3)  # both are being read by the reader now
            started = time.monotonic()
            doomed.handle.abort()
            with pytest.raises(dp.APIConnectionError):
                first.result(timeout=5)
            assert time.monotonic() - started < 1.0
            assert not second.done()  # the other stream goes on
            assert second.result(timeout=20).content == "x" * 75 + "y"


def test_ctrl_c_while_waiting_for_the_reader_leaves_it_serving(taken: List[Optional[bool]]) -> None:
    long = [sse_head(), ("trickle", event("x"), 0.05, 60), event("y", "stop"), DONE]
    server = RawServer(script(long, close=False))

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with server as address:
            client = client_for(_url(address))
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            started = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                client.chat("x", stream=True)
            assert time.monotonic() - started < 2.0
            assert server.wait_until(lambda s: s.closed == 1, timeout=5)  # its connection was closed
            with RawServer(script(SLOW, close=False)) as again:  # the reader still serves
                assert client_for(_url(again)).chat("x", stream=True).content == "abc"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert taken[-1] is True


def test_if_the_reader_thread_stops_its_streams_fail_and_the_next_one_gets_a_new_reader(
    taken: List[Optional[bool]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    long = [sse_head(), ("trickle", event("x"), 0.05, 200), event("y", "stop"), DONE]
    real_remove = READER._remove

    def remove(body: Any) -> None:  # a fault in the reader's own loop, not in one body
        if threading.current_thread().name == READER_THREAD:
            raise RuntimeError("reader fault")
        real_remove(body)

    monkeypatch.setattr(reader_module, "LIVENESS_INTERVAL", 0.1)
    with RawServer(script(long, close=False)) as slow, RawServer(script(SLOW, close=False)) as quick:
        with cf.ThreadPoolExecutor(2) as executor:
            waiting = executor.submit(client_for(_url(slow)).chat, "x", stream=True)
            time.sleep(0.3)  # the reader is reading it
            monkeypatch.setattr(READER, "_remove", remove)
            started = time.monotonic()
            # Its end makes the reader's loop fail; its answer had come whole ([DONE]), so it stands.
            assert executor.submit(client_for(_url(quick)).chat, "x", stream=True).result(timeout=5).content == "abc"
            with pytest.raises(dp.APIConnectionError, match=r"stream reader thread stopped.*reader fault"):
                waiting.result(timeout=5)
            assert time.monotonic() - started < 2.0  # long before the stream's own end (10 s)
        assert "the stream reader thread stopped" in caplog.text
        monkeypatch.setattr(READER, "_remove", real_remove)
        control = FirstTokenThread()
        assert client_for(_url(quick)).chat("x", stream=True, control=control).content == "abc"
        assert control.thread == READER_THREAD and taken[-1] is True  # a new reader thread read it


def test_a_forked_child_streams_through_a_reader_of_its_own() -> None:
    with RawServer(script(SLOW, close=False)) as address:
        client = client_for(_url(address))
        assert client.chat("parent", stream=True).content == "abc"  # the parent's reader runs

        def child() -> bool:
            control = FirstTokenThread()
            answers = [client.chat(f"child {i}", stream=True, control=control).content for i in range(3)]
            return answers == ["abc"] * 3 and control.thread == READER_THREAD

        assert run_in_fork(child) == 0
        assert client.chat("parent again", stream=True).content == "abc"


# -- TLS: decrypted bytes that epoll cannot see ------------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> Iterator[Tuple[ssl.SSLContext, str]]:
    import trustme  # a test extra

    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    with authority.cert_pem.tempfile() as ca_file:
        yield context, ca_file


#: Bytes of the body sent last, in one TLS record (at most 16 KiB): the reader's first ``recv``
#: takes READ_SIZE of them and the rest waits decrypted in the TLS layer, which epoll cannot see.
TLS_TAIL = 12000


def _serve_tls(listener: socket.socket, context: ssl.SSLContext, body: bytes, stop: threading.Event) -> None:
    """Answer every request on every connection with ``body``, its last :data:`TLS_TAIL` bytes a little later."""
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
            conn = context.wrap_socket(conn, server_side=True)
        except (TimeoutError, OSError):  # ssl.SSLError is an OSError: a client that gave up
            continue
        threading.Thread(target=_answer_tls, args=(conn, body), daemon=True).start()


def _answer_tls(conn: ssl.SSLSocket, body: bytes) -> None:
    conn.settimeout(10)
    with conn:
        request = b""
        try:
            while True:
                while b"\r\n\r\n" not in request:
                    data = conn.recv(65536)
                    if not data:
                        return
                    request += data
                head, _, rest = request.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                request = rest[length:]
                conn.sendall(sse_head() + body[:-TLS_TAIL])
                time.sleep(0.05)
                conn.sendall(body[-TLS_TAIL:])  # one TLS record, larger than one recv takes
        except OSError:
            return


def test_a_stream_over_tls_is_read_whole_by_the_reader(
    tls: Tuple[ssl.SSLContext, str], taken: List[Optional[bool]]
) -> None:
    import requests

    context, ca_file = tls
    big = "z" * 40000  # an event spanning several TLS records
    body = event("a") + event(big) + event("b", "stop") + DONE
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=_serve_tls, args=(listener, context, body, stop), daemon=True)
    thread.start()
    try:
        session = requests.Session()
        session.trust_env = False  # else REQUESTS_CA_BUNDLE, if set, would override verify
        session.verify = ca_file
        session.mount("https://", dp.DeepSeekAdapter())  # connections the watchdog can reach
        client = dp.DeepSeekClient(
            KEY,
            base_url=f"https://127.0.0.1:{listener.getsockname()[1]}",
            session=session,
            timeout=dp.Timeout(10),
            max_retries=0,
        )
        control = FirstTokenThread()
        answers = [client.chat("x", stream=True, control=control).content for _ in range(3)]
        assert answers == ["a" + big + "b"] * 3
        assert taken == [True] * 3
    finally:
        stop.set()
        thread.join(5)
        listener.close()
