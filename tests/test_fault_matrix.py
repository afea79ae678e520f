"""The call path's invariants, stated once and checked over faults x entry points.

Every cell is one call through one entry point (``client.chat``, ``chat(stream=True)`` read
by the shared stream reader and by its own thread, iterating ``chat_stream``, ``pool.submit``,
``pool.as_completed``) against a RawServer
that scripts one fault on 127.0.0.1. :func:`check_invariants` holds for every cell
(attempts within ``max_retries + 1``, wall time within ``call_timeout``, no attempt
started after it, at most one connection per attempt, only ``DeepSeekError`` escapes,
the API key never shows, a healthy neighbour in the same pool is not disturbed);
each :class:`Fault` adds what it must end in (which error or success, how many attempts).

The cells are independent, so they run concurrently once per module (see
:func:`matrix`) and each ``test_cell`` checks its recorded :class:`Outcome`: the whole
file stays well under the time its slowest cells would take one after another.
A cell that would hang is cut by a watchdog that closes its server.
"""

from __future__ import annotations

import concurrent.futures as cf
import email.utils
import json
import pickle
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import pytest
import urllib3.util.connection

import deepseek_pool as dp

from .rawserver import LAST_CHUNK, RawServer, Step, chunk, head, respond, run_step, sse_head

KEY = "sk-SECRET-0123456789"
MAX_RETRIES = 2
ATTEMPTS = MAX_RETRIES + 1
TOTAL = 1.5  # per-attempt deadline
CALL_TIMEOUT = 3.0
SLACK = 0.5  # the brief's bound: wall time <= call_timeout + 0.5 s
#: An attempt, measured at the server from its request to the next one, may overrun its total by this
#: much: the backoff (0.05 s), a deadline checked when a 0.2 s keep-alive line arrives, and scheduling
#: on a loaded box (a cell that busy-waits, as 503-ms-nan in a pool does today, slows the others).
ATTEMPT_SLACK = 0.6
DONE_LIMIT = 0.5  # a stream held open after [DONE] must end long before the 1.5 s timeout
WATCHDOG = CALL_TIMEOUT + 1.5  # a cell still running then is broken: its server is closed under it
PARALLEL = 16  # cells run at once (they mostly wait on sockets and sleeps)
MATRIX_BUDGET = 60.0  # seconds for the whole matrix; a cell not done by then is reported as hung

MESSAGE = "faulty call"
HEALTHY = "healthy-neighbour"
ANSWER = "hello"


def make_client(base_url: str) -> dp.DeepSeekClient:
    return dp.DeepSeekClient(
        KEY,
        base_url=base_url,
        timeout=dp.Timeout(TOTAL, connect=0.5),
        call_timeout=CALL_TIMEOUT,
        max_retries=dp.DeepSeekRetry(MAX_RETRIES, backoff_factor=0.05, backoff_jitter=0),
    )


# --- response bytes ------------------------------------------------------------------------------------


def completion_json(content: str = ANSWER, finish: str = "stop") -> bytes:
    return json.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "model": "deepseek-flash",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    ).encode()


