"""requests' adapter for DeepSeek: connections that report to the call they carry, and the responses they make.

* :class:`DeepSeekAdapter` -- requests' ``HTTPAdapter`` whose connections, direct or through
  a proxy, report themselves to the abort handle of the call they carry, and leave it when
  the connection pool takes them back;
* :func:`wrap_response` -- a ``requests.Response`` around a urllib3 response, for the direct route;
* :func:`request_id_of` -- the request id a response names.
"""

from __future__ import annotations

import socket
from typing import Any, Mapping, Optional

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.poolmanager import ProxyManager

from .calls import release_connection, sending
from .resolve import is_address, resolve

__all__ = [
    "GENUINE_SEND",
    "DeepSeekAdapter",
    "request_id_of",
    "wrap_response",
]

#: A request body up to this size is sent in one write with the head (copying more costs
#: more than the second system call saves).
_JOIN_BODY_MAX = 65536


#: requests' own HTTPAdapter.send, unless a mock library had already replaced it at import
#: (then the direct route is never taken). While ``responses`` or a similar library has it
#: patched, ``type(adapter).send`` is not this function and calls go through the adapter.
GENUINE_SEND: Any = HTTPAdapter.send if getattr(HTTPAdapter.send, "__module__", None) == "requests.adapters" else None


_REQUEST_ID_HEADERS = ("x-request-id", "x-ds-trace-id", "request-id")


def request_id_of(headers: Mapping[str, str]) -> Optional[str]:
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


class _CallAwareConnectionMixin:
    """Reports the connection to the :class:`~deepseek_pool.wire.calls.CallHandle` of the call it carries.

    It attaches before connecting and before sending (a handle aborted meanwhile stops
    the attempt there, before any byte of the request leaves), and checks again once a
    new connection is open, since an abort cannot break a socket that does not exist yet.
    """

    def connect(self) -> None:
        handle = sending.handle
        if handle is not None:
            handle.attach(self)
        super().connect()  # type: ignore[misc]
        if handle is not None:
            try:
                handle.attach(self)
            except BaseException:
                self.close()  # type: ignore[attr-defined]
                raise

    def _new_conn(self) -> Any:
        """Open the socket; a host name is resolved within the connect timeout (:mod:`.resolve`).

        urllib3 resolves and connects in one call with no bound on the resolving; here the
        name is resolved first, bounded, and each address it gave is then tried as urllib3
        would (an IP address needs no resolver).
        """
        conn: Any = self  # a urllib3 connection: its attributes are urllib3's
        host, timeout = conn._dns_host, conn.timeout
        if sending.handle is None or is_address(host) or not isinstance(timeout, (int, float)):
            return super()._new_conn()  # type: ignore[misc]
        try:
            addresses = resolve(host, conn.port, timeout)
        except TimeoutError as err:
            raise ConnectTimeoutError(conn, f"Resolving {host} timed out. (connect timeout={timeout})") from err
        except socket.gaierror as err:
            raise NameResolutionError(conn.host, conn, err) from err
        failure: Optional[BaseException] = None
        try:
            for address in dict.fromkeys(info[4][0] for info in addresses):
                conn._dns_host = address
                try:
                    return super()._new_conn()  # type: ignore[misc]
                except (NewConnectionError, ConnectTimeoutError) as err:
                    failure = err
        finally:
            conn._dns_host = host
        raise failure or NewConnectionError(conn, f"Failed to establish a new connection: {host} has no address")

    #: a request's head, held back to leave with its body in one write
    _held_head: Optional[bytes] = None
    _hold_head = False

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        """Send the request; a small bytes body leaves with the head in one ``sendall``.

        http.client writes the head and the body separately: two system calls, two GIL
        hand-offs and two packets per call, where one does.
        """
        handle = sending.handle
        if handle is not None:
            handle.attach(self)
        self._hold_head = isinstance(body, bytes) and 0 < len(body) <= _JOIN_BODY_MAX
        try:
            super().request(method, url, body=body, headers=headers, **kwargs)  # type: ignore[misc]
        except BaseException:
            self._held_head = None
            raise
        finally:
            self._hold_head = False
        held = self._held_head
        if held is not None:  # no body write followed after all
            self._held_head = None
            super().send(held)  # type: ignore[misc]

    def send(self, data: Any) -> None:
        if self._hold_head:
            self._hold_head = False
            self._held_head = data  # the head: it waits for the body
            return
        held = self._held_head
        if held is not None:
            self._held_head = None
            data = held + data
        super().send(data)  # type: ignore[misc]


class _HTTPConnection(_CallAwareConnectionMixin, HTTPConnection):
    pass


class _HTTPSConnection(_CallAwareConnectionMixin, HTTPSConnection):
    pass


class _ConnectionClass:
    """A pool's ``ConnectionCls``: ours, unless a tool (vcrpy) replaced urllib3's own; then the tool's.

    Looked up at each new connection, so a tool installed after the pool was made applies too.
    """

    def __init__(self, pool_class: Any, genuine: Any, ours: Any) -> None:
        self._pool_class, self._genuine, self._ours = pool_class, genuine, ours

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        installed = self._pool_class.__dict__.get("ConnectionCls", self._genuine)
        return self._ours if installed is self._genuine else installed


class _HTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _ConnectionClass(HTTPConnectionPool, HTTPConnection, _HTTPConnection)

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            release_connection(conn)  # back in the pool: no handle may touch it now
        super()._put_conn(conn)


class _HTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _ConnectionClass(HTTPSConnectionPool, HTTPSConnection, _HTTPSConnection)

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            release_connection(conn)
        super()._put_conn(conn)


_POOL_CLASSES = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}


class DeepSeekAdapter(HTTPAdapter):
    """requests' ``HTTPAdapter`` whose connections can be aborted through a call's handle.

    Its pools, direct and through a proxy (forward or CONNECT tunnel), hand out
    connections that report to the handle of the call they carry, so the watchdog can
    break a stalled head or body on every route. It does not override ``send``, so
    ``responses`` and other adapter-level mocks still apply; a connection class that a
    tool installed in urllib3 (vcrpy's) is used as installed. Mount one sized to your
    threads on a session you give the client::

        session.mount("https://api.deepseek.com", dp.DeepSeekAdapter(pool_maxsize=64))
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):  # not SOCKS, whose pools are its own
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager


def wrap_response(raw: Any, url: str, adapter: HTTPAdapter) -> requests.Response:
    """A ``requests.Response`` around a urllib3 response, as ``build_response`` makes it, minus cookies."""
    response = requests.Response()
    response.status_code = raw.status
    headers: CaseInsensitiveDict[str] = CaseInsensitiveDict(raw.headers)
    response.headers = headers
    response.encoding = get_encoding_from_headers(headers)
    response.raw = raw
    response.reason = raw.reason
    response.url = url
    response.connection = adapter
    return response
