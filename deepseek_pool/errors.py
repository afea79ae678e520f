"""The exceptions deepseek_pool raises: one tree, branch on the class.

::

    DeepSeekError
     ├── ConfigurationError              bad settings (no API key, bad base URL, bad option)
     ├── RetryBudgetExceeded             the pool's retry budget is spent: fail fast
     ├── SpendCapReached                 the pool's spend cap (max_cost) would pass: not sent
     ├── StorageUnavailable              the limiter's shared storage cannot be used (not sent)
     ├── APIConnectionError              no usable HTTP response (refused, reset, cut stream)
     │    ├── APITimeoutError            connect/read timeout or the total deadline passed
     │    ├── TLSError                   certificate not trusted, or the server refused the
     │    │                                    client certificate; never retried
     │    └── ProxyAuthenticationError   the proxy wants other credentials (407); never retried
     └── APIStatusError                  the server answered with an error (.status_code, .body)
          ├── BadRequestError            400  invalid request; fix it, never retried
          ├── AuthenticationError        401  wrong API key
          ├── InsufficientBalanceError   402  top up the account
          ├── UnprocessableEntityError   422  invalid parameters
          ├── RateLimitError             429  retried with backoff; slows the whole pool
          ├── InternalServerError        500 (and other 5xx); retried
          ├── ServiceUnavailableError    503  overloaded; retried
          ├── IncompleteResponseError    200 that is no answer (empty body,
          │                                    insufficient_system_resource); retried
          └── APIResponseValidationError 200 whose body is not the expected shape
                                               (not JSON, not a completion); not retried

Every exception pickles (they cross thread and process boundaries) and never
contains the API key.
"""

from __future__ import annotations

import pickle
from typing import Any, Dict, Optional, Type

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "DeepSeekError",
    "IncompleteResponseError",
    "InsufficientBalanceError",
    "InternalServerError",
    "ProxyAuthenticationError",
    "RateLimitError",
    "RetryBudgetExceeded",
    "ServiceUnavailableError",
    "SpendCapReached",
    "StorageUnavailable",
    "TLSError",
    "UnprocessableEntityError",
    "status_error",
    "without_secret",
]


class DeepSeekError(Exception):
    """Base class of every error raised by deepseek_pool."""


class ConfigurationError(DeepSeekError, ValueError):
    """A setting is missing or invalid (raised before any request is sent)."""


class RetryBudgetExceeded(DeepSeekError):
    """The shared retry budget is spent: the API keeps failing, so calls fail fast."""


class SpendCapReached(DeepSeekError):
    """Not sent: the money spent plus what running calls reserved would pass ``max_cost``."""


class StorageUnavailable(DeepSeekError):
    """The limiter's shared storage cannot be used, so the call was not sent: a Redis server
    that cannot be reached (with ``on_storage_error="fail"``), or an sqlite database locked
    past its ``busy_timeout``."""


class APIConnectionError(DeepSeekError):
    """No usable HTTP response: connection refused or reset, or a stream cut short."""


class APITimeoutError(APIConnectionError):
    """A connect or read timeout, or the per-attempt / per-call deadline, expired."""


class TLSError(APIConnectionError):
    """The TLS handshake failed for a reason a retry cannot fix: the server's certificate is
    not trusted (``verify``, ``REQUESTS_CA_BUNDLE``), or the server refused the client's
    certificate (``cert``). Never retried."""


class ProxyAuthenticationError(APIConnectionError):
    """The proxy answered 407: it wants credentials other than those given (or none were).
    Never retried; the message never quotes the credentials."""


class APIStatusError(DeepSeekError):
    """The API answered with an error status.

    :ivar status_code: the HTTP status.
    :ivar body: the parsed JSON error body (or the raw text when it was not JSON).
    :ivar request_id: the server's request id, worth quoting to DeepSeek support.
    """

    #: What the user should do about it; appended to the message.
    advice = ""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        request_id: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body
        self.request_id = request_id

    def __reduce__(self) -> Any:
        # Keyword-only arguments need help to survive pickling.
        return (_rebuild_status_error, (type(self), self.message, self.status_code, self.body, self.request_id))

    def __str__(self) -> str:
        text = f"{self.status_code}: {self.message}"
        if self.advice:
            text += f" ({self.advice})"
        if self.request_id:
            text += f" [request id {self.request_id}]"
        return text


