"""``DeepSeekClient``: one thread-safe object for calling the DeepSeek API.

Transport: one ``requests.Session`` whose ``HTTPAdapter`` holds a connection pool
sized to the threads that share it, with :class:`~deepseek_pool.wire.retry.DeepSeekRetry`
mounted for retries. The session is configured once; everything per call travels
as arguments, so any number of threads may share one client.

Every request goes through the session as requests would send it (its headers, auth,
params, cookies, hooks, proxies, certificates and mounted adapters, and the tools that
patch requests); where requests' layers would add nothing, a call goes straight to the
urllib3 pool they would pick, because per-call CPU decides how many threads two cores
can feed (see :mod:`deepseek_pool.wire.route`).

Example::

    import deepseek_pool as dp

    client = dp.DeepSeekClient()            # DEEPSEEK_API_KEY from the environment
    print(client.chat("Say hi").content)
    with client.chat_stream("Count to 3") as stream:
        for chunk in stream:
            print(chunk.content or "", end="")
"""

from __future__ import annotations

import logging
import os
import threading
import time
from functools import partial
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union, Unpack

import requests

from . import config
from .budget.limiter import Limiter
from .cache.response_cache import CacheLike, CacheLookup, open_cache
from .config import Timeout, TimeoutLike
from .errors import APITimeoutError, ConfigurationError
from .forks import ProcessBound, reset_after_fork
from .messages import Messages, build_chat_body, header_problem, normalize_messages
from .models import DEFAULT_MODEL
from .params import ChatParams, FIMParams, merge_extra_body
from .telemetry import TelemetryLike, resolve_telemetry
from .types import (
    Balance,
    ChatCompletion,
    FIMCompletion,
    completion_problem,
    model_list_problem,
    object_problem,
)
from .wire.answers import ChunkCallback, aggregate_stream, parse_chat, parse_json
from .wire.attempts import AttemptLoop
from .wire.calls import Attempt, CallControl, CallHandle, RetryListener
from .wire.mount import SizedConnections
from .wire.reader import READER
from .wire.retry import DeepSeekRetry
from .wire.route import SessionRoute, client_headers
from .wire.slot import SlotCall, SlotStream
from .wire.stream import ChatStream
from .wire.urls import default_beta_url, normalize_base_url

__all__ = [
    "CallControl",
    "CallHandle",
    "ChatStream",
    "DeepSeekClient",
    "Messages",
    "build_chat_body",
    "normalize_messages",
]

log = logging.getLogger(__name__)

_USER_AGENT = f"deepseek-pool/0.1 (python-requests/{requests.__version__})"


