"""The batch's input file: each line read with bounded effort and routed to a pool request.

A first pass checks the whole input before anything is sent (duplicate custom_ids, the
models named, malformed lines); a second pass, :class:`Feed`, reads it again lazily and
yields the requests a run sends.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Generator, Iterator, List, Optional, Set, Tuple

from ..pool.pool import Routed, route_request
from .jsonl import MAX_LINE_BYTES, LineError, loads, read_lines
from .paths import BatchFileError, PathLike

#: How many duplicate custom_ids the error message lists.
_DUPLICATES_SHOWN = 5

Malformed = Tuple[int, str, str, str]  # line number, custom_id, error code, message
Scanned = Tuple[int, str, Optional[Routed], Optional[Tuple[str, str]]]


def scan(path: PathLike) -> Iterator[Scanned]:
    """Yield ``(line number, custom_id, routed request, None)`` or ``(line number, custom_id, None, (code, message))``.

    Every line is read with bounded effort (:mod:`deepseek_pool.batch.jsonl`): one too long,
    too deep, not UTF-8 or not JSON is an error for that item, never a crash.
    """
    with open(path, "rb") as lines:
        for number, raw in read_lines(lines):
            scanned = parse_line(number, raw)
            if scanned is not None:
                yield scanned


def parse_line(number: int, raw: Optional[bytes]) -> Optional[Scanned]:
    """One input line (None: too long) as :func:`scan` yields it; None for a blank line."""
    if raw is None:
        return number, str(number), None, ("LineTooLong", f"line {number} is longer than {MAX_LINE_BYTES} bytes")
    if not raw.strip():
        return None
    try:
        data = loads(raw, strip_bom=number == 1)
    except LineError as err:
        return number, str(number), None, (err.code, f"line {number} {err}")
    given = data.get("custom_id") if isinstance(data, dict) else None
    try:
        routed = route_request(data)
        if routed.custom_id == "":
            raise ValueError("custom_id is an empty string")
    except (TypeError, ValueError) as err:
        usable = given if isinstance(given, str) and given else str(number)
        return number, usable, None, (type(err).__name__, f"line {number} is not a request: {err}")
    return number, routed.custom_id or str(number), routed, None


class InputCheck:
    """What the first pass over the input found: custom_id -> line, the malformed lines, the models named."""

    def __init__(self) -> None:
        self.lines: Dict[str, int] = {}
        self.malformed: List[Malformed] = []
        self.models: Set[str] = set()


def check_input(path: PathLike) -> InputCheck:
    """Read the whole input once.

    :raises BatchFileError: when custom_ids repeat, before anything is sent.
    """
    found = InputCheck()
    lines = found.lines
    duplicates: List[str] = []
    for number, custom_id, routed, error in scan(path):
        first = lines.get(custom_id)
        if first is not None:
            if len(duplicates) < _DUPLICATES_SHOWN:
                duplicates.append(f"{custom_id!r} (lines {first} and {number})")
            continue
        lines[custom_id] = number
        if error is not None:
            found.malformed.append((number, custom_id, error[0], error[1]))
        elif routed is not None:
            model = routed.params.get("model")
            if isinstance(model, str) and model:
                found.models.add(model)
    if duplicates:
        raise BatchFileError(
            f"{os.fspath(path)}: duplicate custom_id {', '.join(duplicates)}; each custom_id must be unique "
            "(a line without one gets its line number as its custom_id); nothing was sent"
        )
    return found


#: The url a non-chat endpoint is written back as, for the pool to route.
_URL_OF = {"beta": "/beta/chat/completions", "fim": "/beta/completions"}


class Feed:
    """Second pass over the input: the requests this run sends, read lazily, until told to stop."""

    def __init__(self, path: PathLike, should_run: Any, model: Optional[str]) -> None:
        self.path = path
        self.should_run = should_run
        self.model = model
        self.stopped = False  # set when the spend cap refuses a call: nothing more is fed

    def __iter__(self) -> Generator[Dict[str, Any], None, None]:
        for _number, custom_id, routed, _error in scan(self.path):
            if self.stopped:
                return
            if routed is None or not self.should_run(custom_id):
                continue
            yield request_of(custom_id, routed, self.model)


def request_of(custom_id: str, routed: Routed, model: Optional[str]) -> Dict[str, Any]:
    """The pool request for one routed input line."""
    params = routed.params
    if model is not None:
        params["model"] = model
    if routed.endpoint == "chat":
        params["messages"] = routed.messages
        params["custom_id"] = custom_id
        return params
    params["prompt" if routed.endpoint == "fim" else "messages"] = routed.messages
    return {"custom_id": custom_id, "method": "POST", "url": _URL_OF[routed.endpoint], "body": params}
