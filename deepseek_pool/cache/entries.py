"""A cached answer's bytes: a header line, then the answer's JSON, checked whole on every read.

::

    {"v":1,"key":"v1-...","at":1796000000.0,"streamed":false,"request_id":"...","sha256":"..."}\\n
    {"id":"...","choices":[...],"usage":{...}}

The header names the key the entry was stored under and the hash of the answer's bytes,
so an entry that was cut, changed on disk, or put under another key is found out and read
as a miss, never served. Only the answer and its request id are kept: no header of the
request, so no API key, ever reaches a store.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, NamedTuple, Optional

from ..types import completion_problem
from .key import KEY_VERSION, canonical_json

__all__ = ["COMPLETE_FINISH_REASONS", "CorruptEntry", "Entry", "decode_entry", "encode_entry"]

#: Only answers that ended so are stored. ``length`` is the whole answer to a request that asked
#: for at most ``max_tokens``, as the same request would get again; ``content_filter`` and
#: ``insufficient_system_resource`` (cut by the server) are not.
COMPLETE_FINISH_REASONS = frozenset({"stop", "tool_calls", "length"})


class CorruptEntry(ValueError):
    """An entry that cannot be trusted; the message says why."""


class Entry(NamedTuple):
    """A stored answer: its JSON, its request id, when it was stored, and whether it was streamed."""

    raw: Dict[str, Any]
    request_id: Optional[str]
    stored_at: float
    streamed: bool


def encode_entry(key: str, raw: Dict[str, Any], request_id: Optional[str], stored_at: float, streamed: bool) -> bytes:
    answer = canonical_json(raw)
    header = {
        "v": KEY_VERSION,
        "key": key,
        "at": stored_at,
        "streamed": streamed,
        "request_id": request_id,
        "sha256": hashlib.sha256(answer).hexdigest(),
    }
    return canonical_json(header) + b"\n" + answer


def decode_entry(key: str, data: Any) -> Entry:
    """The entry in ``data``, read back under ``key``; :class:`CorruptEntry` when it is not whole and right."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CorruptEntry(f"the stored value is a {type(data).__name__}, not bytes")
    data = bytes(data)
    head, newline, answer = data.partition(b"\n")
    if not newline:
        raise CorruptEntry("no header line")
    try:
        header = json.loads(head)
    except ValueError:
        raise CorruptEntry("the header is not JSON") from None
    if not isinstance(header, dict) or header.get("v") != KEY_VERSION:
        raise CorruptEntry(f"not a version {KEY_VERSION} entry")
    if header.get("key") != key:
        raise CorruptEntry("stored under another key")
    if header.get("sha256") != hashlib.sha256(answer).hexdigest():
        raise CorruptEntry("the answer's bytes do not match their hash (cut or changed)")
    stored_at = header.get("at")
    request_id = header.get("request_id")
    if not isinstance(stored_at, (int, float)) or isinstance(stored_at, bool):
        raise CorruptEntry("no time of storing")
    if request_id is not None and not isinstance(request_id, str):
        raise CorruptEntry("the request id is not a string")
    try:
        raw = json.loads(answer)
    except ValueError:
        raise CorruptEntry("the answer is not JSON") from None
    problem = completion_problem(raw)
    if problem is not None:
        raise CorruptEntry(f"the answer is not a completion: {problem}")
    if raw["choices"][0].get("finish_reason") not in COMPLETE_FINISH_REASONS:
        raise CorruptEntry("the answer is not a complete one")
    return Entry(raw, request_id, float(stored_at), bool(header.get("streamed")))
