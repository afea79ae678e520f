"""The lines a batch writes, in OpenAI's batch output shape: an answer, or an error with the
server's response when there was one."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

from ..errors import APIStatusError
from .jsonl import check_bounds, dumps

__all__ = ["LineMaker"]


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

    def success(self, custom_id: str, completion: Any, cost: Optional[float] = None) -> Tuple[bytes, bool]:
        """The line for an answer, and whether it is a success line.

        ``cost``: the ``cost_usd`` the line records (what the spend cap counted for the
        item over every run), or None for no such field.
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
        try:
            data = dumps(line)
            problem = check_bounds(data)
        except ValueError as err:
            problem = str(err)
        if problem is None:
            return data, True
        return self.failure(
            custom_id, "UnstorableAnswer", f"the answer cannot be stored as a result line: {problem}", cost=cost
        ), False

    def failure(
        self,
        custom_id: str,
        code: str,
        message: str,
        response: Optional[Dict[str, Any]] = None,
        cost: Optional[float] = None,
    ) -> bytes:
        error = {"code": code, "message": message}
        line: Dict[str, Any] = {"id": self._id(), "custom_id": custom_id, "response": response, "error": error}
        if cost is not None:
            line["cost_usd"] = cost
        try:
            data = dumps(line)
            if check_bounds(data) is None:
                return data
        except ValueError:
            pass
        line["response"] = None  # an error body that cannot be stored: keep the error, drop the body
        return dumps(line)

    def error(self, custom_id: str, error: BaseException, cost: Optional[float] = None) -> bytes:
        response = None
        if isinstance(error, APIStatusError):
            response = {"status_code": error.status_code, "request_id": error.request_id, "body": error.body}
        return self.failure(custom_id, type(error).__name__, str(error) or type(error).__name__, response, cost)

    def spend(self, custom_id: str, cost: float, why: str) -> bytes:
        """A spend record: a call of ``custom_id`` was billed ``cost`` USD and left no result (``why``)."""
        return dumps({"id": self._id(), "custom_id": None, "spend": {"for": custom_id, "cost_usd": cost, "why": why}})
