"""The retry loop: one owner for every attempt of a call.

urllib3 makes no retries of its own (it is told :data:`NO_RETRIES`). This loop sends
each attempt through the client's transport, gives each its own total deadline (head
and body, watched by the watchdog), passes every response and every failure through
one place, and asks the retry policy -- a :class:`~deepseek_pool.DeepSeekRetry`, urllib3's
``Retry`` used as a value: its ``increment``, history and backoff decide -- whether and
when to try again. The caller's :class:`~deepseek_pool.CallControl` hears of every
attempt, response, retry and wait. So attempts are counted once, the call's deadline
bounds every wait, and no exception that could carry the API key leaves.

Every line the loop logs names its call (``call 1f: ...``, an id unique in the process):
at DEBUG each attempt, its status and time to the head, and DeepSeek's request id; at
INFO each retry and its wait; at DEBUG how the call ended when it failed.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from typing import Any, Callable, Mapping, Optional, Protocol
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ConnectTimeoutError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from ..config import Timeout, TimeoutLike
from ..errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    DeepSeekError,
    IncompleteResponseError,
    ProxyAuthenticationError,
    RetryBudgetExceeded,
    status_error,
    without_secret,
)
from ..messages import encode_body
from ..telemetry import CallTrace, Telemetry
from ..types import Usage
from .adapter import request_id_of
from .body import raw_pieces
from .calls import Attempt, CallControl, RetryEvent
from .failures import PROXY_AUTHENTICATION, final_failure, urllib3_cause
from .retry import DeepSeekRetry

__all__ = ["NO_RETRIES", "AttemptLoop", "Parse"]

log = logging.getLogger(__name__)

#: Call ids for log lines: ``next`` on a count is atomic under the GIL, and cheap.
_CALL_IDS = itertools.count(1)

#: Reads a response into the call's result: ``parse(body or None when streaming, response, attempt)``.
Parse = Callable[[Optional[bytes], requests.Response, Attempt], Any]


class _Settings(Protocol):
    """What the loop reads of its client, at every call (so later changes apply)."""

    retry: DeepSeekRetry
    timeout: Timeout
    call_timeout: Optional[float]
    telemetry: Optional[Telemetry]
    _api_key: str

    def _send(
        self, method: str, url: str, body: Optional[bytes], timeout: Timeout, attempt: Attempt
    ) -> requests.Response: ...


#: What urllib3 is told on every request: make no retries of your own, the client's loop does.
NO_RETRIES = Retry(total=False, redirect=False)


class _Retryable(Exception):
    """An attempt failed in a way the retry policy may retry.

    :ivar error: what the caller gets if it is not retried.
    :ivar cause: the urllib3 error the policy classifies (None: judge by ``response``).
    :ivar response: the urllib3 response, when there was one.
    """

    def __init__(self, error: DeepSeekError, cause: Optional[Exception], response: Any = None) -> None:
        super().__init__(error)
        self.error = error
        self.cause = cause
        self.response = response


def _chained(error: DeepSeekError, cause: BaseException) -> DeepSeekError:
    if error is not cause:
        error.__cause__ = cause
    return error


def _body_cause(err: DeepSeekError) -> Optional[Exception]:
    """How urllib3's policy should count a failure seen in the body (None: as a status)."""
    if isinstance(err, APITimeoutError):
        return ReadTimeoutError(None, "", str(err))  # type: ignore[arg-type]
    if isinstance(err, APIConnectionError):
        return ProtocolError(str(err))
    return None


def _kind_of(cause: Optional[BaseException]) -> str:
    if cause is None:
        return "status"
    if isinstance(cause, ReadTimeoutError):
        return "timeout"
    return "connect" if isinstance(cause, ConnectTimeoutError) else "read"


def _usage_of(answer: Any) -> Optional[Usage]:
    usage = getattr(answer, "usage", None)
    return usage if isinstance(usage, Usage) else None


def _billed(control: CallControl, err: DeepSeekError) -> None:
    """Tell the control of a 200 read whole that is no answer (billed all the same), if it was one."""
    body = getattr(err, "body", None)
    if isinstance(err, IncompleteResponseError) and isinstance(body, dict):
        usage = body.get("usage")
        control.attempt_billed(Usage.from_dict(usage) if isinstance(usage, dict) else None)