def sse_event(delta: Dict[str, Any], finish: Optional[str] = None) -> bytes:
    payload = {"id": "s1", "object": "chat.completion.chunk", "model": "deepseek-flash"}
    payload["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]  # type: ignore[assignment]
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


ROLE_EVENT = sse_event({"role": "assistant", "content": ""})
PARTIAL_EVENTS = ROLE_EVENT + sse_event({"content": "hel"})


def sse_answer(finish: str = "stop") -> bytes:
    """The SSE events of a whole answer ``hello`` (no ``[DONE]``)."""
    return PARTIAL_EVENTS + sse_event({"content": "lo"}) + sse_event({}, finish=finish)


DONE = b"data: [DONE]\n\n"


def ok_response(stream: bool) -> bytes:
    if stream:
        return sse_head() + chunk(sse_answer()) + chunk(DONE) + LAST_CHUNK
    return respond(200, completion_json())


def error_body(status: int) -> bytes:
    return json.dumps({"error": {"message": f"scripted {status}", "type": "scripted", "code": status}}).encode()


# --- faults --------------------------------------------------------------------------------------------

#: ``steps(stream, n)``: the script for the n-th faulty request (0-based); ``stream`` is whether
#: the request asked for a stream.
Steps = Callable[[bool, int], Sequence[Step]]


@dataclass(frozen=True)
class Fault:
    """One scripted fault and what a call hitting it must end in.

    :ivar only: ``"stream"`` (an SSE body: meaningless for a non-streaming request), ``"plain"``
        (a JSON body), or ``""`` (either; the script adapts to the request).
    :ivar error: the classes one of which must be raised; ``None``: the call must succeed.
    :ivar attempts: ``(least, most)`` attempts at the server.
    :ivar body_fault: the fault shows only after a 2xx head; ``chat_stream`` has handed the stream
        to the caller by then and cannot retry, so it is held to ``(1, attempts[1])`` only.
    :ivar bounded_attempts: each attempt must end within its own total deadline.
    :ivar not_error: classes the error must not be (a cut is not a timeout).
    :ivar holds_budget: a 429 whose Retry-After outlasts the call: it holds the pool's whole
        budget that long (issue 23), so a neighbour that had not started yet is held too.
    """

    name: str
    steps: Steps
    close: bool = True
    only: str = ""
    error: Optional[Tuple[Type[BaseException], ...]] = None
    attempts: Tuple[int, int] = (1, 1)
    body_fault: bool = False
    bounded_attempts: bool = False
    not_error: Tuple[Type[BaseException], ...] = ()
    check: Optional[Callable[[Outcome], List[str]]] = None
    refused: bool = False
    holds_budget: bool = False


def _const(*steps: Step) -> Steps:
    return lambda stream, n: steps


def _by_kind(plain: Sequence[Step], stream: Sequence[Step]) -> Steps:
    return lambda is_stream, n: stream if is_stream else plain


def _status_response(status: int, headers: Dict[str, str]) -> bytes:
    return respond(status, error_body(status), headers)


#: Retry-After forms: (id, headers, the waits they ask for are small enough for every retry to fit)
RETRY_AFTER_FORMS: List[Tuple[str, Dict[str, str], bool]] = [
    ("none", {}, True),
    ("s1", {"Retry-After": "1"}, True),
    ("s0.2", {"Retry-After": "0.2"}, True),
    # An HTTP date, built per request. In the past (a wait of 0): a date in the future has whole
    # seconds, so the waits it asks for would depend on when in the second the test runs; the
    # cap test below sends a future one.
    ("date-past", {}, True),
    ("ms200", {"retry-after-ms": "200"}, True),
    ("nan", {"Retry-After": "nan"}, True),
    ("inf", {"Retry-After": "inf"}, True),
    ("neg5", {"Retry-After": "-5"}, True),
    ("huge", {"Retry-After": "99999"}, False),
    ("garbage", {"Retry-After": "garbage"}, True),
    ("ms-nan", {"retry-after-ms": "nan"}, True),
    ("ms-inf", {"retry-after-ms": "inf"}, False),
    ("ms-neg", {"retry-after-ms": "-5000"}, True),
    ("ms-huge", {"retry-after-ms": "99999999"}, False),
    ("ms-garbage", {"retry-after-ms": "soon"}, True),
]

STATUS_ERRORS: Dict[int, Type[dp.APIStatusError]] = {429: dp.RateLimitError, 503: dp.ServiceUnavailableError}


def _asked_wait(headers: Dict[str, str]) -> float:
    """Seconds a plain-number Retry-After (or retry-after-ms) asks for; 0 for any other form."""
    text = headers.get("retry-after-ms", headers.get("Retry-After", "0"))
    try:
        seconds = float(text) / (1000 if "retry-after-ms" in headers else 1)
    except ValueError:
        return 0.0
    return seconds if seconds < float("inf") else 0.0


def _status_fault(status: int, form: str, headers: Dict[str, str], small: bool) -> Fault:
    if form.startswith("date"):

        def steps(stream: bool, n: int) -> Sequence[Step]:
            def send(conn: socket.socket, request: bytes) -> bool:
                date = email.utils.formatdate(time.time() - 10, usegmt=True)
                conn.sendall(_status_response(status, {"Retry-After": date}))
                return False

            return [send]

    else:
        steps = _const(_status_response(status, headers))
    return Fault(
        f"{status}-{form}",
        steps,
        close=False,
        error=(STATUS_ERRORS[status],),
        # A huge wait is capped at 60 s, more than the call has: the call deadline may stop retrying first.
        attempts=(ATTEMPTS, ATTEMPTS) if small else (1, ATTEMPTS),
        # A wait of a second or more, renewed by each retry's 429, can outlast the neighbour's deadline.
        holds_budget=status == 429 and (not small or _asked_wait(headers) >= 1.0),
    )


def _non_completion(payload: bytes) -> Fault:
    def check(outcome: Outcome) -> List[str]:
        err = outcome.error
        problems = []
        if getattr(err, "status_code", None) != 200:
            problems.append(f"status_code {getattr(err, 'status_code', None)!r} != 200")
        expected = json.loads(payload)
        if err is not None and getattr(err, "body", "<missing>") != expected:
            problems.append(f".body {getattr(err, 'body', '<missing>')!r} != {expected!r}")
        return problems

    return Fault(
        f"json-{payload.decode()}",
        _const(respond(200, payload)),
        close=False,
        only="plain",
        error=(getattr(dp, "APIResponseValidationError", _Missing),),
        check=check,
    )


class _Missing(Exception):
    """Stands for ``dp.APIResponseValidationError`` while the package has no such class."""


_Missing.__name__ = "APIResponseValidationError (missing from deepseek_pool)"


def _answer_check(outcome: Outcome) -> List[str]:
    return [] if outcome.content == ANSWER else [f"content {outcome.content!r} != {ANSWER!r}"]


def _done_check(outcome: Outcome) -> List[str]:
    problems = _answer_check(outcome)
    if outcome.wall > DONE_LIMIT:
        problems.append(f"took {outcome.wall:.2f}s after [DONE] was sent (limit {DONE_LIMIT}s)")
    return problems


def _ok_after_503(stream: bool, n: int) -> Sequence[Step]:
    return [_status_response(503, {})] if n == 0 else [ok_response(stream)]


_TIMEOUT = (dp.APITimeoutError,)
_CUT = (dp.APIConnectionError,)
_TRICKLE_HEAD = head(200, {"Content-Type": "application/json", "Content-Length": "2"}) + b"{}"

FAULTS: List[Fault] = [
    Fault("refused", _const(), error=_CUT, attempts=(ATTEMPTS, ATTEMPTS), refused=True),
    Fault("reset", _const(("reset",)), error=_CUT, attempts=(ATTEMPTS, ATTEMPTS), not_error=_TIMEOUT),
    # Per-attempt total 1.5 s inside a 3 s call: a second attempt must start (~1.55 s), no third.
    Fault("trickle-head", _const(("drip", _TRICKLE_HEAD, 0.2)), error=_TIMEOUT, attempts=(2, 3), bounded_attempts=True),
    Fault("stall", _const(("sleep", 60)), error=_TIMEOUT, attempts=(2, 3), bounded_attempts=True),
    *[
        _status_fault(status, form, headers, small)
        for status in (429, 503)
        for form, headers, small in RETRY_AFTER_FORMS
    ],
    Fault(
        "blank-trickle",
        _by_kind(
            [head(200, {"Content-Type": "application/json", "Connection": "close"}), ("trickle", b"\n", 0.2)],
            [sse_head(), ("trickle", chunk(b": keep-alive\n\n"), 0.2)],
        ),
        error=_TIMEOUT,
        attempts=(2, 3),
        body_fault=True,
        bounded_attempts=True,
    ),
    Fault(
        "cut-body",
        _by_kind(
            [
                head(200, {"Content-Type": "application/json", "Content-Length": "400"}),
                b'{"id": "c1", "choi',
                ("close",),
            ],
            [head(200, {"Content-Type": "text/event-stream", "Content-Length": "400"}), PARTIAL_EVENTS, ("close",)],
        ),
        error=_CUT,
        attempts=(ATTEMPTS, ATTEMPTS),
        body_fault=True,
        not_error=_TIMEOUT,
    ),
    Fault(
        "sse-done-held-open",
        _const(sse_head(), chunk(sse_answer()), chunk(DONE), ("wait_close", 30)),
        only="stream",
        check=_done_check,
    ),
    Fault(
        "sse-finish-no-done",
        _const(sse_head(), chunk(sse_answer()), LAST_CHUNK),
        close=False,
        only="stream",
        check=_answer_check,
    ),
    Fault(
        "sse-cut-before-finish",
        _const(sse_head(), chunk(PARTIAL_EVENTS), ("close",)),
        only="stream",
        error=_CUT,
        attempts=(ATTEMPTS, ATTEMPTS),
        body_fault=True,
        not_error=_TIMEOUT,
    ),
    Fault(
        "sse-end-before-finish",
        _const(sse_head(), chunk(PARTIAL_EVENTS), LAST_CHUNK),
        close=False,
        only="stream",
        error=_CUT,
        attempts=(ATTEMPTS, ATTEMPTS),
        body_fault=True,
        not_error=_TIMEOUT,
    ),
    *[_non_completion(p) for p in (b"null", b"[]", b'"ok"', b"{}", b'{"choices": "x"}', b'{"choices": [null]}')],
    Fault(
        "empty-200",
        _by_kind([respond(200, b"")], [respond(200, b"", content_type="text/event-stream")]),
        close=False,
        # An empty stream body is also "ended before any finish_reason".
        error=(dp.IncompleteResponseError, dp.APIConnectionError),
        attempts=(ATTEMPTS, ATTEMPTS),
        body_fault=True,
    ),
    Fault(
        "insufficient-resource",
        _by_kind(
            [respond(200, completion_json(finish="insufficient_system_resource"))],
            [sse_head(), chunk(sse_answer(finish="insufficient_system_resource")), chunk(DONE), LAST_CHUNK],
        ),
        close=False,
        error=(dp.IncompleteResponseError,),
        attempts=(ATTEMPTS, ATTEMPTS),
        body_fault=True,
    ),
    Fault("ok-after-503", _ok_after_503, close=False, attempts=(2, 2), check=_answer_check),
]
FAULTS_BY_NAME = {fault.name: fault for fault in FAULTS}


# --- entry points --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one cell observed."""

    error: Optional[BaseException] = None
    content: Optional[str] = None
    wall: float = 0.0
    started: float = 0.0  # time.monotonic() when the call started
    attempts: int = 0  # requests the server read (connect attempts, for "refused")
    connections: int = 0
    arrivals: List[float] = field(default_factory=list)  # monotonic time of each faulty request
    healthy_attempts: int = 0
    neighbour: Optional[str] = None  # None: no neighbour ran; "ok" or what went wrong
    watchdog: bool = False  # the call was still running at WATCHDOG and its server was closed
    hung: Optional[str] = None  # the call did not return at all
    pool: Any = field(default=None, repr=False)  # the cell's pool, for the watchdog to cancel


def _stream_mode(fault: Fault, entry: str) -> bool:
    if entry.startswith("chat_stream"):
        return True
    if entry.startswith("pool"):
        return fault.only == "stream"  # the pool streams when the fault needs it
    return False


def _run_entry(client: dp.DeepSeekClient, entry: str, stream: bool, outcome: Outcome, neighbour: bool = True) -> None:
    """Make the call; set ``outcome.error``/``content``/``wall`` (and, in a pool, the neighbour's fate)."""
    start = outcome.started = time.monotonic()
    try:
        if entry == "chat":
            outcome.content = client.chat(MESSAGE).content
        elif entry == "chat_stream_true":
            outcome.content = client.chat(MESSAGE, stream=True).content
        elif entry == "chat_stream_own_thread":  # aggregated by the calling thread, not the shared reader
            client.shared_stream_reader = False
            outcome.content = client.chat(MESSAGE, stream=True).content
        elif entry == "chat_stream_iter":
            with client.chat_stream(MESSAGE) as chat_stream:
                chunks = list(chat_stream)
            outcome.content = "".join(c.content or "" for c in chunks)
        elif entry == "pool_submit":
            params = {"stream": True} if stream else {}
            with dp.DeepSeekPool(client, max_workers=4) as pool:
                outcome.pool = pool
                future = pool.submit(MESSAGE, **params)
                healthy = pool.submit(HEALTHY) if neighbour else None
                try:
                    outcome.content = future.result(timeout=WATCHDOG + 1).content
                finally:
                    outcome.wall = time.monotonic() - start
                    try:
                        answer = healthy.result(timeout=WATCHDOG + 1).content if healthy else ANSWER
                        if healthy is not None:
                            outcome.neighbour = "ok" if answer == ANSWER else f"answered {answer!r}"
                    except BaseException as err:
                        outcome.neighbour = f"failed: {err!r}"
        elif entry == "pool_as_completed":
            request: Dict[str, Any] = {"messages": MESSAGE, **({"stream": True} if stream else {})}
            with dp.DeepSeekPool(client, max_workers=4) as pool:
                outcome.pool = pool
                for result in pool.as_completed([request, HEALTHY] if neighbour else [request]):
                    if result.index == 0:
                        outcome.wall = time.monotonic() - start
                        outcome.error = result.error
                        outcome.content = result.completion.content if result.completion is not None else None
                    else:
                        answer = result.completion.content if result.completion is not None else None
                        outcome.neighbour = "ok" if result.ok and answer == ANSWER else f"failed: {result.error!r}"
        else:
            raise AssertionError(entry)
    except cf.TimeoutError:
        outcome.hung = "future.result() timed out"
    except BaseException as err:
        outcome.error = err
    if not outcome.wall:
        outcome.wall = time.monotonic() - start


class _Dispatcher:
    """The cell's RawServer handler: the healthy neighbour gets an answer, every other request the fault."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.lock = threading.Lock()
        self.faulty = 0
        self.healthy = 0
        self.arrivals: List[float] = []

    def __call__(self, conn: socket.socket, request: bytes) -> bool:
        body = request.partition(b"\r\n\r\n")[2]
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {}
        stream = isinstance(payload, dict) and payload.get("stream") is True
        if HEALTHY.encode() in body:
            with self.lock:
                self.healthy += 1
            conn.sendall(ok_response(stream))
            return False
        with self.lock:
            n = self.faulty
            self.faulty += 1
            self.arrivals.append(time.monotonic())
        for step in self.fault.steps(stream, n):
            if run_step(conn, request, step):
                return True
        return self.fault.close


_connect_lock = threading.Lock()
_connects: Dict[int, int] = {}


def _counting_create_connection(real: Callable[..., socket.socket]) -> Callable[..., socket.socket]:
    """urllib3's create_connection, counting connect attempts per port (for the refused fault)."""

    def create_connection(address: Tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        with _connect_lock:
            _connects[address[1]] = _connects.get(address[1], 0) + 1
        return real(address, *args, **kwargs)

    return create_connection


def run_cell(fault: Fault, entry: str) -> Outcome:
    outcome = Outcome()
    stream = _stream_mode(fault, entry)
    if fault.refused:
        with socket.socket() as bound:  # bound, never listening: connecting is refused at once
            bound.bind(("127.0.0.1", 0))
            port = bound.getsockname()[1]
            # No healthy neighbour: a pool has one base URL, and nothing answers at this one.
            _run_entry(make_client(f"http://127.0.0.1:{port}"), entry, stream, outcome, neighbour=False)
        with _connect_lock:
            outcome.attempts = outcome.connections = _connects.get(port, 0)
        return outcome
    dispatcher = _Dispatcher(fault)
    server = RawServer(dispatcher, join_timeout=1.0)
    with server:

        def watchdog() -> None:
            # Break what a stuck call can be waiting on: its sockets, and its pool's waits.
            outcome.watchdog = True
            server.close()
            if outcome.pool is not None:
                outcome.pool.close(wait=False, cancel=True)

        timer = threading.Timer(WATCHDOG, watchdog)
        timer.daemon = True
        timer.start()
        try:
            _run_entry(make_client(server.url), entry, stream, outcome)
        finally:
            timer.cancel()
    outcome.attempts = dispatcher.faulty
    outcome.healthy_attempts = dispatcher.healthy
    outcome.arrivals = list(dispatcher.arrivals)
    outcome.connections = server.connections
    return outcome


# --- the checks ----------------------------------------------------------------------------------------


def _key_leaks(err: BaseException) -> List[str]:
    problems = []
    seen: set = set()
    todo: List[BaseException] = [err]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        name = type(current).__name__
        for how, text in (("str", str(current)), ("repr", repr(current)), ("args", repr(current.args))):
            if KEY in text:
                problems.append(f"the API key is in the {how} of {name}")
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    try:
        pickled = pickle.dumps(err)
        again = pickle.loads(pickled)
    except Exception as exc:
        problems.append(f"{type(err).__name__} does not pickle: {exc!r}")
    else:
        if KEY.encode() in pickled:
            problems.append("the API key is in the pickle")
        if type(again) is not type(err):
            problems.append(f"unpickles as {type(again).__name__}")
    return problems


def check_invariants(outcome: Outcome) -> List[str]:
    """What every cell must satisfy, whatever the fault and the entry point."""
    problems = []
    if outcome.hung:
        problems.append(f"hung: {outcome.hung}")
    if outcome.watchdog:
        problems.append(f"still running at {WATCHDOG}s: the watchdog closed the server")
    if outcome.wall > CALL_TIMEOUT + SLACK:
        problems.append(f"wall {outcome.wall:.2f}s > call_timeout {CALL_TIMEOUT} + {SLACK}")
    if outcome.attempts > ATTEMPTS:
        problems.append(f"{outcome.attempts} attempts > max_retries + 1 = {ATTEMPTS}")
    late = [a - outcome.started for a in outcome.arrivals if a - outcome.started > CALL_TIMEOUT + 0.05]
    if late:
        problems.append(f"attempts started after call_timeout: at {', '.join(f'{t:.2f}s' for t in late)}")
    if outcome.connections > outcome.attempts + outcome.healthy_attempts:
        problems.append(
            f"{outcome.connections} connections for {outcome.attempts} attempts"
            + (f" (+{outcome.healthy_attempts} healthy)" if outcome.healthy_attempts else "")
        )
    err = outcome.error
    if err is not None:
        if not isinstance(err, dp.DeepSeekError):
            problems.append(f"a foreign exception escaped: {type(err).__module__}.{type(err).__qualname__}: {err}")
        problems.extend(_key_leaks(err))
    if outcome.neighbour is not None:
        if outcome.neighbour != "ok":
            problems.append(f"the healthy neighbour {outcome.neighbour}")
        elif outcome.healthy_attempts != 1:
            problems.append(f"the healthy neighbour took {outcome.healthy_attempts} attempts")
    return problems


def check_expectations(fault: Fault, entry: str, outcome: Outcome) -> List[str]:
    """What this fault must end in."""
    problems = []
    err = outcome.error
    if fault.error is None:
        if err is not None:
            problems.append(f"expected success, got {type(err).__name__}: {err}")
    elif err is None:
        if not outcome.hung:
            problems.append(f"expected {'/'.join(c.__name__ for c in fault.error)}, got success {outcome.content!r}")
    elif not isinstance(err, fault.error):
        problems.append(f"expected {'/'.join(c.__name__ for c in fault.error)}, got {type(err).__name__}: {err}")
    elif fault.not_error and isinstance(err, fault.not_error):
        problems.append(f"expected no {fault.not_error[0].__name__}, got {type(err).__name__}: {err}")
    least, most = fault.attempts
    if fault.body_fault and entry == "chat_stream_iter":
        least = 1
    if not least <= outcome.attempts <= most:
        wanted = str(least) if least == most else f"{least}..{most}"
        problems.append(f"{outcome.attempts} attempts, expected {wanted}")
    if fault.bounded_attempts and outcome.arrivals:
        ends = [*outcome.arrivals[1:], outcome.started + outcome.wall]
        for i, (begin, end) in enumerate(zip(outcome.arrivals, ends)):
            if end - begin > TOTAL + ATTEMPT_SLACK:
                problems.append(f"attempt {i + 1} lasted {end - begin:.2f}s > its total {TOTAL}s")
    if fault.check is not None and (fault.error is None) == (err is None) and not outcome.hung:
        problems.extend(fault.check(outcome))
    return problems


# --- the matrix ----------------------------------------------------------------------------------------

ENTRIES = ["chat", "chat_stream_true", "chat_stream_own_thread", "chat_stream_iter", "pool_submit", "pool_as_completed"]


def _cells() -> Iterator[Any]:
    for fault in FAULTS:
        for entry in ENTRIES:
            cell = f"{fault.name}/{entry}"
            streaming = entry.startswith("chat_stream")
            reason = None
            if fault.only == "stream" and entry == "chat":
                reason = "skip-sse-fault-needs-a-streaming-request"
            elif fault.only == "plain" and streaming:
                reason = "skip-json-body-fault-needs-a-plain-request"
            elif fault.name == "insufficient-resource" and entry == "chat_stream_iter":
                reason = "skip-chat_stream-hands-finish_reason-to-the-caller"
            if reason is None:
                yield pytest.param(cell, id=cell)
            else:
                yield pytest.param(cell, id=f"{cell}-{reason}", marks=pytest.mark.skip(reason=reason))


CELLS = list(_cells())


class Matrix(Dict[str, Outcome]):
    """cell -> Outcome, with a short repr (pytest shows fixture values in tracebacks)."""

    def __repr__(self) -> str:
        return f"<the outcomes of {len(self)} cells>"


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest) -> Iterator[Dict[str, Outcome]]:
    """Run every selected, unskipped cell of this module concurrently; map cell -> Outcome."""
    wanted = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or getattr(item, "module", None) is not request.module:
            continue
        if "cell" in callspec.params and not item.get_closest_marker("skip"):
            wanted.append(callspec.params["cell"])
    real = urllib3.util.connection.create_connection
    urllib3.util.connection.create_connection = _counting_create_connection(real)
    executor = cf.ThreadPoolExecutor(PARALLEL, thread_name_prefix="fault-matrix")
    stuck = False
    try:
        futures = {}
        for cell in wanted:
            name, entry = cell.split("/")
            futures[cell] = executor.submit(run_cell, FAULTS_BY_NAME[name], entry)
        cf.wait(futures.values(), timeout=MATRIX_BUDGET)
        outcomes = Matrix()
        for cell, future in futures.items():
            if future.done():
                outcomes[cell] = future.result()
            else:  # even its watchdog could not end it: report it, do not wait for it
                outcomes[cell] = Outcome(hung=f"the cell had not returned {MATRIX_BUDGET}s into the matrix")
                stuck = True
        yield outcomes
    finally:
        executor.shutdown(wait=not stuck, cancel_futures=True)
        urllib3.util.connection.create_connection = real


def describe(outcome: Outcome) -> str:
    result = f"{type(outcome.error).__name__}" if outcome.error is not None else f"ok {outcome.content!r}"
    return f"{result}, attempts={outcome.attempts}, connections={outcome.connections}, wall={outcome.wall:.2f}s" + (
        f", neighbour={outcome.neighbour}" if outcome.neighbour is not None else ""
    )


@pytest.mark.timeout(MATRIX_BUDGET + 30)  # the first cell's setup runs the whole matrix
@pytest.mark.parametrize("cell", CELLS)
def test_cell(cell: str, matrix: Dict[str, Outcome]) -> None:
    name, entry = cell.split("/")
    fault = FAULTS_BY_NAME[name]
    outcome = matrix[cell]
    if fault.holds_budget:
        outcome.neighbour = None  # held by the server's Retry-After, as every call of the budget is
    problems = check_invariants(outcome) + check_expectations(fault, entry, outcome)
    assert not problems, f"{cell}: {describe(outcome)}\n  " + "\n  ".join(problems)


# --- outside the matrix ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Retry-After": "99999"}, id="seconds"),
        pytest.param({"retry-after-ms": "99999999"}, id="ms"),
        pytest.param({"retry-after-ms": "inf"}, id="ms-inf"),
        pytest.param({"Retry-After": email.utils.formatdate(time.time() + 86400, usegmt=True)}, id="date+1d"),
    ],
)
def test_a_huge_retry_after_waits_only_the_cap(headers: Dict[str, str]) -> None:
    """With a cap of 0.2 s, a huge server-directed wait is 0.2 s: every retry happens, quickly."""
    dispatcher = _Dispatcher(Fault("429", _const(_status_response(429, headers)), close=False))
    with RawServer(dispatcher) as (host, port):
        retry = dp.DeepSeekRetry(MAX_RETRIES, backoff_factor=0.05, backoff_jitter=0, max_retry_after=0.2)
        client = dp.DeepSeekClient(KEY, base_url=f"http://{host}:{port}", call_timeout=5.0, max_retries=retry)
        start = time.monotonic()
        with pytest.raises(dp.RateLimitError):
            client.chat(MESSAGE)
        wall = time.monotonic() - start
    assert dispatcher.faulty == ATTEMPTS
    gaps = [b - a for a, b in zip(dispatcher.arrivals, dispatcher.arrivals[1:])]
    assert all(gap < 0.2 + 0.3 for gap in gaps), gaps
    assert wall < 1.5


