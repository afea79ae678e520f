"""DeepSeek's chat and FIM protocol as the fake speaks it.

Pure functions, no sockets: a request validated (field by field in
:mod:`~deepseek_pool.testing._fields`) and planned: what the answer says
(:mod:`~deepseek_pool.testing._answers`), how long it is, and what it costs.  Keeping this
apart from the HTTP plumbing lets the server stay small and lets the answers be checked
without a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

from deepseek_pool.testing._answers import answer_for, fim_answer_for, reasoning_for, tokens, tool_call_for
from deepseek_pool.testing._fields import (
    MAX_CONTEXT_TOKENS,
    MAX_FIM_TOKENS,
    MAX_OUTPUT_TOKENS,
    ApiError,
    bad_type,
    check_number,
    missing,
    read_json_mode,
    read_logprobs,
    read_max_tokens,
    read_messages,
    read_model,
    read_stop,
    read_stream_flags,
    read_thinking,
    read_tool_choice,
    read_tools,
    text_of,
)
from deepseek_pool.testing._shapes import dumps


@dataclass
class Plan:
    """What the fake will answer to one valid request (chat or FIM)."""

    kind: str  # "chat" or "fim"
    model: str  # canonical id for the response
    content: str
    reasoning: Optional[str]  # None: thinking off
    tool_calls: List[Dict[str, Any]]
    finish_reason: str
    prompt_tokens: int
    stream: bool
    include_usage: bool
    cache_keys: List[int] = field(default_factory=list)  # cumulative prefix hashes
    cache_tokens: List[int] = field(default_factory=list)  # tokens up to each prefix
    logprobs: Optional[int] = None  # None: no logprobs; else how many top_logprobs per token
    cache_scope: Optional[str] = None  # the request's user_id: each has a cache of its own

    def answer_prefix(self) -> Optional[Tuple[int, int]]:
        """The (key, tokens) of the prompt followed by this answer, as the next turn sends it back."""
        if self.kind != "chat" or self.tool_calls or not self.cache_keys:
            return None
        key = hash((self.cache_keys[-1], "assistant", self.content))
        return key, self.cache_tokens[-1] + 4 + tokens(self.content)

    def completion_tokens(self) -> Tuple[int, int]:
        """Return (completion tokens, reasoning tokens)."""
        reasoning = tokens(self.reasoning) if self.reasoning else 0
        calls = sum(tokens(c["function"]["name"] + c["function"]["arguments"]) for c in self.tool_calls)
        return reasoning + tokens(self.content) + calls, reasoning

    def usage(self, cache_hit: int) -> Dict[str, Any]:
        """Build the ``usage`` object; ``cache_hit`` comes from the server's prefix cache."""
        completion, reasoning = self.completion_tokens()
        usage: Dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cache_hit},
            "prompt_cache_hit_tokens": cache_hit,
            "prompt_cache_miss_tokens": self.prompt_tokens - cache_hit,
        }
        if self.reasoning is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return usage