class DeepSeekClient(SizedConnections, ProcessBound):
    """A thread-safe client for the DeepSeek API.

    :param api_key: the key; defaults to ``DEEPSEEK_API_KEY``.
    :param base_url: defaults to ``DEEPSEEK_BASE_URL``, else ``https://api.deepseek.com``.
        Used as given (a trailing slash aside), as openai-python does: requests go to
        ``base_url + "/chat/completions"``, so ``https://api.deepseek.com`` and
        ``https://api.deepseek.com/v1`` both reach DeepSeek, and any other
        OpenAI-compatible server works at whatever path it lives (``http://host:8000/v1``).
    :param beta_url: where ``/completions`` (FIM) is posted; by default ``base_url`` with
        ``/beta`` appended, or with a final ``/v1`` replaced by ``/beta`` (DeepSeek's beta
        lives at ``https://api.deepseek.com/beta``).
    :param model: the default model; defaults to ``DEEPSEEK_MODEL``, else
        :data:`deepseek_pool.models.DEFAULT_MODEL`.
    :param timeout: seconds for a whole attempt, or a :class:`~deepseek_pool.Timeout`.
    :param max_retries: retries after the first attempt (0 disables), or a
        :class:`~deepseek_pool.DeepSeekRetry` for full control of the policy.
    :param retry_timeouts: also retry after a read timeout (the server may have
        processed, and billed, the first attempt).
    :param call_timeout: bound on a whole call, retries and backoff included.
    :param pool_maxsize: connections kept open; set it to the number of threads
        sharing the client (``DeepSeekPool`` does this for you).
    :param headers: extra headers sent on every request.
    :param rate_limit_group: sent as ``X-RateLimit-Group`` on every request.
    :param session: a ``requests.Session`` to send through, as requests would: its
        headers, auth, params, cookies, hooks, proxies (and the environment's, with
        ``trust_env``), ``verify``, ``cert`` and mounted adapters apply, as they are at each
        call. The client mounts nothing on it and does not close it. Mount a
        :class:`~deepseek_pool.DeepSeekAdapter` sized to your threads on it so the watchdog
        can break stalled connections and urllib3 keeps them all.
    :param limiter: a :class:`~deepseek_pool.Limiter` whose budget direct calls share:
        ``chat``, ``chat_stream`` and ``fim`` each take a slot (waiting within the call's
        deadline), give it back when the call or the stream ends, and feed it their 429s
        and retries as a pool's calls do. A pool's calls through this client take none
        here: their pool's limiter already holds one (give the pool this limiter too).
    :param share: the guaranteed share of ``limiter``'s budget that direct calls take
        (``limiter.for_share(share)`` becomes :attr:`limiter`).
    :param shared_stream_reader: read streams that nobody watches chunk by chunk
        (``chat(stream=True)`` without ``on_chunk``, a pool's streams without its
        ``on_chunk``) on the process's one stream reader thread, which serves every
        readable socket per wake-up, while the calling thread sleeps until the answer
        is whole (see :mod:`deepseek_pool.wire.reader`). False reads each in its calling thread.
    :param telemetry: OpenTelemetry spans and metrics (see :doc:`observability`). None (the
        default): recorded once the application configures OpenTelemetry's global providers;
        False: never; a :class:`~deepseek_pool.Telemetry`: to its providers.
    :param cache: a response cache (opt-in): a :class:`~deepseek_pool.ResponseCache`, or a URI
        the client opens (and closes): ``sqlite:////abs/path.db``, ``redis://host:6379/0``,
        ``memory://``, ``?ttl=SECONDS``. ``chat``, ``chat_stream`` and ``fim`` then serve an
        answer stored for the very same request (``.cached``: not sent, no slot, $0) and store
        each complete answer; ``cache=False`` on a call skips it. See :mod:`deepseek_pool.cache`.
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        *,
        base_url: Optional[str] = None,
        model: Optional[str] = None,
        timeout: TimeoutLike = None,
        max_retries: Union[int, DeepSeekRetry, None] = None,
        retry_timeouts: bool = True,
        call_timeout: Optional[float] = None,
        pool_maxsize: Optional[int] = None,
        headers: Optional[Mapping[str, str]] = None,
        rate_limit_group: Optional[str] = None,
        session: Optional[requests.Session] = None,
        beta_url: Optional[str] = None,
        shared_stream_reader: bool = True,
        limiter: Optional[Limiter] = None,
        telemetry: TelemetryLike = None,
        cache: CacheLike = None,
        share: Optional[str] = None,
    ) -> None:
        if share is not None:  # refused before anything is made
            if not isinstance(limiter, Limiter):
                raise ConfigurationError(f"share={share!r} needs limiter=, a Limiter with shares=")
            limiter = limiter.for_share(share)
        key = api_key if api_key is not None else os.environ.get(config.ENV_API_KEY)
        if not key:
            raise ConfigurationError(
                "no DeepSeek API key: pass api_key=... or set the DEEPSEEK_API_KEY environment variable"
            )
        if not isinstance(key, str):
            raise ConfigurationError(f"the API key must be a str, got {type(key).__name__}")
        problem = header_problem(key.strip(), token=True)
        if problem is not None:
            raise ConfigurationError(f"the API key cannot be sent in an HTTP header: it {problem}")
        self._api_key = key.strip()
        self.base_url = normalize_base_url(base_url or os.environ.get(config.ENV_BASE_URL) or config.DEFAULT_BASE_URL)
        self.model = model or os.environ.get(config.ENV_MODEL) or DEFAULT_MODEL
        self.timeout = Timeout.coerce(timeout)
        if max_retries is None:
            max_retries = config.DEFAULT_MAX_RETRIES
        if isinstance(max_retries, DeepSeekRetry):
            retry = max_retries if retry_timeouts else max_retries.new(retry_timeouts=False)
            max_retries = retry.total if isinstance(retry.total, int) else config.DEFAULT_MAX_RETRIES
        elif isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an int >= 0 or a DeepSeekRetry, got {max_retries!r}")
        else:
            retry = DeepSeekRetry(max_retries, retry_timeouts=retry_timeouts)
        self.max_retries: int = max_retries
        if call_timeout is not None and (not isinstance(call_timeout, (int, float)) or call_timeout <= 0):
            raise ConfigurationError(f"call_timeout must be a positive number of seconds, got {call_timeout!r}")
        self.call_timeout = call_timeout
        self.retry = retry
        if pool_maxsize is None:
            pool_maxsize = config.DEFAULT_POOL_MAXSIZE
        if isinstance(pool_maxsize, bool) or not isinstance(pool_maxsize, int) or pool_maxsize < 1:
            raise ConfigurationError(f"pool_maxsize must be an int >= 1, got {pool_maxsize!r}")
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        self._size_connections(pool_maxsize)

        own_headers, authorization = client_headers(
            _USER_AGENT, self._api_key, headers, rate_limit_group, compress=session is None
        )
        self._route = SessionRoute(self.session, own_headers, authorization)
        self._chat_url = self.base_url + "/chat/completions"
        self.telemetry = resolve_telemetry(telemetry)
        self._call = AttemptLoop(self).run  # every call's attempts, retries and waits
        reset_after_fork(self)
        self.beta_url = normalize_base_url(beta_url) if beta_url else default_beta_url(self.base_url)
        self._fim_url = self.beta_url + "/completions"
        self._beta_chat_url = self.beta_url + "/chat/completions"
        self.shared_stream_reader = bool(shared_stream_reader) and READER.available
        if limiter is not None and not isinstance(limiter, Limiter):
            raise ConfigurationError(f"limiter must be a deepseek_pool.Limiter, got {limiter!r}")
        self.limiter = limiter
        self.cache, self._owns_cache = None, False
        try:
            self.cache, self._owns_cache = open_cache(cache)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return (
            f"DeepSeekClient(base_url={self.base_url!r}, model={self.model!r}, api_key=<hidden>, "
            f"timeout={self.timeout!r}, max_retries={self.max_retries}, pool_maxsize={self.pool_maxsize})"
        )

    # -- transport -------------------------------------------------------------------

    def _send(
        self, method: str, url: str, body: Optional[bytes], timeout: Timeout, attempt: Attempt
    ) -> requests.Response:
        """One HTTP exchange up to the response head; raises the transport's own exceptions."""
        self._check_process()  # never a connection of another process
        remaining = attempt.deadline - time.monotonic()
        if remaining <= 0:
            raise APITimeoutError("the attempt's total deadline passed before the request was sent")
        connect, read = min(timeout.connect, remaining), min(timeout.read, remaining)
        return self._route.send(method, url, body, connect, read, attempt.handle)

    @staticmethod
    def _control(control: Optional[CallControl], on_retry: Optional[RetryListener]) -> Optional[CallControl]:
        if on_retry is None:
            return control
        if control is not None:
            raise TypeError("give on_retry= or control=, not both (a CallControl has its own on_retry)")
        return CallControl(on_retry=on_retry)

    def _slot(self, control: Optional[CallControl]) -> Optional[SlotCall]:
        """A direct call's slot of the client's limiter (None: no limiter, or the control holds one)."""
        if self.limiter is None or getattr(control, "holds_slot", False):
            return None
        return SlotCall(self.limiter, control, retry=self.retry, call_timeout=self.call_timeout)

    def _lookup(self, cache: bool, control: Optional[CallControl], url: str, body: Any) -> Optional[CacheLookup]:
        """This call's look in the response cache (None: no cache, or ``cache=False``)."""
        looked = getattr(control, "response_cache", None)
        if looked is not None:  # a pool looked before it took its limits: keep the answer there
            return looked.lookup(url, body, look=False)  # type: ignore[no-any-return]
        return None if cache is False or self.cache is None else self.cache.lookup(url, body)

    def _chat_request(
        self, messages: Messages, model: Optional[str], params: Mapping[str, Any], stream: bool, beta: bool
    ) -> Tuple[str, Dict[str, Any]]:
        body = build_chat_body(messages, self.model if model is None else model, params)
        if stream:
            body["stream"] = True
        return (self._beta_chat_url if beta else self._chat_url), body

    def _fim_request(
        self, prompt: Any, suffix: Any, model: Optional[str], params: Mapping[str, Any]
    ) -> Tuple[str, Dict[str, Any]]:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if suffix is not None and not isinstance(suffix, str):
            raise TypeError(f"suffix must be a str or None, got {type(suffix).__name__}")
        body: Dict[str, Any] = {"model": self.model if model is None else model, "prompt": prompt}
        if suffix is not None:
            body["suffix"] = suffix
        body.update(params)
        if "extra_body" in params:
            merge_extra_body(body)
        return self._fim_url, body

    def request_for(self, endpoint: str, messages: Messages, params: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
        """The URL and JSON body a call sends: ``endpoint`` is ``"chat"``, ``"beta"`` or ``"fim"``
        (``messages`` then the prompt), ``params`` what ``chat``/``fim`` take (``model``, ``stream``,
        ``suffix``; ``timeout`` is sent in no body). A pool looks its calls up in its cache with it."""
        options = {key: value for key, value in params.items() if key != "timeout"}
        model = options.pop("model", None)
        if endpoint == "fim":
            return self._fim_request(messages, options.pop("suffix", None), model, options)
        stream = bool(options.pop("stream", False))
        return self._chat_request(messages, model, options, stream, endpoint == "beta")

    # -- API -------------------------------------------------------------------------

    def chat(
        self,
        messages: Messages,
        *,
        model: Optional[str] = None,
        timeout: TimeoutLike = None,
        on_retry: Optional[RetryListener] = None,
        on_chunk: Optional[ChunkCallback] = None,
        stream: bool = False,
        restart_streams: bool = False,
        control: Optional[CallControl] = None,
        beta: bool = False,
        cache: bool = True,
        **params: Unpack[ChatParams],
    ) -> ChatCompletion:
        """Send one chat request and return its answer.

        :param messages: a str (one user message) or a list of message dicts.
        :param model: defaults to the client's model.
        :param stream: stream the answer under the hood (``on_chunk`` sees each
            chunk; time to first token and keep-alive handling then apply) and
            return it aggregated.
        :param restart_streams: with ``stream`` and ``on_chunk``, also retry a stream
            that broke after ``on_chunk`` saw some of it (the retry starts over, so
            ``on_chunk`` sees the new attempt from its first chunk). By default such a
            stream raises instead, so a relay never shows text twice.
        :param on_retry: called before each retry with a :class:`~deepseek_pool.RetryEvent`.
        :param control: a :class:`~deepseek_pool.CallControl` (deadline, cancel event,
            abort handle, hooks) for callers that run calls themselves.
        :param beta: post to ``beta_url + "/chat/completions"`` (chat prefix completion,
            strict tool schemas) instead of ``base_url + "/chat/completions"``.
        :param cache: False: neither look the call up in the client's response cache nor
            keep its answer there. A cached answer has ``cached`` set; a cached streamed one
            is shown to ``on_chunk`` as chunks first.
        :param params: DeepSeek's chat fields, typed by :class:`~deepseek_pool.ChatParams`:
            ``thinking`` (``True``/``False`` switches thinking mode), ``reasoning_effort``,
            ``max_tokens``, ``temperature``, ``response_format``, ``tools``, ``tool_choice``,
            ``user_id`` ...; a field it does not list goes in ``extra_body={...}``, merged into
            the body last (untyped keywords still pass through at run time, but mypy flags them).
        :raises DeepSeekError: see :mod:`deepseek_pool.errors`.
        """
        url, body = self._chat_request(messages, model, params, stream, beta)
        control = self._control(control, on_retry)
        lookup = self._lookup(cache, control, url, body)
        if lookup is not None and lookup.hit is not None:
            return lookup.chat(on_chunk)  # not sent: no slot, nothing billed
        store = None if lookup is None else lookup.store
        slot = self._slot(control)
        if slot is not None:
            control = slot.start()
        try:
            if stream:
                answer = self._call(
                    "POST",
                    url,
                    body,
                    timeout=timeout,
                    control=control,
                    stream=True,
                    parse=partial(
                        aggregate_stream,
                        self.shared_stream_reader,
                        on_chunk,
                        restart_streams,
                        control,
                        on_complete=store,
                    ),
                )
            else:
                answer = self._call("POST", url, body, timeout=timeout, control=control, parse=parse_chat)
                if store is not None:
                    store(answer)
        except BaseException:
            if slot is not None:
                slot.end(ok=False)
            raise
        if slot is not None:
            slot.end(ok=True, usage=answer.usage)
        return answer  # type: ignore[no-any-return]

    def chat_stream(
        self,
        messages: Messages,
        *,
        model: Optional[str] = None,
        timeout: TimeoutLike = None,
        on_retry: Optional[RetryListener] = None,
        control: Optional[CallControl] = None,
        cache: bool = True,
        **params: Unpack[ChatParams],
    ) -> ChatStream:
        """Start a streamed chat answer; use the result as a context manager and iterate it.

        Errors the server answers with (401, 429 after retries ...) raise here; a
        failure in the middle of the stream raises from the iteration. Add
        ``stream_options={"include_usage": True}`` for a final usage chunk. ``params``
        are :meth:`chat`'s (:class:`~deepseek_pool.ChatParams`), and so is ``cache``: a
        cached answer is replayed as chunks, and a stream read to its end is kept.

        ::

            with client.chat_stream("Hi") as stream:
                for chunk in stream:
                    print(chunk.content or "", end="", flush=True)
        """
        url, body = self._chat_request(messages, model, params, True, False)
        control = self._control(control, on_retry)
        lookup = self._lookup(cache, control, url, body)
        if lookup is not None and lookup.hit is not None:
            return lookup.stream()
        store = None if lookup is None else lookup.store
        slot = self._slot(control)
        stream = (
            partial(ChatStream, on_complete=store)
            if slot is None
            else partial(SlotStream, slot=slot, on_complete=store)
        )
        try:
            return self._call(  # type: ignore[no-any-return]
                "POST",
                url,
                body,
                timeout=timeout,
                control=control if slot is None else slot.start(),
                stream=True,
                parse=lambda data, response, attempt: stream(response, attempt),
            )
        except BaseException:
            if slot is not None:
                slot.end(ok=False)
            raise

    def fim(
        self,
        prompt: str,
        suffix: Optional[str] = None,
        *,
        model: Optional[str] = None,
        timeout: TimeoutLike = None,
        control: Optional[CallControl] = None,
        cache: bool = True,
        **params: Unpack[FIMParams],
    ) -> FIMCompletion:
        """Fill in the middle between ``prompt`` and ``suffix`` (DeepSeek's beta completions).

        ``params`` are DeepSeek's FIM fields, typed by :class:`~deepseek_pool.FIMParams`
        (``max_tokens``, ``stop``, ``echo`` ...; others in ``extra_body={...}``); ``cache`` is :meth:`chat`'s.
        """
        url, body = self._fim_request(prompt, suffix, model, params)
        lookup = self._lookup(cache, control, url, body)
        if lookup is not None and lookup.hit is not None:
            return lookup.fim()
        slot = self._slot(control)
        try:
            answer = self._call(
                "POST",
                url,
                body,
                timeout=timeout,
                control=control if slot is None else slot.start(),
                parse=lambda data, response, attempt: FIMCompletion(parse_json(data, response, completion_problem)),
            )
            if lookup is not None:
                lookup.store(answer)
        except BaseException:
            if slot is not None:
                slot.end(ok=False)
            raise
        if slot is not None:
            slot.end(ok=True, usage=answer.usage)
        return answer  # type: ignore[no-any-return]

    def models(self, *, timeout: TimeoutLike = None) -> List[str]:
        """The ids of the models this key can use."""
        data = self._call(
            "GET",
            self.base_url + "/models",
            None,
            timeout=timeout,
            control=None,
            parse=lambda data, response, attempt: parse_json(data, response, model_list_problem),
        )
        return [entry["id"] for entry in data["data"] if isinstance(entry, dict) and isinstance(entry.get("id"), str)]

    def balance(self, *, timeout: TimeoutLike = None) -> Balance:
        """The account balance (``is_available`` tells whether calls can be paid for)."""
        return self._call(  # type: ignore[no-any-return]
            "GET",
            self.base_url + "/user/balance",
            None,
            timeout=timeout,
            control=None,
            parse=lambda data, response, attempt: Balance(parse_json(data, response, object_problem)),
        )

    def _after_fork(self) -> None:
        """In a forked child: the pooled connections are the parent's sockets; never reuse them.

        Closing the child's copies leaves the parent's connections open; the pools stay
        usable and connect afresh.
        """
        self._lock = threading.Lock()
        self._route.forget()
        for adapter in self.session.adapters.values():
            adapter.close()

    def close(self) -> None:
        """Close the client's own session; a session the user gave stays theirs, open."""
        if self._owns_session:
            self.session.close()
        if self._owns_cache and self.cache is not None:
            self.cache.close()

    def __enter__(self) -> DeepSeekClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