BAD_KEYS = [
    pytest.param("sk-€abc-0123456789", id="non-latin-1"),
    pytest.param("sk-abc\x00-0123456789", id="NUL"),
    pytest.param("sk-abc\x01-0123456789", id="control"),
    pytest.param("sk-abc\x7f-0123456789", id="DEL"),
    pytest.param("sk-abc\n-0123456789", id="newline"),
    pytest.param("sk-abc\r-0123456789", id="CR"),
    pytest.param("sk-abc\r\nX-Injected: 1", id="header-injection"),
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_key_that_cannot_be_a_header_value_is_refused_up_front(key: str) -> None:
    secret = key.replace("sk-", "", 1)
    try:
        client = dp.DeepSeekClient(key, base_url="http://127.0.0.1:9")
    except dp.ConfigurationError as err:
        assert secret not in str(err) and secret not in repr(err)
        assert key not in str(err) and key not in repr(err)
        return
    # Accepted: show what a call does with it, for the failure message.
    with RawServer(_Dispatcher(Fault("ok", _const(ok_response(False)), close=False))) as (host, port):
        client = dp.DeepSeekClient(key, base_url=f"http://{host}:{port}", max_retries=0, timeout=2)
        try:
            client.chat(MESSAGE)
            what = "the call then succeeded"
        except BaseException as err:
            what = f"the call then raised {type(err).__module__}.{type(err).__name__}: {err}"
    leaked = " (the error shows the key)" if secret in what else ""
    pytest.fail(f"DeepSeekClient accepted the key {key!r}; {what}{leaked}")
