"""A cached streamed answer, replayed as chunks: ``on_chunk`` code and stream loops still run.

A streamed answer is stored as the completion its chunks added up to; a replay gives that
completion back as a few chunks (the role, the reasoning, the text with its logprobs, the
tool calls, the finish, the usage) which a :class:`~deepseek_pool.ChatCompletionBuilder`
folds into the very same completion. The chunking differs from the original (a cached
answer arrives at once); what the chunks carry does not.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Generator, List, Optional

from ..types import ChatChunk, ChatCompletion
from ..wire.stream import ChatStream

__all__ = ["CachedStream", "replay_chunks"]


def replay_chunks(raw: Dict[str, Any]) -> List[ChatChunk]:
    """The chunks of a stored completion, in the order DeepSeek streams them."""
    head = {
        "id": raw.get("id") or "",
        "object": "chat.completion.chunk",
        "created": raw.get("created"),
        "model": raw.get("model") or "",
    }
    choice = raw["choices"][0]
    message = choice.get("message") or {}

    def chunk(delta: Dict[str, Any], finish: Optional[str] = None, logprobs: Any = None) -> ChatChunk:
        piece = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return ChatChunk({**head, "choices": [piece]})

    chunks = [chunk({"role": "assistant", "content": ""})]
    if message.get("reasoning_content"):
        chunks.append(chunk({"reasoning_content": message["reasoning_content"]}))
    if message.get("content") or choice.get("logprobs"):
        chunks.append(chunk({"content": message.get("content") or ""}, logprobs=choice.get("logprobs")))
    if message.get("tool_calls"):
        calls = [
            {
                "index": call.get("index", index),
                "id": call.get("id") or "",
                "type": call.get("type") or "function",
                "function": dict(call.get("function") or {}),
            }
            for index, call in enumerate(message["tool_calls"])
        ]
        chunks.append(chunk({"tool_calls": calls}))
    chunks.append(chunk({}, finish=choice.get("finish_reason")))
    if raw.get("usage"):
        chunks.append(ChatChunk({**head, "choices": [], "usage": raw["usage"]}))
    return chunks


class CachedStream(ChatStream):
    """What ``chat_stream`` returns for a cached answer: its chunks, then its completion (``cached``).

    Nothing is on the wire: no connection, no attempt, no deadline. Used as a stream is:
    ``with client.chat_stream(...) as stream: for chunk in stream: ...``.
    """

    def __init__(self, completion: ChatCompletion) -> None:  # no super().__init__: it needs a response
        self.request_id = completion.request_id
        self.response = None  # type: ignore[assignment]
        self._cached = completion
        self._reader = None
        self._closed = False
        self._iterator = self._replay()

    def _replay(self) -> Generator[ChatChunk, None, None]:
        yield from replay_chunks(self._cached.raw)

    @property
    def attempt(self) -> Any:
        return None

    def completion(self) -> ChatCompletion:
        """What is left of the replay is skipped; the answer is the stored one."""
        self.close()
        return self._cached

    def close(self) -> None:
        self._closed = True


def replay_into(completion: ChatCompletion, on_chunk: Optional[Callable[[ChatChunk], None]]) -> ChatCompletion:
    """Show a cached streamed answer's chunks to ``on_chunk`` (if any); return the answer."""
    if on_chunk is not None:
        for piece in replay_chunks(completion.raw):
            on_chunk(piece)
    return completion
