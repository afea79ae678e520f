"""How a client's request reaches the wire: through its ``requests.Session``, as requests sends it.

Every request is what requests itself would send for the same session::

    prepared = session.prepare_request(Request(method, url, headers=..., data=body, auth=key))
    settings = session.merge_environment_settings(prepared.url, {}, True, None, None)
    session.send(prepared, allow_redirects=False, timeout=(connect, read), **settings)

so the session's headers (as they are at send time), auth, params, cookies and hooks, its
proxies and the environment's, ``trust_env``, ``verify``, ``cert``, the adapter mounted for
the URL, and every tool that patches any of these (``responses``, requests-mock, vcrpy,
betamax) apply. The API key travels as the request's ``auth``, applied before the
session's own ``auth`` (which so has the last word), and it keeps ``~/.netrc`` from
replacing the key, as requests would for a key sent as a plain header.

:class:`DirectRoute` skips requests' layers (CPU on every call) only where
skipping them changes nothing: :meth:`SessionRoute.direct` checks, on every call, each
thing those layers would have done with the request, and takes the direct route only when
all of them would have been a no-op (see its docstring); the route it made is kept while
what it was made from (headers, adapters, ``verify``, ``cert``, CA bundle) is unchanged.
A differential test compares the two routes' bytes on the wire (``tests/test_session_route.py``).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth
from requests.cookies import RequestsCookieJar, extract_cookies_to_jar
from urllib3.util.timeout import Timeout as Urllib3Timeout

from ..errors import ConfigurationError
from ..messages import header_problem
from .adapter import GENUINE_SEND, DeepSeekAdapter, wrap_response
from .attempts import NO_RETRIES
from .calls import CallHandle, sending

__all__ = ["DirectRoute", "KeyAuth", "SessionRoute", "client_headers"]

log = logging.getLogger(__name__)

_SESSION = requests.Session
#: requests' own methods: a session whose class or instance replaced one (requests-mock
#: replaces ``send`` and ``get_adapter``) never takes the direct route.
_GENUINE_ITEMS = tuple(
    (name, getattr(_SESSION, name)) for name in ("send", "prepare_request", "get_adapter", "merge_environment_settings")
)
#: What ``merge_environment_settings`` reads of the environment when ``trust_env`` is on, as
#: bytes keys of ``os.environ``'s own dict (looked up in tens of nanoseconds): a proxy
#: variable sends the call through requests; the CA-bundle ones are part of the route.
_ENV_KEY = os.fsencode if os.name == "posix" else str.upper  # how os.environ keys its own dict
_PROXY_KEYS = tuple(
    _ENV_KEY(name) for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
)
_CA_KEYS = tuple(_ENV_KEY(name) for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"))


def client_headers(
    user_agent: str,
    api_key: str,
    headers: Optional[Mapping[str, str]],
    rate_limit_group: Optional[str],
    *,
    compress: bool,
) -> Tuple[Dict[str, str], str]:
    """A client's own headers and its ``Authorization`` value, each checked to be sendable.

    The session's headers are merged in at each call, as requests does; ``compress`` (the
    client's own session) asks for gzip. A user's ``Authorization`` header replaces the key's.
    """
    own: Dict[str, str] = {"Accept-Encoding": "gzip, deflate"} if compress else {}
    own.update({"User-Agent": user_agent, "Accept": "application/json", "Content-Type": "application/json"})
    if rate_limit_group:
        own["X-RateLimit-Group"] = rate_limit_group
    authorization = f"Bearer {api_key}"
    for name, value in (headers or {}).items():
        if name.lower() == "authorization":
            authorization = value
        else:
            own[name] = value
    for name, value in own.items():
        problem = header_problem(value) if isinstance(value, str) else "is not a str"
        if problem is not None:
            raise ConfigurationError(f"header {name!r} cannot be sent: its value {problem}")
    return own, authorization


#: What a direct route was made from: the session's header store (copied), ``verify``,
#: ``cert``, the environment's CA bundle, and the adapters mounted (prefix, adapter) in order.
_Seen = Tuple[Dict[str, Any], Any, Any, Any, List[Tuple[str, Any]]]


class KeyAuth(AuthBase):
    """Sends the API key as ``Authorization: Bearer ...``, then applies the session's own ``auth``.

    Given as the request's ``auth``, so requests does not look up ``~/.netrc`` (whose entry
    would replace the key), and so the session's ``auth`` (a gateway's, say) still runs,
    after the key: it has the last word, as an ``auth`` always has over a header.
    """

    def __init__(self, value: str, session: requests.Session) -> None:
        self._value = value
        self._session = session

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._value
        extra = self._session.auth
        if extra is not None:
            if isinstance(extra, tuple):
                extra = HTTPBasicAuth(*extra)
            request = extra(request)
        return request

    def __repr__(self) -> str:
        return "KeyAuth(<hidden>)"


class DirectRoute:
    """The urllib3 pool requests' adapter picks for one URL prefix, and the headers a plain session adds.

    :ivar headers: what ``prepare_request`` makes of the client's headers on this session,
        without ``Content-Length`` (added per call).
    :ivar seen: what of the session these were made from, taken before they were made:
        its headers (a copy of their store), ``verify``, ``cert``, the environment's CA
        bundle and the adapters mounted (see :meth:`SessionRoute.direct`).
    """

    __slots__ = ("adapter", "cut", "headers", "pool", "seen")

    def __init__(self, adapter: HTTPAdapter, pool: Any, cut: int, headers: Dict[str, str], seen: _Seen) -> None:
        self.adapter = adapter
        self.pool = pool
        #: characters of the URL's scheme://host[:port] that the pool's path omits
        self.cut = cut
        self.headers = headers
        self.seen = seen


class SessionRoute:
    """Sends a client's requests through its session: requests' way, or the direct route where that is the same.

    :param session: the session (the client's own, or the user's).
    :param headers: the client's own headers, but ``Authorization``;
    :param authorization: the value of that header (the key), sent by :class:`KeyAuth` as
        the request's ``auth``.
    """

    def __init__(self, session: requests.Session, headers: Mapping[str, str], authorization: str) -> None:
        self.session = session
        self.headers = dict(headers)
        self.auth = KeyAuth(authorization, session)
        self._direct: Dict[str, DirectRoute] = {}  # by the URL's scheme://host[:port]
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Drop the direct routes (the adapter changed, or the process forked)."""
        self._direct = {}

    # -- the request -------------------------------------------------------------------

    def send(
        self, method: str, url: str, body: Optional[bytes], connect: float, read: float, handle: CallHandle
    ) -> requests.Response:
        """One exchange up to the response head; raises requests'/urllib3's own exceptions."""
        sending.handle = handle  # our adapter's connections report to the call's handle
        try:
            route = self.direct(url)
            if route is not None:
                headers = dict(route.headers)
                if body is not None:
                    headers["Content-Length"] = str(len(body))
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
                if "set-cookie" in raw.headers:  # Session.send would keep them in the jar
                    self._keep_cookies(method, url, body, raw)
                return wrap_response(raw, url, route.adapter)
            session = self.session
            prepared = session.prepare_request(
                requests.Request(method, url, headers=self.headers, data=body, auth=self.auth)
            )
            settings = session.merge_environment_settings(prepared.url, {}, True, None, None)
            return session.send(prepared, allow_redirects=False, timeout=(connect, read), **settings)
        finally:
            sending.handle = None

    def _keep_cookies(self, method: str, url: str, body: Optional[bytes], raw: Any) -> None:
        prepared = self.session.prepare_request(
            requests.Request(method, url, headers=self.headers, data=body, auth=self.auth)
        )
        extract_cookies_to_jar(self.session.cookies, prepared, raw)  # type: ignore[no-untyped-call]

    # -- when requests' layers may be skipped ------------------------------------------

    def direct(self, url: str) -> Optional[DirectRoute]:
        """The direct route for ``url``, when requests' layers would add nothing to this request.

        They add nothing when: ``send``, ``prepare_request``, ``get_adapter`` and
        ``merge_environment_settings`` are requests' own; the session has no ``auth``,
        ``params``, cookies, hooks or ``proxies``; with ``trust_env``, the environment
        names no proxy; and the adapter for the URL is a :class:`DeepSeekAdapter` whose
        ``send`` is requests' own. Then the route made for the URL's prefix is used as long
        as what it was made from is unchanged: the adapters mounted (the same prefixes and
        the same objects, so ``get_adapter`` would pick the same one), the session's
        headers, ``verify``, ``cert`` and, with ``trust_env``, the environment's CA bundle.
        Every one of these is looked at on every call (about 1 µs in all): a session can be
        changed in place between any two calls, and the call after the change honours it.
        """
        session = self.session
        for name, genuine in _GENUINE_ITEMS:
            if getattr(getattr(session, name), "__func__", None) is not genuine:
                return None
        if session.auth is not None or session.params or session.proxies or any(session.hooks.values()):
            return None
        jar = session.cookies
        if type(jar) is not RequestsCookieJar or (jar._cookies and len(jar)):  # type: ignore[attr-defined]
            return None  # (``_cookies`` holds a domain's emptied dicts after a ``clear``: then count)
        bundle: Any = None
        if session.trust_env:
            environ = getattr(os.environ, "_data", None)
            if environ is None:
                return None
            for key in _PROXY_KEYS:
                if key in environ:
                    return None
            bundle = (environ.get(_CA_KEYS[0]), environ.get(_CA_KEYS[1]))
        headers = getattr(session.headers, "_store", None)
        if headers is None:
            return None
        cut = url.find("/", url.find("://") + 3)
        prefix = url if cut < 0 else url[:cut]
        route = self._direct.get(prefix)
        if route is not None:
            seen = route.seen
            adapter = route.adapter
            if (
                seen[0] == headers
                and seen[1] is session.verify
                and seen[2] is session.cert
                and seen[3] == bundle
                and list(session.adapters.items()) == seen[4]
                and type(adapter).send is GENUINE_SEND  # a mock patched HTTPAdapter.send meanwhile
                and "send" not in adapter.__dict__
            ):
                return route
        # taken before the route is made from them: a change meanwhile makes the next call look again
        seen = (dict(headers), session.verify, session.cert, bundle, list(session.adapters.items()))
        mounted = session.get_adapter(url)
        if (
            type(mounted) is not DeepSeekAdapter
            or GENUINE_SEND is None
            or type(mounted).send is not GENUINE_SEND
            or "send" in mounted.__dict__
        ):
            return None
        return self._resolve(mounted, url, prefix, seen)

    def _resolve(self, adapter: DeepSeekAdapter, url: str, prefix: str, seen: _Seen) -> Optional[DirectRoute]:
        """Find the pool ``adapter.send`` would use for ``url``, and the headers ``prepare_request`` makes."""
        session = self.session
        prepared = session.prepare_request(
            requests.Request("POST", url, headers=self.headers, data=b"{}", auth=self.auth)
        )
        if prepared.url != url:  # requests would re-quote it: let it
            return None
        settings = session.merge_environment_settings(url, {}, True, None, None)
        if settings["proxies"]:
            return None
        verify, cert = settings["verify"], settings["cert"]
        getter = getattr(adapter, "get_connection_with_tls_context", None)  # requests >= 2.32.2
        pool = getter(prepared, verify, None, cert) if getter is not None else adapter.get_connection(url, None)
        adapter.cert_verify(pool, url, verify, cert)  # type: ignore[no-untyped-call]
        headers = {name: value for name, value in prepared.headers.items() if name.lower() != "content-length"}
        route = DirectRoute(adapter, pool, len(prefix), headers, seen)
        with self._lock:
            routes = dict(self._direct)
            routes[prefix] = route
            self._direct = routes
        return route
