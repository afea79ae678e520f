"""What the fake sends for a valid request: completion bodies and streamed SSE events.

Kept apart from validation so each stays small; both are pure (no sockets).
"""

from __future__ import annotations

from json.encoder import encode_basestring
from typing import Any, Dict, List, Optional, Tuple

from deepseek_pool.testing._protocol import Plan, dumps

SYSTEM_FINGERPRINT = "fp_fakedeepseek_prod"
#: Sizes of streamed pieces, cycled: the real service sends a few characters per event.
PIECE_SIZES: Tuple[int, ...] = (2, 1, 3, 4, 2, 3, 1, 2, 4, 3)


def chat_body(plan: Plan, rid: str, created: int, usage: Dict[str, Any]) -> bytes:
    """Serialize the non-streaming ``chat.completion`` (or FIM ``text_completion``) object."""
    if plan.kind == "fim":
        return dumps(
            {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": plan.model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{"text": plan.content, "index": 0, "logprobs": None, "finish_reason": plan.finish_reason}],
                "usage": usage,
            }
        ).encode()
    message: Dict[str, Any] = {"role": "assistant", "content": plan.content}
    if plan.reasoning is not None:
        message["reasoning_content"] = plan.reasoning
    if plan.tool_calls:
        message["tool_calls"] = [dict(call, index=i) for i, call in enumerate(plan.tool_calls)]
    return dumps(
        {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": plan.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}],
            "usage": usage,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
    ).encode()


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


DONE_EVENT = b"data: [DONE]\n\n"


def stream_events(
    plan: Plan, rid: str, created: int, usage: Optional[Dict[str, Any]], chunks: Optional[int] = None
) -> List[bytes]:
    """Build every SSE event of a streamed answer, ``data: [DONE]`` last.

    The chunk envelope is serialized once and only the small delta is encoded per event, which
    keeps a 1,000-event stream cheap to produce.
    """
    enc = encode_basestring
    fim = plan.kind == "fim"
    obj = "text_completion" if fim else "chat.completion.chunk"
    head = (
        f'data: {{"id":{enc(rid)},"object":"{obj}","created":{created},'
        f'"model":{enc(plan.model)},"system_fingerprint":"{SYSTEM_FINGERPRINT}","choices":'
    )
    events: List[str] = []
    if fim:
        body = head + '[{"text":'
        tail = ',"index":0,"logprobs":null,"finish_reason":null}]}\n\n'
        events.extend(body + enc(p) + tail for p in split_pieces(plan.content, chunks))
        events.append(f'{body}"","index":0,"logprobs":null,"finish_reason":"{plan.finish_reason}"}}]}}\n\n')
    else:
        body = head + '[{"index":0,"delta":'
        tail = ',"logprobs":null,"finish_reason":null}]}\n\n'
        events.append(body + '{"role":"assistant","content":""}' + tail)
        thinking = plan.reasoning is not None
        if plan.reasoning:
            events.extend(
                body + '{"content":null,"reasoning_content":' + enc(p) + "}" + tail
                for p in split_pieces(plan.reasoning, chunks)
            )
        after = ',"reasoning_content":null}' if thinking else "}"
        if plan.content or not plan.tool_calls:
            events.extend(body + '{"content":' + enc(p) + after + tail for p in split_pieces(plan.content, chunks))
        for index, call in enumerate(plan.tool_calls):
            first = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            events.append(body + dumps({"content": None, "tool_calls": [first]}) + tail)
            prefix = f'{{"tool_calls":[{{"index":{index},"function":{{"arguments":'
            events.extend(body + prefix + enc(p) + "}}]}" + tail for p in split_pieces(call["function"]["arguments"]))
        events.append(f'{body}{{"content":""}},"logprobs":null,"finish_reason":"{plan.finish_reason}"}}]}}\n\n')
    if usage is not None:
        events.append(head + '[],"usage":' + dumps(usage) + "}\n\n")
    out = [e.encode() for e in events]
    out.append(DONE_EVENT)
    return out
