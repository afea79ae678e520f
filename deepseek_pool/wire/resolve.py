"""Name resolution within the connect timeout.

``getaddrinfo`` cannot be interrupted, and urllib3 calls it with no bound: a resolver that
takes 4 s holds a call with ``call_timeout=1`` for 4 s. :func:`resolve` runs it on a
short-lived daemon thread and stops waiting when the connect timeout (already capped at
the time left to the call's deadline) runs out; the lookup may finish later, unobserved.
It runs only when a new connection to a host *name* is opened, never for an IP address.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any, List, Optional, Tuple

from urllib3.util.connection import allowed_gai_family

__all__ = ["is_address", "resolve"]

AddrInfo = Tuple[Any, ...]


def is_address(host: str) -> bool:
    """Whether ``host`` is an IP address (nothing to resolve)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def resolve(host: str, port: int, timeout: Optional[float]) -> List[AddrInfo]:
    """``getaddrinfo(host, port)`` for a TCP connection, given up after ``timeout`` seconds.

    :raises TimeoutError: the resolver did not answer in time.
    :raises socket.gaierror: it answered that the name does not resolve.
    """
    family = allowed_gai_family()
    if timeout is None:
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    outcome: List[Any] = []
    done = threading.Event()

    def look_up() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
        except BaseException as err:
            outcome.append(err)
        finally:
            done.set()

    threading.Thread(target=look_up, name="deepseek-resolver", daemon=True).start()
    if not done.wait(max(timeout, 0.0)):
        raise TimeoutError(f"resolving {host} took more than {timeout:g} s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result  # type: ignore[no-any-return]
