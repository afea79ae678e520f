"""What the load server answers and what every contender must get back.

Shared by the server and the contenders so that answers can be checked: prompt
``i`` carries the marker ``#bench-<i>``, the server finds it in the request body
(without parsing the JSON) and answers with :func:`answer_for` ``(i)``, streamed as
:data:`DEFAULT_CHUNKS` pieces when the request asks for a stream.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Optional

MODEL = "deepseek-flash"
API_KEY = "sk-bench-not-a-real-key"
MARKER = b"#bench-"
DEFAULT_CHUNKS = 50
_FILLER = (
    "Threads wait on sockets while the GIL is free, so one process can keep many "
    "requests in flight. This sentence pads the answer to a realistic size."
)


def prompt_for(index: int) -> str:
    """The user prompt of request ``index``."""
    return f"Benchmark prompt #bench-{index}: answer with the filler sentence."


def answer_for(index: int) -> str:
    """The answer the server gives to :func:`prompt_for` ``(index)`` (plain ASCII, no escapes)."""
    return f"Answer {index}. {_FILLER}"


def pieces_of(text: str, count: int) -> List[str]:
    """Split ``text`` into ``count`` non-empty pieces that join back to it."""
    count = max(1, min(count, len(text)))
    size, extra = divmod(len(text), count)
    out: List[str] = []
    start = 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        out.append(text[start:end])
        start = end
    return out


def messages_for(index: int) -> List[Dict[str, str]]:
    """The chat messages of request ``index``."""
    return [{"role": "user", "content": prompt_for(index)}]


def chat_body(index: int, stream: bool = False) -> Dict[str, Any]:
    """The JSON body of request ``index`` as an OpenAI-style client would send it."""
    body: Dict[str, Any] = {"model": MODEL, "messages": messages_for(index)}
    if stream:
        body["stream"] = True
    return body


def sse_contents(lines: Iterator[bytes]) -> Iterator[Optional[str]]:
    """Yield each ``delta.content`` of an SSE stream given line by line; stop at ``[DONE]``.

    The raw contenders (urllib3, requests, httpx, aiohttp) decode every chunk's JSON
    as openai-python and deepseek_pool do, so CPU per chunk compares like with like.
    """
    loads = json.loads
    for line in lines:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            # Read on to the end of the body (it ends right after), so the
            # connection goes back to the pool instead of being closed.
            for _ in lines:
                pass
            return
        payload = loads(data)
        choices = payload.get("choices")
        if choices:
            yield (choices[0].get("delta") or {}).get("content")


def sse_content(data: bytes) -> Optional[str]:
    """The ``delta.content`` of one SSE ``data:`` line (None for other lines and ``[DONE]``)."""
    if not data.startswith(b"data:"):
        return None
    data = data[5:].strip()
    if data == b"[DONE]":
        return None
    choices = json.loads(data).get("choices")
    if not choices:
        return None
    content: Optional[str] = (choices[0].get("delta") or {}).get("content")
    return content


def split_lines(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """Re-split a byte stream on LF (the server sends LF-terminated SSE lines)."""
    rest = b""
    for piece in pieces:
        if rest:
            piece = rest + piece
        lines = piece.split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest
