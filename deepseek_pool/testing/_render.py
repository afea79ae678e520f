"""What the fake sends for a valid request: completion bodies and streamed SSE events.

Kept apart from validation so each stays small; both are pure (no sockets).  The shapes
themselves, with where each comes from, live in :mod:`._shapes`; this module only fills them.
"""

from __future__ import annotations

import hashlib
from json.encoder import encode_basestring
from typing import Any, Dict, List, Optional, Tuple

from deepseek_pool.testing import _shapes as shapes
from deepseek_pool.testing._protocol import Plan
from deepseek_pool.testing._shapes import SYSTEM_FINGERPRINT, dumps

__all__ = ["DONE_EVENT", "PIECE_SIZES", "SYSTEM_FINGERPRINT", "chat_body", "logprobs_for", "split_pieces"]

#: Sizes of streamed pieces, cycled: the real service sends a few characters per event.
PIECE_SIZES: Tuple[int, ...] = (2, 1, 3, 4, 2, 3, 1, 2, 4, 3)
#: Alternatives offered in ``top_logprobs`` (the answer's own token always comes first).
ALTERNATIVE_TOKENS: Tuple[str, ...] = (
    *(" the", ",", " a", ".", " and", " of", " to", " is", " in", "\n"),
    *(f" alt{i}" for i in range(10)),
)
DONE_EVENT = b"data: [DONE]\n\n"

_NULL = "null"


def _logprob(token: str) -> float:
    """A deterministic log probability in (-2, 0] for ``token``."""
    digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=2).digest()
    return -round(int.from_bytes(digest, "big") % 2000 / 1000, 3)


def _token_logprob(token: str, top: int) -> Dict[str, Any]:
    logprob = _logprob(token)
    alternatives = [{"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8", "surrogatepass"))}]
    for alternative in ALTERNATIVE_TOKENS:
        if len(alternatives) >= top:
            break
        if alternative != token:
            step = len(alternatives)
            alternatives.append(
                {"token": alternative, "logprob": round(logprob - step, 3), "bytes": list(alternative.encode())}
            )
    entry: Dict[str, Any] = shapes.fill_shape(
        shapes.TOKEN_LOGPROB,
        token=token,
        logprob=logprob,
        bytes=list(token.encode("utf-8", "surrogatepass")),
        top=[shapes.fill_shape(shapes.TOP_LOGPROB, **a) for a in alternatives[:top]],
    )
    return entry


def logprobs_for(tokens: List[str], top: int) -> Dict[str, Any]:
    """The ``logprobs`` object of a choice whose answer is ``tokens`` (``top`` alternatives each)."""
    logprobs: Dict[str, Any] = shapes.fill_shape(shapes.LOGPROBS, tokens=[_token_logprob(t, top) for t in tokens])
    return logprobs


def _logprobs_json(plan: Plan, tokens: List[str]) -> str:
    if plan.logprobs is None:
        return _NULL
    return dumps(logprobs_for(tokens, plan.logprobs))


def chat_body(plan: Plan, rid: str, created: int, usage: Dict[str, Any]) -> bytes:
    """Serialize the non-streaming ``chat.completion`` (or FIM ``text_completion``) object."""
    common = {"id": encode_basestring(rid), "created": str(created), "model": encode_basestring(plan.model)}
    finish = encode_basestring(plan.finish_reason)
    if plan.kind == "fim":
        text = shapes.TEXT_COMPLETION_TEMPLATE.fill(
            text=encode_basestring(plan.content), finish=finish, usage=dumps(usage), **common
        )
        return text.encode()
    message: Dict[str, Any] = {"role": "assistant", "content": plan.content}
    if plan.reasoning is not None:
        message["reasoning_content"] = plan.reasoning
    if plan.tool_calls:
        message["tool_calls"] = [dict(call, index=i) for i, call in enumerate(plan.tool_calls)]
    logprobs = _logprobs_json(plan, split_pieces(plan.content))
    text = shapes.CHAT_COMPLETION_TEMPLATE.fill(
        message=dumps(message), logprobs=logprobs, finish=finish, usage=dumps(usage), **common
    )
    return text.encode()


def split_pieces(text: str, count: Optional[int] = None) -> List[str]:
    """Cut ``text`` into streamed pieces: tiny cycled sizes, or exactly ``count`` near-equal ones."""
    if count is not None:
        size, extra = divmod(len(text), count)
        pieces: List[str] = []
        start = 0
        for i in range(count):
            end = start + size + (1 if i < extra else 0)
            pieces.append(text[start:end])
            start = end
        return pieces
    pieces = []
    start, i, n = 0, 0, len(PIECE_SIZES)
    while start < len(text):
        end = start + PIECE_SIZES[i % n]
        pieces.append(text[start:end])
        start, i = end, i + 1
    return pieces


def stream_events(
    plan: Plan, rid: str, created: int, usage: Optional[Dict[str, Any]], chunks: Optional[int] = None
) -> List[bytes]:
    """Build every SSE event of a streamed answer, ``data: [DONE]`` last.

    Each chunk is its template from :mod:`._shapes` with the slots filled: the envelope is
    filled once per stream and only the small delta is encoded per event, which keeps a
    1,000-event stream cheap to produce.
    """
    enc = encode_basestring
    common = {"id": enc(rid), "created": str(created), "model": enc(plan.model)}
    with_usage = usage is not None
    events: List[str] = []
    if plan.kind == "fim":
        fim = shapes.FIM_CHUNK_TEMPLATES[with_usage]
        unfinished = _NULL
        events.extend(fim.fill(text=enc(p), finish=unfinished, **common) for p in split_pieces(plan.content, chunks))
        events.append(fim.fill(text='""', finish=enc(plan.finish_reason), **common))
    else:
        # Split the chunk envelope around its delta and logprobs once; fill per event.
        envelope = shapes.CHAT_CHUNK_TEMPLATES[with_usage]
        marker = "\x00"
        before_delta, rest = envelope.fill(delta=marker, logprobs=marker, finish=_NULL, **common).split(marker, 1)
        between, after = rest.split(marker, 1)
        deltas = shapes.DELTA_TEMPLATES
        thinking = plan.reasoning is not None

        def event(delta: str, logprobs: str = _NULL) -> str:
            return before_delta + delta + between + logprobs + after

        events.append(event(deltas["first_thinking" if thinking else "first"].fill()))
        if plan.reasoning:
            # The hot path (thousands of pieces): one concatenation per event.
            head, tail = deltas["reasoning"].around()
            head, tail = before_delta + head, tail + between + _NULL + after
            events.extend(head + enc(p) + tail for p in split_pieces(plan.reasoning, chunks))
        if plan.content or not plan.tool_calls:
            content = deltas["content_thinking" if thinking else "content"]
            top = plan.logprobs
            if top is None:
                head, tail = content.around()
                head, tail = before_delta + head, tail + between + _NULL + after
                events.extend(head + enc(p) + tail for p in split_pieces(plan.content, chunks))
            else:
                for p in split_pieces(plan.content, chunks):
                    events.append(event(content.fill(piece=enc(p)), dumps(logprobs_for([p], top))))
        start = deltas["tool_call_start_thinking" if thinking else "tool_call_start"]
        arguments = deltas["tool_call_arguments"]
        for index, call in enumerate(plan.tool_calls):
            function = call["function"]
            events.append(event(start.fill(index=str(index), call_id=enc(call["id"]), name=enc(function["name"]))))
            events.extend(
                event(arguments.fill(index=str(index), piece=enc(p))) for p in split_pieces(function["arguments"])
            )
        finish = deltas["finish_thinking" if thinking else "finish"].fill()
        events.append(envelope.fill(delta=finish, logprobs=_NULL, finish=enc(plan.finish_reason), **common))
    if usage is not None:
        events.append(shapes.USAGE_CHUNK_TEMPLATE.fill(usage=dumps(usage), **common))
    out = [b"data: " + e.encode() + b"\n\n" for e in events]
    out.append(DONE_EVENT)
    return out
