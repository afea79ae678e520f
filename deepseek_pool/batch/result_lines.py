"""The lines a batch writes, in OpenAI's batch output shape: an answer, or an error with the
server's response when there was one.

Besides OpenAI's keys (``id``, ``custom_id``, ``response``, ``error``) a line may carry
``cost_usd`` (what the spend cap counted) and ``call``, what the call did, so that
``deepseek-pool report`` can tell from the file alone what a batch did::

    "call": {"started_at": 1796000000.123, "ended_at": 1796000001.456,
             "queued_seconds": 0.002, "attempts": 2, "rate_limited": 1}

``started_at`` / ``ended_at`` are Unix times (seconds, UTC) of the call's start (after the
rate limits) and its end, retries included; ``queued_seconds`` the wait for the limits
before it; ``attempts`` the HTTP attempts sent; ``rate_limited`` how many were answered
429; ``cached``, present and true only for an answer the response cache served (its
``usage`` is the original call's: nothing was billed). The times are absent for a call
that never started (:data:`NOT_CALLED` for an input line that was not a request).
Readers of the OpenAI shape ignore the extra keys; files written before they existed
simply lack them.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional, Tuple

from ..errors import APIStatusError
from .jsonl import check_bounds, dumps

__all__ = ["NOT_CALLED", "LineMaker", "call_record"]

#: The ``call`` field of an item that was never sent (its input line was not a request).
NOT_CALLED: Dict[str, Any] = {"attempts": 0, "rate_limited": 0}


def call_record(result: Any) -> Dict[str, Any]:
    """The ``call`` field of a pool :class:`~deepseek_pool.pool.items.Result`'s line.

    The pool times calls on the monotonic clock; they are placed on the wall clock here,
    when the result is taken, so a line's times agree with the hour DeepSeek billed at.
    """
    record: Dict[str, Any] = {}
    started = result.started_at
    if started is not None:
        start = time.time() - (time.monotonic() - started)
        record["started_at"] = round(start, 3)
        record["ended_at"] = round(start + result.elapsed, 3)
        record["queued_seconds"] = round(result.queued, 3)
    record["attempts"] = result.attempts
    record["rate_limited"] = result.rate_limited
    if getattr(result, "cached", False):
        record["cached"] = True  # served by the response cache: nothing sent, nothing billed
    return record


class LineMaker:
    """Builds output lines; ids are one random prefix per run plus a counter (no syscall per line).

    Every line is valid UTF-8 JSON within the reader's bounds, whatever the answer holds
    (:func:`deepseek_pool.batch.jsonl.dumps`); an answer that could not be read back is written
    as a failure saying why, so the item runs again rather than being lost.
    """

    def __init__(self) -> None:
        self._prefix = "batch_req_" + os.urandom(8).hex()
        self._count = 0

    def _id(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count:08x}"

    def success(
        self, custom_id: str, completion: Any, cost: Optional[float] = None, call: Optional[Dict[str, Any]] = None
    ) -> Tuple[bytes, bool]:
        """The line for an answer, and whether it is a success line.

        ``cost``: the ``cost_usd`` the line records (what the spend cap counted for the
        item over every run), or None for no such field. ``call``: the ``call`` field
        (:func:`call_record`), or None for none.
        """
        line_id = self._id()
        line: Dict[str, Any] = {
            "id": line_id,
            "custom_id": custom_id,
            "response": {
                "status_code": 200,
                "request_id": getattr(completion, "request_id", None),
                "body": completion.raw,
            },
            "error": None,
        }
        if cost is not None:
            line["cost_usd"] = cost
        if call is not None:
            line["call"] = call
        try:
            data = dumps(line)
            problem = check_bounds(data)
        except ValueError as err:
            problem = str(err)
        if problem is None:
            return data, True
        why = f"the answer cannot be stored as a result line: {problem}"
        return self.failure(custom_id, "UnstorableAnswer", why, cost=cost, call=call), False

    def failure(
        self,
        custom_id: str,
        code: str,
        message: str,
        response: Optional[Dict[str, Any]] = None,
        cost: Optional[float] = None,
        call: Optional[Dict[str, Any]] = None,
    ) -> bytes:
        error = {"code": code, "message": message}
        line: Dict[str, Any] = {"id": self._id(), "custom_id": custom_id, "response": response, "error": error}
        if cost is not None:
            line["cost_usd"] = cost
        if call is not None:
            line["call"] = call
        try:
            data = dumps(line)
            if check_bounds(data) is None:
                return data
        except ValueError:
            pass
        line["response"] = None  # an error body that cannot be stored: keep the error, drop the body
        return dumps(line)

    def error(
        self, custom_id: str, error: BaseException, cost: Optional[float] = None, call: Optional[Dict[str, Any]] = None
    ) -> bytes:
        response = None
        if isinstance(error, APIStatusError):
            response = {"status_code": error.status_code, "request_id": error.request_id, "body": error.body}
        return self.failure(custom_id, type(error).__name__, str(error) or type(error).__name__, response, cost, call)

    def spend(self, custom_id: str, cost: float, why: str) -> bytes:
        """A spend record: a call of ``custom_id`` was billed ``cost`` USD and left no result (``why``)."""
        return dumps({"id": self._id(), "custom_id": None, "spend": {"for": custom_id, "cost_usd": cost, "why": why}})
