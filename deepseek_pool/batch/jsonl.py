"""JSON lines read and written with bounded effort: a line is parsed or refused, never a crash.

The batch runner reads two files it does not control: the requests a user wrote and
the results file a previous run (or someone else) left. A line there may be longer
than memory should hold, nested deeper than the JSON decoder can recurse, not UTF-8,
or not JSON. :func:`read_lines` and :func:`loads` turn each of those into a
:class:`LineError` naming what is wrong, so the caller can write an error line or skip
the line with a warning. :func:`dumps` writes a line that :func:`loads` always reads
back: valid UTF-8 whatever the strings hold (a lone surrogate is written as a ``\\u``
escape), within the same depth and length bounds.
"""

from __future__ import annotations

import json
import re
from typing import IO, Any, Iterator, Optional, Tuple

__all__ = ["MAX_DEPTH", "MAX_LINE_BYTES", "LineError", "check_bounds", "dumps", "loads", "read_lines"]

#: Longest line, in bytes, that is parsed; a longer one is refused without being held whole.
MAX_LINE_BYTES = 64 * 1024 * 1024
#: Deepest nesting of arrays and objects that is parsed (far below the decoder's recursion limit).
MAX_DEPTH = 512
_SKIP_BLOCK = 1024 * 1024
#: A JSON string (escapes included), to blank out before bracket counting.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


class LineError(ValueError):
    """A line that cannot be used; :attr:`code` names why (``JSONDecodeError``, ``LineTooLong`` ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def read_lines(file: IO[bytes], max_bytes: Optional[int] = None) -> Iterator[Tuple[int, Optional[bytes]]]:
    """Yield ``(line number, raw bytes)`` per line; the bytes are None for a line over ``max_bytes``.

    A line that is too long is skipped in blocks, never held whole, so the numbers of
    the lines after it stay right. The last line may lack its newline.
    """
    limit = MAX_LINE_BYTES if max_bytes is None else max_bytes
    number = 0
    readline = file.readline
    while True:
        raw = readline(limit + 1)
        if not raw:
            return
        number += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            while True:
                rest = readline(_SKIP_BLOCK)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, None
        else:
            yield number, raw


def depth_of(raw: bytes, limit: int = MAX_DEPTH) -> int:
    """The deepest nesting of ``raw``'s arrays and objects, counted up to ``limit + 1``."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return 0  # cannot be deeper than the brackets it has
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub(b"", raw)):
        if match.group() in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        else:
            depth -= 1
    return deepest


def loads(raw: bytes, *, max_depth: int = MAX_DEPTH, strip_bom: bool = False) -> Any:
    """Parse one line; raise :class:`LineError` when it is not UTF-8, too deep, or not JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LineError("UnicodeDecodeError", f"is not UTF-8: {err}") from None
    if strip_bom and text.startswith("\ufeff"):
        text = text[1:]
    if depth_of(raw, max_depth) > max_depth:
        raise LineError("JSONTooDeep", f"nests arrays and objects more than {max_depth} deep")
    try:
        return json.loads(text)
    except RecursionError:  # pragma: no cover - depth_of bounds it first
        raise LineError("JSONTooDeep", "nests arrays and objects too deep") from None
    except ValueError as err:
        raise LineError("JSONDecodeError", f"is not valid JSON: {err}") from None


def check_bounds(line: bytes) -> Optional[str]:
    """Why :func:`loads` would refuse an encoded line (too long, too deep), or None."""
    if len(line) > MAX_LINE_BYTES:
        return f"it is {len(line)} bytes long, over {MAX_LINE_BYTES}"
    if depth_of(line) > MAX_DEPTH:
        return f"it nests arrays and objects more than {MAX_DEPTH} deep"
    return None


def dumps(value: Any) -> bytes:
    """One line of compact JSON and its newline, always valid UTF-8.

    Text stays readable (not ``\\u``-escaped) unless a string holds a lone surrogate,
    which UTF-8 cannot carry: then the line is written ASCII-escaped, which reads back
    to the same strings.

    :raises ValueError: the value cannot be written as JSON (nested too deep to encode).
    """
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        raise ValueError("the value nests too deep to be written as JSON") from None
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"
