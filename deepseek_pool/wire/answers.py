"""A 2xx body read into the call's answer: JSON of the expected shape, a stream aggregated.

These are the ``parse`` callbacks of :class:`~deepseek_pool.wire.attempts.AttemptLoop`
that the client picks per endpoint. A body that is not the answer it should be becomes
the error a retry may fix: an empty body or a 200 that DeepSeek cut short for lack of
resources is an :class:`~deepseek_pool.errors.IncompleteResponseError` (retried), a body
that is not JSON or not the expected shape an
:class:`~deepseek_pool.errors.APIResponseValidationError`.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

import requests

from ..errors import APIResponseValidationError, DeepSeekError, IncompleteResponseError
from ..types import ChatChunk, ChatCompletion, completion_problem
from .adapter import request_id_of
from .calls import Attempt, CallControl
from .reader import READER
from .stream import ChatStream

__all__ = ["ChunkCallback", "ShapeCheck", "aggregate_stream", "answered", "parse_chat", "parse_json"]

ChunkCallback = Callable[[ChatChunk], None]
#: Says what makes a parsed body not the expected shape, or None when it is fine.
ShapeCheck = Callable[[Any], Optional[str]]

#: A 200 that stopped for this reason is a load failure, not an answer.
_INSUFFICIENT = "insufficient_system_resource"


def answered(completion: ChatCompletion) -> ChatCompletion:
    """Return ``completion``, or raise when it is a load failure dressed as a 200."""
    if completion.finish_reason == _INSUFFICIENT:
        raise IncompleteResponseError(
            "DeepSeek cut the answer short for lack of server resources (insufficient_system_resource)",
            status_code=200,
            body=completion.raw,
            request_id=completion.request_id,
        )
    return completion


def parse_json(data: Optional[bytes], response: requests.Response, check: Optional[ShapeCheck] = None) -> Any:
    """The body as JSON, checked by ``check``; an empty body is a load failure (retried)."""
    if not data or not data.strip():
        raise IncompleteResponseError("the server sent an empty body", status_code=response.status_code)
    try:
        value = json.loads(data)
    except ValueError as err:
        raise APIResponseValidationError(
            f"the server's answer is not JSON: {data[:200]!r}",
            status_code=response.status_code,
            body=data.decode("utf-8", "replace"),
            request_id=request_id_of(response.headers),
        ) from err
    problem = check(value) if check is not None else None
    if problem is not None:
        raise APIResponseValidationError(
            f"the server's answer is not a completion: {problem}",
            status_code=response.status_code,
            body=value,
            request_id=request_id_of(response.headers),
        )
    return value


def parse_chat(data: Optional[bytes], response: requests.Response, attempt: Attempt) -> ChatCompletion:
    """A chat answer read whole."""
    assert data is not None
    raw = parse_json(data, response, completion_problem)
    return answered(ChatCompletion(raw, request_id_of(response.headers)))


def aggregate_stream(
    shared_reader: bool,
    on_chunk: Optional[ChunkCallback],
    restart: bool,
    control: Optional[CallControl],
    data: Optional[bytes],
    response: requests.Response,
    attempt: Attempt,
    on_complete: Optional[Callable[[ChatCompletion], None]] = None,
) -> ChatCompletion:
    """A streamed chat answer read into one completion, each chunk shown to ``on_chunk``.

    ``shared_reader``: the client may read streams nobody watches on the process's one
    stream reader thread (:mod:`~deepseek_pool.wire.reader`). ``on_complete``: see
    :class:`~deepseek_pool.wire.stream.ChatStream`.
    """
    # Nobody watches the chunks: the shared reader may read them while this thread sleeps.
    reader = READER if on_chunk is None and shared_reader else None
    first_token = control.first_token if control is not None else None
    stream = ChatStream(response, attempt, reader=reader, on_first_token=first_token, on_complete=on_complete)
    delivered = False
    try:
        with stream:
            if on_chunk is not None:
                for chunk in stream:
                    on_chunk(chunk)
                    delivered = True
            completion = answered(stream.completion())
    except DeepSeekError as err:
        # Once the caller has seen part of this answer, a retry would show it again.
        err._after_chunks = delivered and not restart  # type: ignore[attr-defined]
        raise
    return completion