def _rebuild_status_error(
    cls: Type[APIStatusError], message: str, status_code: int, body: Any, request_id: Optional[str]
) -> APIStatusError:
    return cls(message, status_code=status_code, body=body, request_id=request_id)


class BadRequestError(APIStatusError):
    """400: the request is malformed (bad body, context too long, unknown model)."""

    advice = "fix the request; it is not retried"


class AuthenticationError(APIStatusError):
    """401: the API key is wrong."""

    advice = "check the API key (DEEPSEEK_API_KEY)"


class InsufficientBalanceError(APIStatusError):
    """402: the account has no balance left."""

    advice = "top up the DeepSeek account balance; client.balance() shows it"


class UnprocessableEntityError(APIStatusError):
    """422: a parameter has an invalid value."""

    advice = "fix the parameter values; it is not retried"


class RateLimitError(APIStatusError):
    """429: rate limit or the account's concurrency cap was reached."""

    advice = "retries were exhausted; lower max_in_flight or rpm"


class InternalServerError(APIStatusError):
    """500 or another 5xx: a server-side failure."""


class ServiceUnavailableError(APIStatusError):
    """503: the service is overloaded."""


class IncompleteResponseError(APIStatusError):
    """A 200 that carries no answer: empty body or ``insufficient_system_resource``."""


class APIResponseValidationError(APIStatusError):
    """A 200 whose body is not what the endpoint returns (not JSON, not a completion).

    ``body`` keeps what the server sent, parsed when it was JSON. Not retried: a server
    that answers in the wrong shape will answer the same way again.
    """

    advice = "the server at base_url does not speak this API; check base_url"


_STATUS_CLASSES: Dict[int, Type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientBalanceError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    500: InternalServerError,
    503: ServiceUnavailableError,
}


def status_error(
    status_code: int, message: str, *, body: Any = None, request_id: Optional[str] = None
) -> APIStatusError:
    """Build the exception that matches ``status_code`` (nearest base for unlisted codes)."""
    cls = _STATUS_CLASSES.get(status_code)
    if cls is None:
        cls = InternalServerError if status_code >= 500 else APIStatusError
    return cls(message, status_code=status_code, body=body, request_id=request_id)


#: What stands in for a secret that an error message would otherwise quote.
SECRET_MASK = "<api key>"


def _carries(err: BaseException, secret: str) -> bool:
    """Whether ``err``'s text, args or pickle contains ``secret``."""
    try:
        if secret in str(err) or secret in repr(err.args) or secret in repr(vars(err)):
            return True
        return secret.encode() in pickle.dumps(err)
    except Exception:  # an exception that cannot be shown or pickled is judged by its text
        return secret in repr(err)


def without_secret(err: DeepSeekError, secret: str) -> DeepSeekError:
    """``err`` itself when nothing in it or its chain carries ``secret``, else a clean copy.

    The copy has the same class and message with the secret masked, and no cause or
    context: a foreign exception deep in the chain (an encoder quoting a header, a
    requests error holding the request) cannot be trusted not to carry it.
    """
    seen = set()
    link: Optional[BaseException] = err
    leak = False
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if _carries(link, secret):
            leak = True
            break
        link = link.__cause__ or link.__context__
    if not leak:
        return err
    message = str(err.message if isinstance(err, APIStatusError) else (err.args[0] if err.args else err))
    message = message.replace(secret, SECRET_MASK)
    clean: DeepSeekError
    if isinstance(err, APIStatusError):
        body = err.body if not _carries(Exception(err.body), secret) else None
        clean = type(err)(message, status_code=err.status_code, body=body, request_id=err.request_id)
    else:
        try:
            clean = type(err)(message)
        except Exception:
            clean = DeepSeekError(message)
    clean.__suppress_context__ = True
    return clean
