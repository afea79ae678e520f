"""The SSE decoder, byte by byte: every interpretation rule, every line ending, every split."""

from __future__ import annotations

import json
import pickle
from typing import Any, Dict, List, Optional, Sequence

import pytest

from deepseek_pool.wire.sse import ServerSentEvent, SSEDecoder, iter_sse

E = ServerSentEvent


def decode(*chunks: bytes) -> List[ServerSentEvent]:
    """Feed ``chunks`` one by one, then close; return every event."""
    decoder = SSEDecoder()
    events: List[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


def bytewise(stream: bytes) -> List[ServerSentEvent]:
    return decode(*(stream[i : i + 1] for i in range(len(stream))))


# --- a realistic DeepSeek stream -------------------------------------------------------------------


def _chunk(delta: Dict[str, Any], finish: object = None, usage: object = None, choices: bool = True) -> str:
    body: Dict[str, Any] = {
        "id": "c0ffee",
        "object": "chat.completion.chunk",
        "created": 1764300000,
        "model": "deepseek-flash",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
    }
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


USAGE = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
DEEPSEEK_DATA = [
    _chunk({"role": "assistant", "content": None, "reasoning_content": ""}),
    _chunk({"reasoning_content": "Hm"}),
    _chunk({"reasoning_content": "m…"}),
    _chunk({"content": "hé"}),
    _chunk({"content": "llo"}),
    _chunk({"content": " 你好"}),
    _chunk({"content": " 🙂"}),
    _chunk({"content": ""}, finish="stop"),
    _chunk({}, usage=USAGE, choices=False),
    "[DONE]",
]
DEEPSEEK_EVENTS = [E("message", data) for data in DEEPSEEK_DATA]


def deepseek_stream(eol: bytes) -> bytes:
    parts = [b": keep-alive" + eol + eol, b": keep-alive" + eol]
    for i, data in enumerate(DEEPSEEK_DATA):
        parts.append(b"data: " + data.encode() + eol + eol)
        if i == 2:
            parts.append(b": keep-alive" + eol + eol)
    return b"".join(parts)


EOLS = [pytest.param(b"\n", id="LF"), pytest.param(b"\r\n", id="CRLF"), pytest.param(b"\r", id="CR")]


@pytest.mark.parametrize("eol", EOLS)
def test_deepseek_stream_whole(eol: bytes) -> None:
    assert decode(deepseek_stream(eol)) == DEEPSEEK_EVENTS


@pytest.mark.parametrize("eol", EOLS)
def test_deepseek_stream_one_byte_at_a_time(eol: bytes) -> None:
    assert bytewise(deepseek_stream(eol)) == DEEPSEEK_EVENTS


@pytest.mark.parametrize("eol", EOLS)
def test_deepseek_stream_split_at_every_position(eol: bytes) -> None:
    stream = deepseek_stream(eol)
    for cut in range(len(stream) + 1):
        assert decode(stream[:cut], stream[cut:]) == DEEPSEEK_EVENTS, f"split at {cut}"


def test_deepseek_stream_events_arrive_as_soon_as_complete() -> None:
    """Each event is returned by the feed that completes it, not later."""
    stream = deepseek_stream(b"\n")
    decoder = SSEDecoder()
    seen: List[int] = []
    for i in range(len(stream)):
        if decoder.feed(stream[i : i + 1]):
            seen.append(i)
    ends = []
    pos = 0
    for data in DEEPSEEK_DATA:
        pos = stream.index(b"data: " + data.encode() + b"\n\n", pos)
        pos += len(data.encode()) + 8
        ends.append(pos - 1)
    assert seen == ends
    assert not decoder.pending


def test_iter_sse_matches_decoder() -> None:
    stream = deepseek_stream(b"\r\n")
    assert list(iter_sse(stream[i : i + 7] for i in range(0, len(stream), 7))) == DEEPSEEK_EVENTS


def test_event_json() -> None:
    assert DEEPSEEK_EVENTS[-2].json()["usage"] == USAGE
    with pytest.raises(json.JSONDecodeError):
        DEEPSEEK_EVENTS[-1].json()


# --- line endings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stream",
    [
        b"data: a\n\ndata: b\n\n",
        b"data: a\r\n\r\ndata: b\r\n\r\n",
        b"data: a\r\rdata: b\r\r",
        b"data: a\r\n\rdata: b\n\r\n",  # mixed
    ],
)
def test_line_endings(stream: bytes) -> None:
    assert decode(stream) == [E(data="a"), E(data="b")]


def test_crlf_split_between_feeds_is_one_line_ending() -> None:
    # Were the LF a second line ending, the blank line would dispatch "a" alone.
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [E(data="a\nb")]


def test_cr_at_end_of_feed_completes_the_line_at_once() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [E(data="a")]
    assert decoder.feed(b"\n") == []  # LF after the second CR: a new blank line, nothing to dispatch
    assert not decoder.pending


