"""The fake's sockets: accept on one thread, serve each connection on its own, answer a
request that cannot be read, and reset a connection when a fault asks for it.

:class:`ConnectionServer` is the base class of
:class:`~deepseek_pool.testing._server.FakeDeepSeek`, which binds, stops and answers the
requests (:meth:`ConnectionServer._handle`).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from typing import Dict, Optional, Tuple

from deepseek_pool.testing._exchange import CLOSE, KEEP, RESET
from deepseek_pool.testing._fields import error_body
from deepseek_pool.testing._http import LINGER_RST, STATUS_LINES, BadRequest, http_date, read_request

__all__ = ["ConnectionServer"]

logger = logging.getLogger(__name__)


class ConnectionServer:
    """Accepts connections and reads their requests; a subclass answers them."""

    # Set by the subclass (see FakeDeepSeek.__init__).
    _lock: threading.Lock
    _stopping: threading.Event
    _listener: Optional[socket.socket]
    _wake: Optional[Tuple[socket.socket, socket.socket]]
    _conns: Dict[socket.socket, threading.Thread]
    _connections: int

    def _handle(
        self, sock: socket.socket, method: str, target: str, version: str, headers: Dict[str, str], raw: bytes
    ) -> int:
        """Answer one request; return what the connection does next (KEEP, CLOSE or RESET)."""
        raise NotImplementedError

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake is not None
        listener, wake = self._listener, self._wake[0]
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is wake:
                        return
                    self._accept_ready(listener)

    def _accept_ready(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: keep serving the connections we have
                logger.warning("FakeDeepSeek accept failed: %s", exc)
                return
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            handler = threading.Thread(target=self._serve_connection, args=(conn,), daemon=True)
            with self._lock:
                if self._stopping.is_set():
                    conn.close()
                    return
                self._connections += 1
                self._conns[conn] = handler
            handler.start()

    def _serve_connection(self, sock: socket.socket) -> None:
        rfile = sock.makefile("rb")
        outcome = CLOSE
        try:
            while not self._stopping.is_set():
                try:
                    request = read_request(rfile, sock)
                except BadRequest as exc:
                    body = error_body(str(exc))
                    sock.sendall(
                        f"{STATUS_LINES[exc.status]}Date: {http_date()}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
                        + body
                    )
                    break
                if request is None:
                    break
                outcome = self._handle(sock, *request)
                if outcome != KEEP:
                    break
        except (OSError, ValueError):
            pass  # the client went away or stop() shut the socket: nothing left to answer
        finally:
            with self._lock:
                self._conns.pop(sock, None)
            if outcome == RESET:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            rfile.close()
            sock.close()
