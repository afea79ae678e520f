"""``DeepSeekClient``: one thread-safe object for calling the DeepSeek API.

Transport: one ``requests.Session`` whose ``HTTPAdapter`` holds a connection pool
sized to the threads that share it, with :class:`~deepseek_pool.wire.retry.DeepSeekRetry`
mounted for retries. The session is configured once; everything per call travels
as arguments, so any number of threads may share one client.

The request path is kept lean because per-call CPU decides how many threads two
cores can feed: the session's environment (proxies, CA bundle) is resolved once
at construction instead of on every call, headers are merged once, and calls go
straight to the urllib3 pool the adapter would pick (see :mod:`~deepseek_pool.wire.transport`); a
patched ``HTTPAdapter.send`` (``responses``), a user's own adapter or a proxy keeps
the adapter path.

Example::

    import deepseek_pool as dp

    client = dp.DeepSeekClient()            # DEEPSEEK_API_KEY from the environment
    print(client.chat("Say hi").content)
    with client.chat_stream("Count to 3") as stream:
        for chunk in stream:
            print(chunk.content or "", end="")
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Optional, Union
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout as Urllib3Timeout

from . import config
from .config import Timeout, TimeoutLike
from .errors import APIResponseValidationError, ConfigurationError, DeepSeekError, IncompleteResponseError
from .forks import reset_after_fork
from .messages import Messages, build_chat_body, header_problem, normalize_messages
from .models import DEFAULT_MODEL
from .types import (
    Balance,
    ChatChunk,
    ChatCompletion,
    FIMCompletion,
    completion_problem,
    model_list_problem,
    object_problem,
)
from .wire.attempts import NO_RETRIES, AttemptLoop
from .wire.calls import CallControl, CallHandle, RetryListener, sending
from .wire.reader import READER
from .wire.retry import DeepSeekRetry
from .wire.transport import GENUINE_SEND, Attempt, ChatStream, DeepSeekAdapter, Route, request_id_of, wrap_response

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

ChunkCallback = Callable[[ChatChunk], None]
#: Says what makes a parsed body not the expected shape, or None when it is fine.
ShapeCheck = Callable[[Any], Optional[str]]

_USER_AGENT = f"deepseek-pool/0.1 (python-requests/{requests.__version__})"
#: A 200 that stopped for this reason is a load failure, not an answer.
_INSUFFICIENT = "insufficient_system_resource"


def _answered(completion: ChatCompletion) -> ChatCompletion:
    """Return ``completion``, or raise when it is a load failure dressed as a 200."""
    if completion.finish_reason == _INSUFFICIENT:
        raise IncompleteResponseError(
            "DeepSeek cut the answer short for lack of server resources (insufficient_system_resource)",
            status_code=200,
            body=completion.raw,
            request_id=completion.request_id,
        )
    return completion


class DeepSeekClient:
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
    :param session: a ``requests.Session`` to use (its adapters, proxies, certificates
        and headers apply; it is not closed by :meth:`close`).
    :param shared_stream_reader: read streams that nobody watches chunk by chunk
        (``chat(stream=True)`` without ``on_chunk``, a pool's streams without its
        ``on_chunk``) on the process's one stream reader thread, which serves every
        readable socket per wake-up, while the calling thread sleeps until the answer
        is whole (see :mod:`deepseek_pool.wire.reader`). False reads each in its calling thread.
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
    ) -> None:
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
        self.base_url = self._normalize_base_url(
            base_url or os.environ.get(config.ENV_BASE_URL) or config.DEFAULT_BASE_URL
        )
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
        self._lock = threading.Lock()
        self._owns_session = session is None
        self.session = session if session is not None else requests.Session()
        self.pool_maxsize = 0
        self._base_pool_maxsize = pool_maxsize
        self._reserved = 0
        self._own_adapter: Optional[HTTPAdapter] = None
        self._route: Optional[Route] = None
        self._mount(pool_maxsize)

        base_headers: Dict[str, str] = {}
        if session is not None:
            base_headers.update(session.headers)  # type: ignore[arg-type]
        else:
            base_headers["Accept-Encoding"] = "gzip, deflate"
        base_headers.update(
            {
                "User-Agent": _USER_AGENT,
                "Accept": "application/json",
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self._api_key}",
            }
        )
        if rate_limit_group:
            base_headers["X-RateLimit-Group"] = rate_limit_group
        if headers:
            base_headers.update(headers)
        for name, value in base_headers.items():
            problem = header_problem(value) if isinstance(value, str) else "is not a str"
            if problem is not None and name != "Authorization":
                raise ConfigurationError(f"header {name!r} cannot be sent: its value {problem}")
        self._headers = base_headers
        # Resolved once: requests would look up proxies, netrc and CA bundles on every call.
        settings = self.session.merge_environment_settings(self.base_url, {}, None, None, None)
        self._send_kwargs: Dict[str, Any] = {
            "verify": settings.get("verify", True),
            "cert": settings.get("cert"),
            "proxies": settings.get("proxies") or {},
        }
        self._chat_url = self.base_url + "/chat/completions"
        self._call = AttemptLoop(self).run  # every call's attempts, retries and waits
        reset_after_fork(self)
        self.beta_url = self._normalize_base_url(beta_url) if beta_url else self._default_beta_url(self.base_url)
        self._fim_url = self.beta_url + "/completions"
        self._beta_chat_url = self.beta_url + "/chat/completions"
        self.shared_stream_reader = bool(shared_stream_reader) and READER.available

    @staticmethod
    def _normalize_base_url(url: str) -> str:
        url = url.strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(f"base_url must be an http(s) URL like https://api.deepseek.com, got {url!r}")
        return url

    @staticmethod
    def _default_beta_url(base_url: str) -> str:
        """DeepSeek's beta endpoints live beside ``/v1``, not under it."""
        if base_url.endswith("/v1"):
            return base_url[:-3] + "/beta"
        return base_url + "/beta"

    def _mount(self, pool_maxsize: int) -> None:
        """Mount an adapter with ``pool_maxsize`` connections and our retry policy on the base URL."""
        prefix = self.base_url
        if not self._owns_session:
            custom = [
                p
                for p in self.session.adapters
                if prefix.lower().startswith(p.lower()) and "://" in p and len(p) > len(urlsplit(p).scheme) + 3
            ]
            if custom:
                # The user mounted their own adapter for this host: it keeps its pool settings,
                # and the client's loop does the retrying, so the adapter must not retry too.
                prefix = max(custom, key=len)
                adapter = self.session.adapters[prefix]
                own_retries = getattr(adapter, "max_retries", None)
                if isinstance(own_retries, Retry) and own_retries.total not in (0, False, None):
                    raise ConfigurationError(
                        f"the adapter mounted for {prefix!r} retries by itself ({own_retries!r}); every attempt "
                        "would then be retried twice over. Mount it with max_retries=0 and set "
                        "DeepSeekClient(max_retries=...) instead"
                    )
                self.pool_maxsize = getattr(adapter, "_pool_maxsize", pool_maxsize)
                return
        adapter = DeepSeekAdapter(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=NO_RETRIES)
        old = self.session.adapters.get(prefix)
        self.session.mount(prefix, adapter)
        self._own_adapter = adapter
        self._route = None
        self.pool_maxsize = pool_maxsize
        if old is not None and old is not adapter:
            old.close()

    def ensure_pool_size(self, threads: int) -> None:
        """Grow the connection pool to serve ``threads`` concurrent calls without discarding connections."""
        with self._lock:
            if threads > self.pool_maxsize:
                self._mount(threads)

    def reserve_connections(self, threads: int) -> None:
        """Add ``threads`` to the callers sharing this client (a pool's workers), growing the pool.

        Pools that share a client add up: two pools of 40 workers need 80 connections,
        else urllib3 discards the connections it cannot keep. Hand them back with
        :meth:`release_connections`.
        """
        with self._lock:
            self._reserved += threads
            needed = max(self._base_pool_maxsize, self._reserved)
            if needed > self.pool_maxsize:
                self._mount(needed)

    def release_connections(self, threads: int) -> None:
        """Those ``threads`` no longer use the client (the pool stays as large as it grew)."""
        with self._lock:
            self._reserved = max(0, self._reserved - threads)

    def __repr__(self) -> str:
        return (
            f"DeepSeekClient(base_url={self.base_url!r}, model={self.model!r}, api_key=<hidden>, "
            f"timeout={self.timeout!r}, max_retries={self.max_retries}, pool_maxsize={self.pool_maxsize})"
        )

    # -- transport -------------------------------------------------------------------

    def _resolve_route(self, adapter: HTTPAdapter) -> Optional[Route]:
        """Find the pool ``adapter.send`` would use for the base URL (None: always use the adapter)."""
        if GENUINE_SEND is None or adapter is not self._own_adapter:
            return None
        if select_proxy(self.base_url, self._send_kwargs["proxies"]) is not None:
            return None
        request = requests.PreparedRequest()
        request.prepare(method="POST", url=self._chat_url)
        verify, cert = self._send_kwargs["verify"], self._send_kwargs["cert"]
        getter = getattr(adapter, "get_connection_with_tls_context", None)
        if getter is not None:  # requests >= 2.32.2
            pool = getter(request, verify, None, cert)
        else:
            pool = adapter.get_connection(self.base_url, None)
        adapter.cert_verify(pool, self.base_url, verify, cert)  # type: ignore[no-untyped-call]
        parts = urlsplit(self.base_url)
        route = Route(adapter, pool, len(parts.scheme) + 3 + len(parts.netloc))
        self._route = route
        return route

    def _send(
        self, method: str, url: str, body: Optional[bytes], timeout: Timeout, attempt: Attempt
    ) -> requests.Response:
        """One HTTP exchange up to the response head; raises the transport's own exceptions."""
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Length"] = str(len(body))
        remaining = attempt.deadline - time.monotonic()
        connect, read = min(timeout.connect, remaining), min(timeout.read, remaining)
        adapter = self.session.get_adapter(url)
        sending.handle = attempt.handle
        try:
            if type(adapter).send is GENUINE_SEND and adapter is self._own_adapter:
                route = self._route or self._resolve_route(adapter)
                if route is not None and route.adapter is adapter:
                    raw = route.pool.urlopen(
                        method,
                        url[route.cut :],
                        body=body,
                        headers=headers,
                        redirect=False,
                        assert_same_host=False,
                        preload_content=False,
                        decode_content=False,
                        retries=NO_RETRIES,
                        timeout=Urllib3Timeout(connect=connect, read=read),
                        chunked=False,
                    )
                    return wrap_response(raw, url, adapter)
            request = requests.PreparedRequest()
            request.method = method
            request.url = url
            request.headers = headers  # type: ignore[assignment]
            request.body = body
            return adapter.send(request, stream=True, timeout=(connect, read), **self._send_kwargs)
        finally:
            sending.handle = None

    @staticmethod
    def _json(data: Optional[bytes], response: requests.Response, check: Optional[ShapeCheck] = None) -> Any:
        """The body as JSON, checked by ``check``; an empty body is a load failure (retried)."""
        if not data or not data.strip():
            raise IncompleteResponseError("the server sent an empty body", status_code=response.status_code)
        try:
            value = json.loads(data)
        except ValueError as err:
            raise APIResponseValidationError(
                f"the server's answer is not JSON: {data[:200]!r}",
                status_code=response.status_code,
                body=data.decode("utf-8", "replace"),
                request_id=request_id_of(response.headers),
            ) from err
        problem = check(value) if check is not None else None
        if problem is not None:
            raise APIResponseValidationError(
                f"the server's answer is not a completion: {problem}",
                status_code=response.status_code,
                body=value,
                request_id=request_id_of(response.headers),
            )
        return value

    @staticmethod
    def _control(control: Optional[CallControl], on_retry: Optional[RetryListener]) -> Optional[CallControl]:
        if on_retry is None:
            return control
        if control is not None:
            raise TypeError("give on_retry= or control=, not both (a CallControl has its own on_retry)")
        return CallControl(on_retry=on_retry)

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
        **params: Any,
    ) -> ChatCompletion:
        """Send one chat request and return its answer.

        :param messages: a str (one user message) or a list of message dicts.
        :param model: defaults to the client's model.
        :param thinking: ``True``/``False`` switches DeepSeek's thinking mode.
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
        :param params: any other chat field (``max_tokens``, ``temperature``, ``tools`` ...).
        :raises DeepSeekError: see :mod:`deepseek_pool.errors`.
        """
        body = build_chat_body(messages, self.model if model is None else model, params)
        control = self._control(control, on_retry)
        url = self._beta_chat_url if beta else self._chat_url
        if stream:
            body["stream"] = True
            return self._call(  # type: ignore[no-any-return]
                "POST",
                url,
                body,
                timeout=timeout,
                control=control,
                stream=True,
                parse=partial(self._aggregate, on_chunk, restart_streams, control),
            )
        return self._call(  # type: ignore[no-any-return]
            "POST", url, body, timeout=timeout, control=control, parse=self._parse_chat
        )

    def _parse_chat(self, data: Optional[bytes], response: requests.Response, attempt: Attempt) -> ChatCompletion:
        assert data is not None
        raw = self._json(data, response, completion_problem)
        return _answered(ChatCompletion(raw, request_id_of(response.headers)))

    def _aggregate(
        self,
        on_chunk: Optional[ChunkCallback],
        restart: bool,
        control: Optional[CallControl],
        data: Optional[bytes],
        response: requests.Response,
        attempt: Attempt,
    ) -> ChatCompletion:
        # Nobody watches the chunks: the shared reader may read them while this thread sleeps.
        reader = READER if on_chunk is None and self.shared_stream_reader else None
        first_token = control.first_token if control is not None else None
        stream = ChatStream(response, attempt, reader=reader, on_first_token=first_token)
        delivered = False
        try:
            with stream:
                if on_chunk is not None:
                    for chunk in stream:
                        on_chunk(chunk)
                        delivered = True
                completion = _answered(stream.completion())
        except DeepSeekError as err:
            # Once the caller has seen part of this answer, a retry would show it again.
            err._after_chunks = delivered and not restart  # type: ignore[attr-defined]
            raise
        return completion

    def chat_stream(
        self,
        messages: Messages,
        *,
        model: Optional[str] = None,
        timeout: TimeoutLike = None,
        on_retry: Optional[RetryListener] = None,
        control: Optional[CallControl] = None,
        **params: Any,
    ) -> ChatStream:
        """Start a streamed chat answer; use the result as a context manager and iterate it.

        Errors the server answers with (401, 429 after retries ...) raise here; a
        failure in the middle of the stream raises from the iteration. Add
        ``stream_options={"include_usage": True}`` for a final usage chunk.

        ::

            with client.chat_stream("Hi") as stream:
                for chunk in stream:
                    print(chunk.content or "", end="", flush=True)
        """
        body = build_chat_body(messages, self.model if model is None else model, params)
        body["stream"] = True
        return self._call(  # type: ignore[no-any-return]
            "POST",
            self._chat_url,
            body,
            timeout=timeout,
            control=self._control(control, on_retry),
            stream=True,
            parse=lambda data, response, attempt: ChatStream(response, attempt),
        )

    def fim(
        self,
        prompt: str,
        suffix: Optional[str] = None,
        *,
        model: Optional[str] = None,
        timeout: TimeoutLike = None,
        control: Optional[CallControl] = None,
        **params: Any,
    ) -> FIMCompletion:
        """Fill in the middle between ``prompt`` and ``suffix`` (DeepSeek's beta completions)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if suffix is not None and not isinstance(suffix, str):
            raise TypeError(f"suffix must be a str or None, got {type(suffix).__name__}")
        body: Dict[str, Any] = {"model": self.model if model is None else model, "prompt": prompt}
        if suffix is not None:
            body["suffix"] = suffix
        body.update(params)
        return self._call(  # type: ignore[no-any-return]
            "POST",
            self._fim_url,
            body,
            timeout=timeout,
            control=control,
            parse=lambda data, response, attempt: FIMCompletion(self._json(data, response, completion_problem)),
        )

    def models(self, *, timeout: TimeoutLike = None) -> List[str]:
        """The ids of the models this key can use."""
        data = self._call(
            "GET",
            self.base_url + "/models",
            None,
            timeout=timeout,
            control=None,
            parse=lambda data, response, attempt: self._json(data, response, model_list_problem),
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
            parse=lambda data, response, attempt: Balance(self._json(data, response, object_problem)),
        )

    def _after_fork(self) -> None:
        """In a forked child: the pooled connections are the parent's sockets; never reuse them.

        Closing the child's copies leaves the parent's connections open; the pools stay
        usable and connect afresh.
        """
        self._lock = threading.Lock()
        self._route = None
        for adapter in self.session.adapters.values():
            adapter.close()

    def close(self) -> None:
        """Close the connections (and the session, when the client created it)."""
        if self._owns_session:
            self.session.close()
        else:
            adapter = self.session.adapters.get(self.base_url)
            if adapter is not None:
                adapter.close()

    def __enter__(self) -> DeepSeekClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