def test_cr_then_empty_feed_then_lf() -> None:
    assert decode(b"data: a\r", b"", b"\n", b"\n") == [E(data="a")]


def test_lone_lf_after_cr_only_swallowed_once() -> None:
    # CR LF LF: the CRLF ends the data line, the second LF is a blank line.
    assert decode(b"data: a\r", b"\n", b"\n") == [E(data="a")]


def test_lf_cr_is_two_line_endings() -> None:
    assert decode(b"data: a\n\r") == [E(data="a")]


# --- UTF-8 -----------------------------------------------------------------------------------------


def test_multibyte_characters_split_at_every_byte() -> None:
    text = "héllo 你好 🙂"
    raw = b"data: " + text.encode() + b"\n\n"
    for cut in range(len(raw) + 1):
        assert decode(raw[:cut], raw[cut:]) == [E(data=text)]
    assert bytewise(raw) == [E(data=text)]


def test_invalid_utf8_is_replaced() -> None:
    assert decode(b"data: a\xffb\xe4\n\n") == [E(data="a\ufffdb\ufffd")]


def test_utf8_in_event_and_id() -> None:
    assert decode("event: ünï\nid: ïd\ndata: x\n\n".encode()) == [E("ünï", "x", "ïd")]


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 4])
def test_leading_bom_skipped_even_when_split(cut: int) -> None:
    stream = b"\xef\xbb\xbfdata: a\n\n"
    assert decode(stream[:cut], stream[cut:]) == [E(data="a")]


def test_bom_fed_byte_by_byte() -> None:
    assert bytewise(b"\xef\xbb\xbfdata: a\n\n") == [E(data="a")]


def test_only_one_leading_bom_skipped() -> None:
    # The second BOM is part of the first line: field name "\ufeffdata", unknown, ignored.
    assert decode(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n") == []


def test_bom_later_in_stream_is_data() -> None:
    assert decode(b"data: \xef\xbb\xbfa\n\n") == [E(data="\ufeffa")]


def test_partial_bom_prefix_then_other_bytes() -> None:
    # \xef\xbb starts like a BOM but is not one: the bytes stay (replaced, as invalid UTF-8).
    assert decode(b"\xef", b"\xbbdata: a\n\ndata: b\n\n") == [E(data="b")]
    assert decode(b"\xef\xbb", b"X\n\ndata: b\n\n") == [E(data="b")]


# --- field parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "data"),
    [
        (b"data: a", "a"),
        (b"data:a", "a"),
        (b"data:  a", " a"),  # only one space removed
        (b"data: ", ""),
        (b"data:", ""),
        (b"data", ""),  # no colon: whole line is the field name, value empty
        (b"data: a: b", "a: b"),  # only the first colon splits
        (b"data:\ta", "\ta"),  # only a space is removed
        (b"data: a ", "a "),
    ],
)
def test_data_field_value(line: bytes, data: str) -> None:
    assert decode(line + b"\n\n") == [E(data=data)]


def test_multiline_data() -> None:
    assert decode(b"data: a\ndata:\ndata:  b\ndata\n\n") == [E(data="a\n\n b\n")]


def test_data_trailing_newline_removed_once() -> None:
    assert decode(b"data\ndata\n\n") == [E(data="\n")]


def test_empty_data_field_still_dispatches() -> None:
    assert decode(b"data\n\n") == [E(data="")]


def test_comments_ignored() -> None:
    assert decode(b": keep-alive\n:\n:data: x\ndata: a\n: mid\ndata: b\n\n: tail\n\n") == [E(data="a\nb")]


def test_comment_alone_is_not_pending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b": keep-alive\n\n: keep-alive\n") == []
    assert not decoder.pending


def test_field_names_are_case_sensitive_and_exact() -> None:
    assert decode(b"Data: a\n DATA: b\ndata : c\n\n") == []


def test_unknown_fields_ignored() -> None:
    assert decode(b"foo: bar\ndata: a\nbaz\n\n") == [E(data="a")]


def test_event_type() -> None:
    assert decode(b"event: ping\ndata: a\n\ndata: b\n\n") == [E("ping", "a"), E("message", "b")]


def test_empty_event_type_means_message() -> None:
    assert decode(b"event: x\nevent:\ndata: a\n\n") == [E("message", "a")]


def test_event_without_data_not_dispatched_but_resets_type() -> None:
    assert decode(b"event: ping\n\ndata: a\n\n") == [E("message", "a")]


def test_blank_lines_alone_dispatch_nothing() -> None:
    assert decode(b"\n\n\r\n\r\r\n") == []


def test_id_persists_across_events() -> None:
    stream = b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 2\n\ndata: d\n\n"
    assert decode(stream) == [E(data="a", id="1"), E(data="b", id="1"), E(data="c", id=""), E(data="d", id="2")]


def test_id_with_nul_ignored() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 1\n\nid: 2\x003\ndata: a\n\n") == [E(data="a", id="1")]
    assert decoder.last_event_id == "1"


def test_no_id_is_none() -> None:
    assert decode(b"data: a\n\n")[0].id is None


@pytest.mark.parametrize(
    ("value", "retry"),
    [
        (b"3000", 3000),
        (b"0", 0),
        (b"007", 7),
        (b"", None),
        (b"1.5", None),
        (b"-1", None),
        (b" 10", None),
        (b"10 ", None),
        (b"\xd9\xa3", None),
    ],  # last: ARABIC-INDIC DIGIT THREE, not ASCII
)
def test_retry_field(value: bytes, retry: Optional[int]) -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"retry: " + value + b"\ndata: a\n\n")
    assert events == [E(data="a", retry=retry)]
    assert decoder.retry == retry


def test_retry_belongs_to_its_event_but_persists_on_decoder() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"retry: 10\ndata: a\n\ndata: b\n\nretry: 20\n\ndata: c\n\n") == [
        E(data="a", retry=10),
        E(data="b"),
        E(data="c"),
    ]
    assert decoder.retry == 20


def test_all_fields_together() -> None:
    assert decode(b"event: e\r\nid: 7\r\nretry: 5\r\ndata: x\r\ndata: y\r\n\r\n") == [E("e", "x\ny", "7", 5)]


# --- end of stream ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stream",
    [
        b"data: a\n\ndata: b",  # cut inside a line
        b"data: a\n\ndata: b\n",  # line complete, no blank line
        b"data: a\n\ndata: b\r",
        b"data: a\n\nevent: x\n",
        b"data: a\n\nid: 5\n",
        b"data: a\n\n: keep-al",  # cut inside a comment
        b"data: a\n\n\xef",
    ],
)
def test_unterminated_event_discarded_and_pending(stream: bytes) -> None:
    decoder = SSEDecoder()
    events = decoder.feed(stream)
    assert events == [E(data="a")]
    assert decoder.pending
    assert decoder.close() == []
    assert decoder.pending  # still answers after close


@pytest.mark.parametrize("stream", [b"", b"data: a\n\n", b"data: a\r\n\r\n", b"data: a\r\r", b": x\n", b"\n\n\n"])
def test_clean_end_not_pending(stream: bytes) -> None:
    decoder = SSEDecoder()
    decoder.feed(stream)
    assert decoder.close() == []
    assert not decoder.pending


def test_iter_sse_discards_unterminated_event() -> None:
    assert list(iter_sse([b"data: a\n", b"\ndata: [DONE]\n"])) == [E(data="a")]


def test_partial_bom_at_end_is_pending() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"\xef\xbb")
    assert decoder.pending


def test_feed_after_close_raises() -> None:
    decoder = SSEDecoder()
    decoder.close()
    assert decoder.close() == []
    with pytest.raises(ValueError):
        decoder.feed(b"data: a\n\n")


# --- the event value -------------------------------------------------------------------------------


def test_event_defaults_equality_and_pickle() -> None:
    event = E()
    assert (event.event, event.data, event.id, event.retry) == ("message", "", None, None)
    made = decode(b"data: x\n\n")[0]
    assert type(made) is ServerSentEvent
    assert made == E(data="x") and made.data == "x" and made.event == "message"
    assert pickle.loads(pickle.dumps(made)) == made
    assert "data='x'" in repr(made)


# --- chunking invariance on a stream that uses every rule --------------------------------------------

MIXED = (
    b"\xef\xbb\xbf: hello\r\n"
    b"retry: 1500\r"
    b"id: 1\n"
    b"event: update\r\n"
    b"data: one\r"
    b"data:  two \xe4\xbd\xa0\n"
    b"data\r\n"
    b"\r"
    b"foo: bar\n"
    b"data: \xf0\x9f\x99\x82\r\n"
    b"\r\n"
    b"id: bad\x00\n"
    b"event:\n"
    b"data:x\r"
    b"\n"
    b"\n"
    b"data: tail"
)
MIXED_EVENTS = [E("update", "one\n two 你\n", "1", 1500), E("message", "🙂", "1"), E("message", "x", "1")]


def _splits(n: int) -> Sequence[List[int]]:
    return [[a, b] for a in range(n + 1) for b in range(a, n + 1, 3)]


def test_mixed_stream_whole_and_bytewise() -> None:
    assert decode(MIXED) == MIXED_EVENTS
    assert bytewise(MIXED) == MIXED_EVENTS


def test_mixed_stream_split_into_three_everywhere() -> None:
    for a, b in _splits(len(MIXED)):
        decoder = SSEDecoder()
        events = decoder.feed(MIXED[:a]) + decoder.feed(MIXED[a:b]) + decoder.feed(MIXED[b:])
        assert events == MIXED_EVENTS, (a, b)
        assert decoder.pending
