"""FakeDeepSeek: a local, deterministic, DeepSeek-compatible HTTP/1.1 server.

Written on plain sockets rather than :mod:`http.server`: one thread per connection, one
``sendall`` per ordinary answer, no header parsing through :mod:`email`, no logging per request.
That keeps the server far from being the bottleneck of a benchmark on two cores, and gives
byte-level control for faults (RST, truncated streams, never-ending bodies).

This module decides what each request gets (faults, the cap, latency, the answer); the
sockets are :mod:`._connections`'s, the bytes of an answer :mod:`._exchange`'s, and the
answers themselves :mod:`._protocol`'s.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import random
import socket
import threading
import time
from types import TracebackType
from typing import (
    Any,
    Deque,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
)

from deepseek_pool.testing import _protocol as proto
from deepseek_pool.testing import _render as render
from deepseek_pool.testing._answers import answer_for, fim_answer_for, reasoning_for
from deepseek_pool.testing._cache import CacheRules, PromptCache
from deepseek_pool.testing._connections import ConnectionServer
from deepseek_pool.testing._endpoints import ERRORS, ROUTES
from deepseek_pool.testing._exchange import RESET, Exchange, Wire
from deepseek_pool.testing._faults import Fault, parse_fault, parse_rates
from deepseek_pool.testing._fields import ApiError
from deepseek_pool.testing._http import origin_form
from deepseek_pool.testing._records import FakeStats, ReceivedRequest
from deepseek_pool.testing._shapes import BALANCE, MODEL, MODEL_LIST, dumps, fill_shape
from deepseek_pool.testing._timing import Latency, format_seconds, latency_function

logger = logging.getLogger(__name__)

__all__ = ["FakeDeepSeek", "FakeStats", "Latency", "ReceivedRequest"]

DEFAULT_MODELS: Tuple[str, ...] = ("deepseek-flash", "deepseek-v4-pro", "deepseek-chat", "deepseek-reasoner")
DEFAULT_TRICKLE_INTERVAL = 0.05
DEFAULT_MAX_RECEIVED = 10_000
#: Faults after which the answer was not completed, so the prompt cache learns nothing from it.
UNFINISHED_FAULTS = frozenset({"cut", "empty", "trickle_forever"})
STOP_JOIN_SECONDS = 2.0


class FakeDeepSeek(ConnectionServer):
    """A local DeepSeek-compatible server for tests, demos and benchmarks.

    It speaks the chat, FIM, models and balance endpoints on a real socket (HTTP/1.1,
    keep-alive, chunked SSE streams), answers deterministically (:meth:`answer_for`), and
    injects faults by rate or by script.  Everything random is drawn from one RNG seeded with
    ``seed``, so a sequential run is reproducible.

    Usage::

        with FakeDeepSeek(faults={"503": 0.1}, seed=1) as fake:
            fake.script("429", "ok")
            requests.post(fake.base_url + "/chat/completions", headers=..., json=...)
            assert fake.stats.by_status[429] == 1

    :param api_key: the only accepted key; None accepts any non-empty ``Bearer`` token.
    :param latency: seconds before the answer (before the first event when streaming): a
        number, a ``(low, high)`` uniform range, or a function of the seeded
        :class:`random.Random`.
    :param stream_chunk_delay: seconds between streamed events.
    :param faults: fault name -> probability per request (see :mod:`._faults`).
    :param retry_after: Retry-After seconds sent with injected 429/503; None sends none.
    :param seed: seeds fault and latency draws and the request ids.
    :param trickle_interval: seconds between the keep-alive lines of ``trickle`` faults.
    :param chunks_per_answer: stream the content (and the reasoning) in exactly this many
        events instead of tiny 1-4 character pieces.
    :param max_received: how many requests :attr:`received` keeps (oldest dropped).
    :param max_concurrency: the account's concurrency cap, as DeepSeek enforces it: a chat
        or FIM request that arrives while this many are in flight is answered 429 with
        DeepSeek's message naming the number ("concurrency limit of N"). None: no cap.
    :param cache_build_delay: seconds before a new prompt-cache unit can be hit (DeepSeek:
        "seconds"); the cache follows DeepSeek V4's rules, see :mod:`._cache`, and reports
        ``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens`` in every usage.
    :param cache_lifetime: seconds an unused unit lives (DeepSeek: hours to days).
    :param cache_unit_tokens: hits come in multiples of this many tokens.
    :param cache_min_tokens: a hit shorter than this counts as a miss.
    """

    def __init__(
        self,
        *,
        api_key: Optional[str] = None,
        latency: Latency = 0.0,
        stream_chunk_delay: float = 0.0,
        faults: Optional[Mapping[str, float]] = None,
        retry_after: Optional[float] = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] = DEFAULT_MODELS,
        balance: str = "100.00",
        trickle_interval: float = DEFAULT_TRICKLE_INTERVAL,
        chunks_per_answer: Optional[int] = None,
        max_received: Optional[int] = DEFAULT_MAX_RECEIVED,
        max_concurrency: Optional[int] = None,
        cache_build_delay: float = CacheRules.build_delay,
        cache_lifetime: float = CacheRules.lifetime,
        cache_unit_tokens: int = CacheRules.unit_tokens,
        cache_min_tokens: int = CacheRules.min_tokens,
    ) -> None:
        if api_key is not None and not api_key:
            raise ValueError("api_key must be None (accept any key) or a non-empty string")
        if stream_chunk_delay < 0 or trickle_interval <= 0:
            raise ValueError("stream_chunk_delay must be >= 0 and trickle_interval > 0")
        if retry_after is not None and not retry_after >= 0:
            raise ValueError(f"retry_after must be None or >= 0, got {retry_after!r}")
        if chunks_per_answer is not None and chunks_per_answer < 1:
            raise ValueError(f"chunks_per_answer must be None or >= 1, got {chunks_per_answer!r}")
        if max_concurrency is not None and (isinstance(max_concurrency, bool) or not max_concurrency >= 1):
            raise ValueError(f"max_concurrency must be None or >= 1, got {max_concurrency!r}")
        if isinstance(models, str) or not models:
            raise ValueError("models must be a non-empty sequence of model ids")
        rules = CacheRules(cache_unit_tokens, cache_min_tokens, cache_build_delay, cache_lifetime)
        self._api_key = api_key
        self._latency = latency_function(latency)
        self._chunk_delay = float(stream_chunk_delay)
        self._rates = parse_rates(faults)
        self._retry_after = retry_after
        self._seed = seed
        self._host = host
        self._port = port
        self._models = tuple(models)
        self._model_set = frozenset(self._models)
        self._balance = balance
        self._has_balance = float(balance) > 0
        self._trickle_interval = float(trickle_interval)
        self._chunks = chunks_per_answer
        self._max_concurrency = max_concurrency
        self._generating = 0  # chat and FIM requests in flight, for the cap
        self._models_body = dumps(
            fill_shape(MODEL_LIST, models=[fill_shape(MODEL, id=m) for m in self._models])
        ).encode()
        self._balance_body = dumps(fill_shape(BALANCE, available=self._has_balance, balance=balance)).encode()

        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._id_rng = random.Random(f"ids-{seed}")
        self._script: Deque[Fault] = collections.deque()
        self._storm: Optional[Tuple[float, Fault]] = None  # (monotonic deadline, fault)
        self._received: Deque[ReceivedRequest] = collections.deque(maxlen=max_received)
        self._requests = 0
        self._by_status: Dict[int, int] = {}
        self._peak = 0
        self._in_flight = 0
        self._connections = 0
        self._faults_injected: Dict[str, int] = {}
        self._prompt_cache = PromptCache(rules)

        self._stopping = threading.Event()
        self._wire = Wire(self._stopping, self._record, self._trickle_interval, self._chunk_delay)
        self._listener: Optional[socket.socket] = None
        self._wake: Optional[Tuple[socket.socket, socket.socket]] = None
        self._accept_thread: Optional[threading.Thread] = None
        self._conns: Dict[socket.socket, threading.Thread] = {}
        self._base_url: Optional[str] = None

    # -- public surface -------------------------------------------------------------------

    @staticmethod
    def answer_for(prompt: str) -> str:
        """The content answered when the last user message is ``prompt`` (thinking or not)."""
        return answer_for(prompt)

    @staticmethod
    def reasoning_for(prompt: str) -> str:
        """The ``reasoning_content`` produced for ``prompt`` in thinking mode."""
        return reasoning_for(prompt)

    @staticmethod
    def fim_answer_for(prompt: str, suffix: Optional[str] = None) -> str:
        """The text a FIM request with ``prompt`` and ``suffix`` gets."""
        return fim_answer_for(prompt, suffix)

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the running server (no ``/v1``).

        :raises RuntimeError: before :meth:`start`.
        """
        if self._base_url is None:
            raise RuntimeError("FakeDeepSeek is not started; use start() or a with block")
        return self._base_url

    @property
    def stats(self) -> FakeStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return FakeStats(
                self._requests,
                dict(self._by_status),
                self._peak,
                self._in_flight,
                self._connections,
                dict(self._faults_injected),
            )

    @property
    def received(self) -> List[ReceivedRequest]:
        """The requests received since the last :meth:`reset`, oldest first."""
        with self._lock:
            return list(self._received)

    def script(self, *faults: str) -> None:
        """Queue faults for the next authenticated requests, in order, before random faults.

        :raises ValueError: on an unknown fault name (nothing is queued then).
        """
        parsed = [parse_fault(f) for f in faults]
        with self._lock:
            self._script.extend(parsed)

    def storm(self, seconds: float, fault: str) -> None:
        """Give ``fault`` to every authenticated request for the next ``seconds`` (a 429 storm).

        Scripted faults still come first; random faults resume when the storm is over.  Being
        tied to the clock, which requests fall inside a storm is not reproducible by seed.

        :raises ValueError: on an unknown fault name or a negative duration.
        """
        parsed = parse_fault(fault)
        if not seconds >= 0:
            raise ValueError(f"storm duration must be >= 0, got {seconds!r}")
        with self._lock:
            self._storm = (time.monotonic() + seconds, parsed)

    def reset(self) -> None:
        """Forget counters, script, received log and prefix cache, and reseed the RNG.

        After a reset the server behaves as if new, except that request ids stay unique and
        requests still in flight stay counted in ``in_flight``.
        """
        with self._lock:
            self._script.clear()
            self._storm = None
            self._received.clear()
            self._requests = 0
            self._by_status = {}
            self._peak = self._in_flight
            self._connections = 0
            self._faults_injected = {}
            self._rng.seed(self._seed)
        self._prompt_cache.clear()

    def start(self) -> FakeDeepSeek:
        """Bind and start serving in background threads; returns self.

        :raises RuntimeError: if already running.
        """
        if self._accept_thread is not None:
            raise RuntimeError("FakeDeepSeek is already running")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        listener = socket.create_server((self._host, self._port), family=family, backlog=1024)
        listener.setblocking(False)
        self._stopping.clear()
        self._listener = listener
        self._wake = socket.socketpair()
        port = listener.getsockname()[1]
        host = f"[{self._host}]" if family == socket.AF_INET6 else self._host
        self._base_url = f"http://{host}:{port}"
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"FakeDeepSeek:{port}", daemon=True)
        self._accept_thread.start()
        logger.debug("FakeDeepSeek listening on %s", self._base_url)
        return self

    def stop(self) -> None:
        """Stop promptly: close the listener, drop open connections, wake waiting handlers.

        Safe to call twice and while handlers are in long latency, ``trickle_forever`` or
        ``hold_after_done``.
        """
        thread = self._accept_thread
        if thread is None:
            return
        self._stopping.set()
        assert self._wake is not None and self._listener is not None
        with contextlib.suppress(OSError):
            self._wake[1].send(b"x")
        thread.join(STOP_JOIN_SECONDS)
        self._listener.close()
        for s in self._wake:
            s.close()
        with self._lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        for _, handler in conns:
            handler.join(max(0.0, deadline - time.monotonic()))
        self._accept_thread = None
        logger.debug("FakeDeepSeek on %s stopped", self._base_url)

    def __enter__(self) -> FakeDeepSeek:
        return self.start()

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self._base_url if self._accept_thread is not None else "stopped"
        return f"<FakeDeepSeek {state}>"

    # -- requests ---------------------------------------------------------------------------

    def _handle(
        self, sock: socket.socket, method: str, target: str, version: str, headers: Dict[str, str], raw: bytes
    ) -> int:
        target = origin_form(target)
        path = target.split("?", 1)[0]
        # HEAD is GET without a body (RFC 9110, section 9.3.2): same status and headers.
        received_method = method
        head_only = method == "HEAD"
        if head_only:
            method = "GET"
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
        body: Any = None
        bad_json: Optional[ValueError] = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                bad_json = exc
        route = ROUTES.get(path)
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        authorized = scheme.lower() == "bearer" and bool(token) and (self._api_key is None or token == self._api_key)
        eligible = authorized and route is not None and route[0] == method

        fault: Optional[Fault] = None
        delay = 0.0
        with self._lock:
            self._requests += 1
            self._in_flight += 1
            if self._in_flight > self._peak:
                self._peak = self._in_flight
            self._received.append(ReceivedRequest(received_method, target, headers, body))
            rid = f"{self._id_rng.getrandbits(128):032x}"
            over_cap = counted = False
            if eligible and route is not None and route[1] in ("chat", "fim") and self._max_concurrency is not None:
                over_cap = self._generating >= self._max_concurrency
                if not over_cap:
                    self._generating += 1
                    counted = True
            if eligible and not over_cap:
                if self._script:
                    fault = self._script.popleft()
                elif self._storm is not None and time.monotonic() < self._storm[0]:
                    fault = self._storm[1]
                elif self._rates:
                    draw = self._rng.random()
                    for bound, candidate in self._rates:
                        if draw < bound:
                            fault = candidate
                            break
                if fault is not None:
                    if fault.kind == "ok":
                        fault = None
                    else:
                        self._faults_injected[fault.kind] = self._faults_injected.get(fault.kind, 0) + 1
                if self._latency is not None:
                    delay = self._draw_latency()
        rid = f"{rid[:8]}-{rid[8:12]}-{rid[12:16]}-{rid[16:20]}-{rid[20:]}"
        ex = Exchange(self._wire, sock, rid, keep_alive, delay, head_only)
        ex.generating = counted
        try:
            if route is None:
                return ex.error(404, f"Not Found: no endpoint at {path}", param=None)
            if not authorized:
                return ex.error(
                    401,
                    f"Authentication Fails, Your api key: ****{token[-4:]} is invalid",
                    type_="authentication_error",
                )
            if route[0] != method:
                return ex.error(405, f"Method Not Allowed: use {route[0]} for {path}", extra=f"Allow: {route[0]}\r\n")
            if over_cap:
                return self._cap_reached(ex)
            if fault is not None:
                if fault.kind == "reset":
                    ex.end(None)
                    return RESET
                if fault.status is not None:
                    return self._fault_status(ex, fault)
            kind = route[1]
            if kind == "models":
                return ex.plain(self._models_body, fault)
            if kind == "balance":
                return ex.plain(self._balance_body, fault)
            return self._generate(ex, kind, route[2], body, bad_json, fault)
        finally:
            ex.end(None)

    def _cap_reached(self, ex: Exchange) -> int:
        """DeepSeek's answer above the account's cap (the wording of a 429 users reported)."""
        with self._lock:
            self._faults_injected["cap"] = self._faults_injected.get("cap", 0) + 1
        extra = f"Retry-After: {format_seconds(self._retry_after)}\r\n" if self._retry_after is not None else ""
        message = f"Rate Limit Reached: concurrency limit of {self._max_concurrency} based on your remaining balance"
        return ex.error(429, message, type_="rate_limit_error", code="rate_limit_exceeded", extra=extra)

    def _draw_latency(self) -> float:
        """Call the latency function with the shared RNG (the lock is held by the caller)."""
        assert self._latency is not None
        try:
            return max(0.0, float(self._latency(self._rng)))
        except Exception:  # a user's latency function must not kill the connection thread
            logger.exception("FakeDeepSeek latency function failed; answering without delay")
            return 0.0

    def _fault_status(self, ex: Exchange, fault: Fault) -> int:
        status = fault.status
        assert status is not None
        message, type_, code = ERRORS[status]
        seconds = fault.retry_after if fault.retry_after is not None else self._retry_after
        extra = ""
        if seconds is not None and status in (429, 503):
            extra = f"Retry-After: {format_seconds(seconds)}\r\n"
        return ex.error(status, message, type_=type_, code=code, extra=extra)

    def _generate(
        self, ex: Exchange, kind: str, beta: bool, body: Any, bad_json: Optional[ValueError], fault: Optional[Fault]
    ) -> int:
        try:
            if bad_json is not None:
                where = ""
                if isinstance(bad_json, json.JSONDecodeError):
                    where = f"{bad_json.msg.lower()} at line {bad_json.lineno} column {bad_json.colno}"
                raise ApiError(400, f"Failed to deserialize the JSON body into the target type: {where or bad_json}")
            if body is None:
                raise ApiError(
                    400,
                    "Failed to deserialize the JSON body into the target "
                    "type: EOF while parsing a value at line 1 column 0",
                )
            if kind == "chat":
                plan = proto.plan_chat(body, self._model_set, self._models, beta=beta)
            else:
                plan = proto.plan_fim(body, self._model_set, self._models)
        except ApiError as exc:
            return ex.error(exc.status, exc.message, type_=exc.type, code=exc.code, param=exc.param)
        except Exception:  # a bug in the fake: answer like a server would, and say so in the log
            logger.exception("FakeDeepSeek failed to plan an answer for %r", body)
            message, type_, code = ERRORS[500]
            return ex.error(500, message, type_=type_, code=code)
        if not self._has_balance:
            message, type_, code = ERRORS[402]
            return ex.error(402, message, type_=type_, code=code)
        if fault is not None and fault.kind == "insufficient":
            plan = proto.cut_short(plan)
        cache = self._prompt_cache
        usage = plan.usage(cache.lookup(plan.cache_scope, plan.cache_keys, plan.cache_tokens))
        created = int(time.time())
        if plan.stream:
            events = render.stream_events(plan, ex.rid, created, usage if plan.include_usage else None, self._chunks)
            after = ex.stream(events, fault)
        else:
            after = ex.plain(render.chat_body(plan, ex.rid, created, usage), fault)
        if (fault is None or fault.kind not in UNFINISHED_FAULTS) and not self._stopping.is_set():
            cache.complete(plan.cache_scope, plan.cache_keys, plan.cache_tokens, plan.answer_prefix())
        return after

    # -- counters ---------------------------------------------------------------------------

    def _record(self, status: Optional[int], leaving: bool, generating: bool) -> None:
        """Count an answer's status and/or its leaving in-flight (and the cap), under the lock."""
        with self._lock:
            if leaving:
                self._in_flight -= 1
            if generating:
                self._generating -= 1
            if status is not None:
                self._by_status[status] = self._by_status.get(status, 0) + 1
