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

    def success(self, custom_id: str, completion: Any) -> Tuple[bytes, bool]:
        """The line for an answer, and whether it is a success line."""
        line_id = self._id()
        try:
            data = dumps(
                {
                    "id": line_id,
                    "custom_id": custom_id,
                    "response": {
                        "status_code": 200,
                        "request_id": getattr(completion, "request_id", None),
                        "body": completion.raw,
                    },
                    "error": None,
                }
            )
            problem = check_bounds(data)
        except ValueError as err:
            problem = str(err)
        if problem is None:
            return data, True
        return self.failure(
            custom_id, "UnstorableAnswer", f"the answer cannot be stored as a result line: {problem}"
        ), False

    def failure(self, custom_id: str, code: str, message: str, response: Optional[Dict[str, Any]] = None) -> bytes:
        error = {"code": code, "message": message}
        line = {"id": self._id(), "custom_id": custom_id, "response": response, "error": error}
        try:
            data = dumps(line)
            if check_bounds(data) is None:
                return data
        except ValueError:
            pass
        line["response"] = None  # an error body that cannot be stored: keep the error, drop the body
        return dumps(line)

    def error(self, custom_id: str, error: BaseException) -> bytes:
        response = None
        if isinstance(error, APIStatusError):
            response = {"status_code": error.status_code, "request_id": error.request_id, "body": error.body}
        return self.failure(custom_id, type(error).__name__, str(error) or type(error).__name__, response)
