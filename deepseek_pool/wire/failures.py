"""The one place requests' and urllib3's exceptions become ours, and the failures a retry cannot fix."""

from __future__ import annotations

import re
import ssl
from http.client import HTTPException
from typing import Iterator, Optional

import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from ..errors import (
    APIConnectionError,
    APITimeoutError,
    ConfigurationError,
    DeepSeekError,
    ProxyAuthenticationError,
    TLSError,
)

__all__ = [
    "PROXY_AUTHENTICATION",
    "final_failure",
    "translate_error",
    "urllib3_cause",
]


def urllib3_cause(err: BaseException) -> BaseException:
    """The urllib3 (or socket) error under a requests wrapper or a ``MaxRetryError``."""
    if isinstance(err, requests.RequestException) and err.args and isinstance(err.args[0], BaseException):
        err = err.args[0]
    if isinstance(err, MaxRetryError) and err.reason is not None:
        err = err.reason
    return err


#: ``scheme://user:password@`` in a message: a proxy's credentials, never repeated.
_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")


#: What a proxy's 407 means, whether it came on a CONNECT or as a forward proxy's answer.
PROXY_AUTHENTICATION = (
    "the proxy wants authentication (407 Proxy Authentication Required): check the user and password "
    "in the proxy URL (HTTPS_PROXY, session.proxies)"
)


#: A CONNECT the proxy refused for its credentials: 407 as the standard says, 401 as tinyproxy says.
_REFUSED_TUNNEL = re.compile(r"Tunnel connection failed: 40[17]\b")
#: OpenSSL's names for a server's refusal of the client's certificate (TLS 1.2 and 1.3 alerts).
_REFUSED_CLIENT_CERT = (
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_UNKNOWN_CA",
    "ALERT_ACCESS_DENIED",
)


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err``, what it wraps (requests' and urllib3's ``args[0]`` and ``reason``), and its causes."""
    seen = 0
    pending = [err]
    while pending and seen < 12:
        current = pending.pop()
        seen += 1
        yield current
        for inner in (getattr(current, "reason", None), current.__cause__, current.__context__, *current.args[:2]):
            if isinstance(inner, BaseException):
                pending.append(inner)


def final_failure(err: BaseException) -> Optional[DeepSeekError]:
    """The error a retry cannot fix under ``err``, if it is one: a TLS failure, or a proxy's 407."""
    for inner in _chain(err):
        if isinstance(inner, ssl.SSLCertVerificationError):
            why = getattr(inner, "verify_message", None) or inner
            return TLSError(f"the server's certificate is not trusted ({why}); check verify= or REQUESTS_CA_BUNDLE")
        reason = getattr(inner, "reason", None)
        if isinstance(inner, ssl.SSLError) and isinstance(reason, str) and reason.endswith(_REFUSED_CLIENT_CERT):
            return TLSError(f"the server refused the client certificate ({reason}); check cert=")
        if isinstance(inner, OSError) and _REFUSED_TUNNEL.match(str(inner)):  # http.client's words
            return ProxyAuthenticationError(PROXY_AUTHENTICATION)
    return None


def translate_error(err: BaseException) -> DeepSeekError:
    """Turn a requests/urllib3 exception into ours (the only place that does).

    A proxy's credentials in the exception's text are masked.
    """
    if isinstance(err, DeepSeekError):
        return err
    cause = urllib3_cause(err)
    if isinstance(cause, DeepSeekError):
        return cause
    final = final_failure(err)
    if final is not None:
        return final
    translated = _translated(err, cause)
    message = str(translated)
    masked = _CREDENTIALS.sub(r"\1***@", message)
    return type(translated)(masked) if masked != message else translated


def _translated(err: BaseException, cause: BaseException) -> DeepSeekError:
    if isinstance(err, requests.Timeout) or isinstance(cause, ReadTimeoutError):
        return APITimeoutError(f"request timed out: {err}")
    if isinstance(cause, ConnectTimeoutError) and not isinstance(cause, NewConnectionError):
        return APITimeoutError(f"connecting timed out: {err}")  # what requests calls ConnectTimeout
    if isinstance(err, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)):
        return ConfigurationError(f"invalid URL: {err}")
    if isinstance(err, (requests.ConnectionError, Urllib3HTTPError, OSError, HTTPException)):
        return APIConnectionError(f"connection failed: {err}")
    return APIConnectionError(f"request failed: {type(err).__name__}: {err}")
