"""The fake's deterministic answers: the same prompt always gets the same text, reasoning,
FIM fill and tool call, so tests can say what they expect without a model."""

from __future__ import annotations

import hashlib
from typing import Any, Dict, Optional

from deepseek_pool.testing._shapes import dumps

__all__ = ["answer_for", "digest", "fim_answer_for", "reasoning_for", "tokens", "tool_call_for"]


def tokens(text: str) -> int:
    """Estimate tokens as ceil(characters / 4): cheap, deterministic, roughly right for English."""
    return (len(text) + 3) // 4


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


def answer_for(prompt: str) -> str:
    """The content the fake answers for a last user message ``prompt``."""
    echo = prompt if len(prompt) <= 80 else prompt[:77] + "..."
    return f"FakeDeepSeek answer {digest(prompt)}: you said {echo!r}."


def reasoning_for(prompt: str) -> str:
    """The ``reasoning_content`` the fake thinks for ``prompt`` in thinking mode."""
    return (
        f"The user wrote {len(prompt)} characters (digest {digest(prompt)}). "
        "I will answer with the deterministic fake reply."
    )


def fim_answer_for(prompt: str, suffix: Optional[str] = None) -> str:
    """The text the fake fills in between ``prompt`` and ``suffix`` (FIM)."""
    return f" fill_{digest(prompt + chr(0) + (suffix or ''))}() "


def _example_value(schema: Any, prompt: str) -> Any:
    if not isinstance(schema, dict):
        return None
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if kind == "string":
        return prompt[:40]
    if kind == "integer":
        return len(prompt)
    if kind == "number":
        return len(prompt) / 2
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return None


def tool_call_for(tool: Dict[str, Any], prompt: str) -> Dict[str, Any]:
    """The deterministic call the fake makes to ``tool`` for ``prompt``: one value per property."""
    function = tool["function"]
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties")
    args = {k: _example_value(v, prompt) for k, v in properties.items()} if isinstance(properties, dict) else {}
    name: str = function["name"]
    return {
        "id": f"call_0_{digest(name + chr(0) + prompt)}{digest(prompt)}",
        "type": "function",
        "function": {"name": name, "arguments": dumps(args)},
    }