def _has_retry_after(raw: Any) -> bool:
    headers = raw.headers
    return bool(headers.get("Retry-After") or headers.get("retry-after-ms"))


def _add_note(err: DeepSeekError, note: str) -> None:
    if isinstance(err, APIStatusError):
        err.message = f"{err.message} ({note})"
    elif err.args:
        err.args = (f"{err.args[0]} ({note})", *err.args[1:])


class AttemptLoop:
    """Runs the calls of one client: :meth:`run` is a whole call, every attempt and wait."""

    def __init__(self, owner: _Settings) -> None:
        self._owner = owner

    def run(
        self,
        method: str,
        url: str,
        payload: Optional[Mapping[str, Any]],
        *,
        timeout: TimeoutLike,
        control: Optional[CallControl],
        parse: Parse,
        stream: bool = False,
    ) -> Any:
        """Make the call: every attempt, every wait, under the call's deadline.

        This loop owns every attempt (urllib3 makes none of its own) and asks the retry
        policy, a :class:`DeepSeekRetry` value, whether and when to retry each failure,
        whether a status, a broken connection, or a body that shows the answer is not one.
        No exception that could carry the API key leaves it.
        """
        call_id = f"{next(_CALL_IDS):x}"
        telemetry = self._owner.telemetry
        trace = None
        if telemetry is not None and payload is not None:  # a generation: models() and balance() are not
            trace = telemetry.start(url, payload, stream, None if control is None else control.started)
        try:
            result = self._attempts(call_id, method, url, payload, timeout, control, parse, stream, trace)
        except DeepSeekError as err:
            clean = without_secret(err, self._owner._api_key)
            log.debug("call %s: failed: %s: %s", call_id, type(clean).__name__, clean)
            if trace is not None:
                trace.fail(clean)
            if clean is err:
                raise
        except BaseException as err:
            if trace is not None:
                trace.fail(err)
            raise
        else:
            if trace is not None:
                trace.done(result)  # a stream handed to the caller ends its span when it ends
            return result
        raise clean  # outside the except block, so the original is not its context

    def _attempts(
        self,
        call_id: str,
        method: str,
        url: str,
        payload: Optional[Mapping[str, Any]],
        timeout: TimeoutLike,
        control: Optional[CallControl],
        parse: Parse,
        stream: bool,
        trace: Optional[CallTrace],
    ) -> Any:
        attempt_timeout = Timeout.coerce(timeout) if timeout is not None else self._owner.timeout
        body = encode_body(payload) if payload is not None else None
        if control is None:
            control = CallControl()
        call_deadline = control.deadline
        if call_deadline is None:
            call_deadline = time.monotonic() + self._owner.call_timeout if self._owner.call_timeout else math.inf
        retry = self._owner.retry
        number = 0
        while True:
            number += 1
            control.check()
            now = time.monotonic()
            if now >= call_deadline:
                raise APITimeoutError(f"the call's deadline passed before attempt {number} (call_timeout)")
            total = attempt_timeout.total
            attempt = Attempt(min(call_deadline, now + total) if total else call_deadline, control.handle, trace)
            control.attempt_started(number)
            if log.isEnabledFor(logging.DEBUG):  # the path only: a URL may carry credentials
                log.debug("call %s: attempt %d: %s %s", call_id, number, method, urlsplit(url).path)
            try:
                return self._attempt(method, url, body, attempt_timeout, attempt, control, parse, stream, call_id)
            except _Retryable as failure:
                error, cause, raw = failure.error, failure.cause, failure.response
            if raw is None:
                log.debug("call %s: attempt %d: %s: %s", call_id, number, type(error).__name__, error)
            refusal: Optional[str] = None  # why not to retry ("" when it needs no note)
            try:
                retry = retry.increment(method, url, response=raw, error=cause)
            except Exception:  # retries exhausted, or this failure is not retried (a timeout, say)
                refusal = f"after {number} attempts" if number > 1 else ""
            else:
                delay = retry.delay_after(raw)
                status = raw.status if raw is not None else None
                if time.monotonic() + delay >= call_deadline:
                    refusal = "not retried: the call's deadline would pass first"
                else:
                    refusal = self._refused(control, RetryEvent(number, status, error, delay, _kind_of(cause)))
            if refusal is not None:
                if refusal:
                    _add_note(error, refusal)
                raise error  # outside any except block: its cause stays the transport's error
            if trace is not None:
                trace.retry(number, status, error, delay, _kind_of(cause))
            log.info(
                "call %s: retry %d after %s in %.2fs (%s more allowed)",
                call_id,
                number,
                status or type(error).__name__,
                delay,
                retry.total,
            )
            control.wait(delay, call_deadline)

    @staticmethod
    def _refused(control: CallControl, event: RetryEvent) -> Optional[str]:
        """Tell the control a retry is coming; why it refused it, or None."""
        try:
            control.before_retry(event)
        except RetryBudgetExceeded as budget:
            return str(budget)
        return None

    def _attempt(
        self,
        method: str,
        url: str,
        body: Optional[bytes],
        timeout: Timeout,
        attempt: Attempt,
        control: CallControl,
        parse: Parse,
        stream: bool,
        call_id: str,
    ) -> Any:
        """One attempt: a result, a :class:`_Retryable` failure, or a final error."""
        handed_over = False
        sent = time.monotonic()
        try:
            try:
                response = self._owner._send(method, url, body, timeout, attempt)
            except DeepSeekError:
                raise  # cancelled, or expired before sending
            except Exception as err:
                final = final_failure(err)
                if final is not None:
                    raise final from None  # a retry cannot fix it; the cause may quote a proxy's credentials
                cause = urllib3_cause(err)
                raise _Retryable(
                    _chained(attempt.translate(err), err), cause if isinstance(cause, Exception) else err
                ) from None
            status = response.status_code
            raw = response.raw
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "call %s: status %d in %.3fs, request id %s",
                    call_id,
                    status,
                    time.monotonic() - sent,
                    request_id_of(response.headers),
                )
            if status == 407 or (
                status == 401 and "proxy-authenticate" in response.headers
            ):  # the proxy's, not DeepSeek's
                response.close()
                raise ProxyAuthenticationError(PROXY_AUTHENTICATION)
            if status >= 400:
                data = self._read_or_retry(response, attempt)
                error = self._status_error(response, data)
                control.response_received(status, self._owner.retry.get_retry_after(raw), error)
                if self._owner.retry.is_retry(method, status, _has_retry_after(raw)):
                    raise _Retryable(error, None, raw)
                raise error
            control.response_received(status, None, None)
            if stream:
                handed_over = True
                try:
                    result = parse(None, response, attempt)
                except (IncompleteResponseError, APIConnectionError) as err:
                    _billed(control, err)
                    if getattr(err, "_after_chunks", False):
                        raise  # the caller already saw part of this answer: a retry would repeat it
                    raise _Retryable(err, _body_cause(err), raw) from None
                control.attempt_billed(_usage_of(result))
                return result
            data = self._read_or_retry(response, attempt)
            try:
                result = parse(data, response, attempt)
            except IncompleteResponseError as err:
                _billed(control, err)
                raise _Retryable(err, None, raw) from None
            control.attempt_billed(_usage_of(result))
            return result
        finally:
            if not handed_over:
                attempt.end()

    def _read_or_retry(self, response: requests.Response, attempt: Attempt) -> bytes:
        try:
            return self._read_all(response, attempt)
        except APIConnectionError as err:  # timeouts included
            raise _Retryable(err, _body_cause(err), None) from None

    def _read_all(self, response: requests.Response, attempt: Attempt) -> bytes:
        try:
            return b"".join(raw_pieces(response.raw, attempt.deadline, attempt.handle))
        except BaseException as err:
            response.close()
            if isinstance(err, Exception):
                raise attempt.translate(err) from err
            raise

    def _status_error(self, response: requests.Response, data: bytes) -> APIStatusError:
        request_id = request_id_of(response.headers)
        text = data.decode("utf-8", "replace")
        body: Any = text
        message = text.strip()[:500] or response.reason or "no message"
        try:
            body = json.loads(text)
        except ValueError:
            pass
        else:
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict) and error.get("message"):
                message = str(error["message"])
            elif isinstance(error, str):
                message = error
        return status_error(response.status_code, message, body=body, request_id=request_id)