def cut_short(plan: Plan) -> Plan:
    """Turn a plan into the ``insufficient_system_resource`` answer: half the text, no tools."""
    return replace(
        plan,
        content=plan.content[: len(plan.content) // 2],
        tool_calls=[],
        finish_reason="insufficient_system_resource",
    )


def _budget(
    plan_content: str, reasoning: Optional[str], max_tokens: Optional[int], stops: List[str]
) -> Tuple[str, Optional[str], str]:
    """Apply ``stop`` then ``max_tokens`` (which covers reasoning and answer together)."""
    content = plan_content
    for stop in stops:
        at = content.find(stop) if stop else -1
        if at >= 0:
            content = content[:at]
    if max_tokens is None:
        return content, reasoning, "stop"
    if reasoning is not None and tokens(reasoning) >= max_tokens:
        return "", reasoning[: max_tokens * 4], "length"
    left = max_tokens - (tokens(reasoning) if reasoning is not None else 0)
    if tokens(content) > left:
        return content[: left * 4], reasoning, "length"
    return content, reasoning, "stop"


def _user_id(body: Dict[str, Any]) -> Optional[str]:
    """The request's ``user_id``, which gives it a prompt cache of its own."""
    user_id = body.get("user_id")
    return user_id if isinstance(user_id, str) else None


def plan_chat(body: Any, models: FrozenSet[str], ordered_models: Sequence[str], *, beta: bool) -> Plan:
    """Validate a chat request like DeepSeek does and decide the answer.

    :raises ApiError: 400 or 422 with DeepSeek-like messages.
    """
    if not isinstance(body, dict):
        raise bad_type("", body, "struct ChatCompletionRequest")
    model = read_model(body, models, ordered_models)
    messages = read_messages(body)
    check_number(body, "temperature", 0, 2)
    check_number(body, "top_p", 0, 1)
    check_number(body, "frequency_penalty", -2, 2)
    check_number(body, "presence_penalty", -2, 2)
    max_tokens = read_max_tokens(body, MAX_OUTPUT_TOKENS)
    stream, include_usage = read_stream_flags(body)
    stops = read_stop(body)
    tools = read_tools(body)
    tool, forced = read_tool_choice(body, tools)
    thinking = read_thinking(body, body["model"])
    json_mode = read_json_mode(body, messages)
    logprobs = read_logprobs(body)

    last = messages[-1]
    if last.get("prefix") is True and last["role"] == "assistant" and not beta:
        raise ApiError(
            400,
            "Prefix completion (an assistant message with `prefix: true`) is only "
            "available on the beta endpoint, base_url https://api.deepseek.com/beta",
            param="messages",
        )
    prompt = ""
    # Tools are rendered before the messages, so they (and the model) start every prefix.
    tools_text = dumps(tools) if tools else ""
    total = tokens(tools_text)
    prefix_hash = hash((model, tools_text))
    cache_keys: List[int] = []
    cache_tokens: List[int] = []
    for i, message in enumerate(messages):
        role = message["role"]
        text = text_of(message.get("content"))
        if role == "user":
            prompt = text
        calls = message.get("tool_calls")
        if role == "assistant" and calls:
            if thinking and not isinstance(message.get("reasoning_content"), str):
                # The API's own first sentence (as users report it), then where it is missing.
                raise ApiError(
                    400,
                    "The `reasoning_content` in the thinking mode must be passed back to the API. "
                    f"Missing in the assistant message with `tool_calls` at messages[{i}].",
                    param="messages",
                )
            text += dumps(calls)
        total += 4 + tokens(text)
        prefix_hash = hash((prefix_hash, role, text))
        cache_keys.append(prefix_hash)
        cache_tokens.append(total)
    if total > MAX_CONTEXT_TOKENS:
        raise ApiError(
            400,
            f"This model's maximum context length is {MAX_CONTEXT_TOKENS} tokens. "
            f"However, you requested {total} tokens. Please reduce the length of "
            "the messages.",
            param="messages",
        )

    reasoning = reasoning_for(prompt) if thinking else None
    tool_calls: List[Dict[str, Any]] = []
    if tool is not None and (forced or last["role"] == "user"):
        tool_calls = [tool_call_for(tool, prompt)]
        content, reasoning, finish = _budget("", reasoning, max_tokens, [])
        if finish == "stop":
            finish = "tool_calls"
        else:
            tool_calls = []
    else:
        answer = answer_for(prompt)
        if json_mode:
            answer = dumps({"answer": answer})
        content, reasoning, finish = _budget(answer, reasoning, max_tokens, stops)
    return Plan(
        "chat",
        model,
        content,
        reasoning,
        tool_calls,
        finish,
        total,
        stream,
        include_usage,
        cache_keys,
        cache_tokens,
        logprobs,
        _user_id(body),
    )


def plan_fim(body: Any, models: FrozenSet[str], ordered_models: Sequence[str]) -> Plan:
    """Validate a FIM (``/beta/completions``) request and decide the text.

    :raises ApiError: 400 or 422 with DeepSeek-like messages.
    """
    if not isinstance(body, dict):
        raise bad_type("", body, "struct CompletionRequest")
    model = read_model(body, models, ordered_models)
    prompt = body.get("prompt")
    if prompt is None:
        raise missing("", "prompt")
    if not isinstance(prompt, str):
        raise bad_type("prompt: ", prompt, "a string")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise bad_type("suffix: ", suffix, "a string")
    check_number(body, "temperature", 0, 2)
    check_number(body, "top_p", 0, 1)
    check_number(body, "frequency_penalty", -2, 2)
    check_number(body, "presence_penalty", -2, 2)
    max_tokens = read_max_tokens(body, MAX_FIM_TOKENS)
    stream, include_usage = read_stream_flags(body)
    stops = read_stop(body)
    prompt_tokens = tokens(prompt) + tokens(suffix or "")
    text, _, finish = _budget(fim_answer_for(prompt, suffix), None, max_tokens, stops)
    key = hash(("fim", model, prompt))
    plan = Plan("fim", model, text, None, [], finish, prompt_tokens, stream, include_usage, [key], [tokens(prompt)])
    plan.cache_scope = _user_id(body)
    return plan
