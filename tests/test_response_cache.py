"""The response cache: the key, what is stored and served, the stores, and bad input.

Calls go over real sockets to FakeDeepSeek (or the raw-socket server for a stream that
ends without ``[DONE]``), which counts the requests that reach it: a hit is a request that
never arrives.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deepseek_pool as dp
from deepseek_pool.cache.entries import decode_entry, encode_entry
from deepseek_pool.cache.key import canonical_json, request_key
from deepseek_pool.cache.replay import CachedStream, replay_chunks
from deepseek_pool.cache.stores import MemoryStore
from deepseek_pool.cli.commands import main
from deepseek_pool.testing import FakeDeepSeek

from .rawserver import RawServer, chunk, sse_head

KEY = "sk-response-cache-SECRET-4f1e"
URL = "https://api.deepseek.com/chat/completions"


@pytest.fixture
def fake() -> Any:
    with FakeDeepSeek(api_key=KEY) as server:
        yield server


def client_for(fake: FakeDeepSeek, cache: Any, **options: Any) -> dp.DeepSeekClient:
    return dp.DeepSeekClient(KEY, base_url=fake.base_url, cache=cache, max_retries=0, **options)


# -- the key ----------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)
bodies = st.dictionaries(st.text(min_size=1, max_size=10), json_values, min_size=1, max_size=6)


def _paths(value: Any, prefix: tuple = ()) -> List[tuple]:
    """Every place in ``value`` that holds a value (each field, each item, nested)."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append((*prefix, key))
            found.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.append((*prefix, index))
            found.extend(_paths(item, (*prefix, index)))
    return found


def _replace(body: Dict[str, Any], path: tuple, new: Any) -> Dict[str, Any]:
    changed = copy.deepcopy(body)
    holder: Any = changed
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = new
    return changed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, data=st.data())
def test_the_key_changes_with_every_field_and_value_of_the_body_nested_too(body: Dict[str, Any], data: Any) -> None:
    key = request_key(URL, body)
    path = data.draw(st.sampled_from(_paths(body)))
    holder: Any = body
    for step in path:
        holder = holder[step]
    new = data.draw(json_values.filter(lambda value: canonical_json(value) != canonical_json(holder)))
    assert request_key(URL, _replace(body, path, new)) != key, (path, holder, new)
    # A field left out is not the same request as a field sent (whatever its value).
    if len(path) == 1:
        assert request_key(URL, {k: v for k, v in body.items() if k != path[0]}) != key
    # A field added (an explicit default) changes it too.
    extra = data.draw(st.text(min_size=1, max_size=10).filter(lambda name: name not in body))
    assert request_key(URL, {**body, extra: data.draw(json_values)}) != key
    # Only the order of an object's keys does not count.
    assert request_key(URL, dict(reversed(list(body.items())))) == key


def test_the_key_tells_apart_values_that_compare_equal_in_python() -> None:
    keys = {request_key(URL, {"temperature": value}) for value in (1, 1.0, True, "1", [1], None)}
    assert len(keys) == 6
    assert request_key(URL, {"model": "m"}) != request_key(URL, {"model": "m", "temperature": 1.0})


def test_the_key_names_its_version_and_endpoint_but_no_credentials() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    key = request_key(URL, body)
    assert key.startswith("v1-") and len(key) == 3 + 64
    assert request_key("https://api.deepseek.com/beta/chat/completions", body) != key
    assert request_key("http://127.0.0.1:9/chat/completions", body) != key
    assert request_key("https://user:secret@api.deepseek.com/chat/completions", body) == key


# -- hits and misses over real sockets ---------------------------------------------------------


def test_a_repeated_chat_is_served_from_the_cache_and_never_sent(fake: FakeDeepSeek) -> None:
    with client_for(fake, "memory://") as client:
        first = client.chat("Name a colour.", temperature=0.5)
        again = client.chat("Name a colour.", temperature=0.5)
        assert fake.stats.requests == 1
        assert (first.cached, again.cached) == (False, True)
        assert again.raw == first.raw and again.request_id == first.request_id
        client.chat("Name a colour.", temperature=0.6)  # another body: a miss
        client.chat("Name a colour.")  # temperature left out: another request
        assert fake.stats.requests == 3
        assert client.cache is not None and client.cache.stats.hits == 1


def test_cache_false_neither_reads_nor_writes(fake: FakeDeepSeek) -> None:
    with client_for(fake, "memory://") as client:
        assert not client.chat("x", cache=False).cached
        assert not client.chat("x").cached  # the first one was not stored
        assert not client.chat("x", cache=False).cached  # nor read
        assert client.chat("x").cached
        assert fake.stats.requests == 3


def test_a_cached_stream_is_replayed_as_chunks_to_on_chunk_and_to_a_stream_loop(fake: FakeDeepSeek) -> None:
    with client_for(fake, "memory://") as client:
        seen: List[dp.ChatChunk] = []
        first = client.chat("Tell a story.", stream=True, on_chunk=seen.append)
        replayed: List[dp.ChatChunk] = []
        again = client.chat("Tell a story.", stream=True, on_chunk=replayed.append)
        assert again.cached and fake.stats.requests == 1
        assert "".join(c.content or "" for c in replayed) == "".join(c.content or "" for c in seen) == first.content
        assert again.content == first.content and again.finish_reason == first.finish_reason
        assert again.reasoning_content == first.reasoning_content
        with client.chat_stream("A stream.") as stream:
            text = "".join(c.content or "" for c in stream)
        with client.chat_stream("A stream.") as stream:
            assert isinstance(stream, dp.ChatStream)
            assert "".join(c.content or "" for c in stream) == text
            assert stream.completion().cached
        assert fake.stats.requests == 2


def test_replayed_chunks_fold_into_the_very_same_completion() -> None:
    raw = {
        "id": "x",
        "created": 7,
        "model": "deepseek-flash",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "reasoning_content": "think",
                    "tool_calls": [
                        {"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                "logprobs": {"content": [{"token": "Hello", "logprob": -0.1}]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    builder = dp.ChatCompletionBuilder()
    for piece in replay_chunks(raw):
        builder.add(piece)
    assert builder.build().raw == raw


def test_fim_answers_are_cached_too(fake: FakeDeepSeek) -> None:
    with client_for(fake, "memory://") as client:
        first = client.fim("def add(a, b):", "\n", max_tokens=50)
        again = client.fim("def add(a, b):", "\n", max_tokens=50)
        assert again.cached and again.text == first.text and fake.stats.requests == 1


# -- only complete answers ---------------------------------------------------------------------


def test_an_answer_bounded_by_max_tokens_is_stored_for_the_same_request(fake: FakeDeepSeek) -> None:
    with client_for(fake, "memory://") as client:
        first = client.chat("d", max_tokens=1)
        assert first.finish_reason == "length" and not first.cached
        sent = fake.stats.requests
        again = client.chat("d", max_tokens=1)
        assert again.cached and again.content == first.content and fake.stats.requests == sent
        assert not client.chat("d", max_tokens=2).cached  # another bound is another request


def test_errors_cut_streams_and_cut_answers_are_never_stored(fake: FakeDeepSeek) -> None:
    with client_for(fake, "memory://") as client:
        fake.script("500", "insufficient", "cut:2")
        with pytest.raises(dp.InternalServerError):
            client.chat("a")
        with pytest.raises(dp.IncompleteResponseError):
            client.chat("b")
        with pytest.raises(dp.APIConnectionError):
            client.chat("c", stream=True)
        with client.chat_stream("e") as stream:  # left early: not read to [DONE]
            next(iter(stream))
        assert client.cache is not None and client.cache.stats.stores == 0
        sent = fake.stats.requests
        assert not client.chat("a").cached
        assert not client.chat("b").cached
        assert not client.chat("c", stream=True).cached
        with client.chat_stream("e") as stream:
            assert not isinstance(stream, CachedStream)
            list(stream)
        assert fake.stats.requests == sent + 4


def _stream_without_done(conn: Any, request: bytes) -> bool:
    event = {"id": "r", "model": "m", "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}
    body = chunk(b"data: " + json.dumps(event).encode() + b"\n\n") + b"0\r\n\r\n"
    conn.sendall(sse_head(headers={"Connection": "close"}) + body)
    return True


def test_a_stream_that_ends_without_done_is_answered_but_not_stored() -> None:
    server = RawServer(_stream_without_done)
    with server as (host, port):
        client = dp.DeepSeekClient(KEY, base_url=f"http://{host}:{port}", cache="memory://", max_retries=0)
        assert client.chat("x", stream=True).content == "ok"
        assert not client.chat("x", stream=True).cached
        assert server.requests == 2
        client.close()


# -- the pool: a hit takes no slot, no spend, and is counted ----------------------------------


def test_a_pool_serves_hits_before_its_limits_at_no_cost(fake: FakeDeepSeek, tmp_path: Path) -> None:
    requests: List[Any] = [f"question {i}" for i in range(6)] + [{"prompt": "streamed", "stream": True}]
    chunks: List[str] = []
    with (
        client_for(fake, None) as client,
        dp.DeepSeekPool(
            client,
            max_workers=4,
            max_cost=1.0,
            cache=f"sqlite:///{tmp_path}/c.db",
            on_chunk=lambda result, piece: chunks.append(piece.content or ""),
        ) as pool,
    ):
        cold = pool.map(requests)
        spent, started, usage = pool.spend.spent, pool.limiter.stats.started, pool.stats.usage  # type: ignore[union-attr]
        chunks_cold = "".join(chunks)
        warm = pool.map(requests)
        assert fake.stats.requests == len(requests)
        assert [r.cached for r in cold] == [False] * 7 and [r.cached for r in warm] == [True] * 7
        assert [r.completion.content for r in warm] == [r.completion.content for r in cold]  # type: ignore[union-attr]
        assert pool.spend.spent == spent and [r.cost for r in warm] == [0.0] * 7  # type: ignore[union-attr]
        assert pool.limiter.stats.started == started  # no slot taken
        assert pool.stats.cached == 7 and pool.stats.usage == usage  # hits add no billed tokens
        assert "".join(chunks) == chunks_cold * 2  # the streamed one was replayed to on_chunk
        assert pool.submit("question 1").result().cached
        assert not pool.submit("question 1", cache=False).result().cached
        assert not pool.map([{"prompt": "question 2", "cache": False}])[0].cached
        assert fake.stats.requests == len(requests) + 2


def test_a_warmed_rerun_that_the_cache_answers_sends_no_warm_up(fake: FakeDeepSeek) -> None:
    from deepseek_pool.pool.warming import WarmPrefix

    system = {"role": "system", "content": "Grade by the rubric: clarity, structure, evidence. " * 100}
    requests = [{"messages": [system, {"role": "user", "content": f"Essay {n}"}]} for n in range(6)]
    with (
        client_for(fake, "memory://") as client,
        dp.DeepSeekPool(client, max_workers=3, warm_prefix=WarmPrefix(wait=0)) as pool,
    ):
        assert not any(r.cached for r in pool.map(requests))
        assert fake.stats.requests == 6 + 2  # the two warm-ups, then the batch
        assert all(r.cached for r in pool.map(requests))
        assert fake.stats.requests == 8  # no warm-up for answers the cache holds
        fresh = {"messages": [system, {"role": "user", "content": "A new essay"}]}
        assert [r.cached for r in pool.map([fresh, *requests])] == [False] + [True] * 6
        assert fake.stats.requests == 8 + 2 + 1  # one not cached: warmed, then sent


def test_a_pool_uses_its_clients_cache_unless_told_otherwise(fake: FakeDeepSeek) -> None:
    with client_for(fake, "memory://") as client:
        client.chat("shared")
        with dp.DeepSeekPool(client, max_workers=2) as pool:
            assert pool.submit("shared").result().cached
        with dp.DeepSeekPool(client, max_workers=2, cache=False) as pool:
            assert not pool.submit("shared").result().cached
        assert fake.stats.requests == 2


# -- the batch command ------------------------------------------------------------------------


def test_a_rerun_of_a_finished_batch_with_cache_sends_nothing_and_costs_nothing(
    fake: FakeDeepSeek, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEEPSEEK_API_KEY", KEY)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"custom_id": f"c{i}", "prompt": f"question {i}"}) + "\n" for i in range(20)))
    cache = f"sqlite:///{tmp_path}/cache.db?ttl=3600"
    base = ["run", str(inp), "--base-url", fake.base_url, "--cache", cache, "--max-cost", "1"]
    assert main([*base, "-o", str(tmp_path / "first.jsonl"), "-q"]) == 0
    assert fake.stats.requests == 20
    summary = tmp_path / "summary.json"
    assert main([*base, "-o", str(tmp_path / "second.jsonl"), "--json-summary", str(summary)]) == 0
    assert fake.stats.requests == 20  # nothing sent
    err = capsys.readouterr().err
    assert "20 answers from the response cache (not sent, $0)" in err
    data = json.loads(summary.read_text())
    assert data["answered_from_cache"] == 20 and data["cost_usd"] == 0 and data["spent_usd"] == 0
    first = {line["custom_id"]: line for line in map(json.loads, (tmp_path / "first.jsonl").read_text().splitlines())}
    for line in map(json.loads, (tmp_path / "second.jsonl").read_text().splitlines()):
        assert line["call"]["cached"] is True and line["call"]["attempts"] == 0 and line["cost_usd"] == 0
        assert line["response"]["body"] == first[line["custom_id"]]["response"]["body"]
    # --clear-cache empties it first: everything is sent again.
    assert main([*base, "-o", str(tmp_path / "third.jsonl"), "--clear-cache", "-q"]) == 0
    assert fake.stats.requests == 40


@pytest.mark.parametrize(
    "uri, says",
    [
        ("bogus://x", "no response cache store for bogus://"),
        ("not a uri", "a response cache is a URI"),
        ("sqlite:////nonexistent-dir/x/cache.db", "cannot use 'sqlite:////nonexistent-dir/x/cache.db'"),
        ("memory://?ttl=soon", "ttl in 'memory://' must be a number of seconds"),
        ("memory://?ttl=-1", "ttl must be a number of seconds > 0"),
    ],
)
def test_a_bad_cache_is_refused_before_anything_is_sent(
    uri: str, says: str, fake: FakeDeepSeek, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    with pytest.raises(dp.ConfigurationError, match=says.replace("(", r"\(").replace("?", r"\?")):
        dp.ResponseCache(uri)
    with pytest.raises(dp.ConfigurationError):
        dp.DeepSeekClient(KEY, base_url=fake.base_url, cache=uri)
    monkeypatch.setenv("DEEPSEEK_API_KEY", KEY)
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "x"}\n')
    assert main(["run", str(inp), "-o", str(tmp_path / "o.jsonl"), "--base-url", fake.base_url, "--cache", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deepseek-pool run: error: --cache: ") and says in err and len(err.splitlines()) == 1
    assert fake.stats.requests == 0


def test_an_unreadable_sqlite_store_is_refused_naming_it(tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-db.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(dp.ConfigurationError, match=f"cannot use 'sqlite:///{garbage}' as a response cache"):
        dp.ResponseCache(f"sqlite:///{garbage}")
    if os.geteuid() != 0:  # root writes anywhere
        good = tmp_path / "ro.db"
        dp.ResponseCache(f"sqlite:///{good}").close()
        good.chmod(0o444)
        with pytest.raises(dp.ConfigurationError, match="as a response cache"):
            dp.ResponseCache(f"sqlite:///{good}")


# -- ttl, corruption, secrets ------------------------------------------------------------------


def test_entries_expire_after_the_ttl_on_the_injected_clock(fake: FakeDeepSeek) -> None:
    now = [1_000_000.0]
    cache = dp.ResponseCache(MemoryStore(), ttl=60, clock=lambda: now[0])
    with client_for(fake, cache) as client:
        client.chat("q")
        now[0] += 59.9
        assert client.chat("q").cached
        now[0] += 0.1
        assert not client.chat("q").cached  # 60 s old: sent again, and stored again
        now[0] += 30
        assert client.chat("q").cached
        assert fake.stats.requests == 2


def _rows(path: Path) -> Dict[str, bytes]:
    with contextlib.closing(sqlite3.connect(path)) as db:  # a Connection's own with-block only commits
        return dict(db.execute("SELECT key, value FROM deepseek_response").fetchall())


def _set_row(path: Path, key: str, value: bytes) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE deepseek_response SET value = ? WHERE key = ?", (value, key))
    db.close()


@pytest.mark.parametrize(
    "damage",
    ["truncated", "answer changed", "under another key", "not json", "an incomplete answer", "empty"],
)
def test_a_corrupt_entry_is_a_miss_with_a_warning_never_a_wrong_answer(
    damage: str, fake: FakeDeepSeek, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.db"
    with client_for(fake, f"sqlite:///{path}") as client:
        right = client.chat("the question")
        ((key, value),) = _rows(path).items()
        if damage == "truncated":
            value = value[: len(value) // 2]
        elif damage == "answer changed":
            value = value.replace(right.content[:5].encode(), b"WRONG", 1)
        elif damage == "under another key":
            other = client.chat("another question")
            value = next(stored for name, stored in _rows(path).items() if name != key)
            assert other.content.encode() in value
        elif damage == "not json":
            value = b"\xff\xfe garbage \n {]"
        elif damage == "an incomplete answer":
            raw = json.loads(value.partition(b"\n")[2])
            raw["choices"][0]["finish_reason"] = "insufficient_system_resource"
            value = encode_entry(key, raw, None, 0.0, False)
        else:
            value = b""
        _set_row(path, key, value)
        sent = fake.stats.requests
        with caplog.at_level(logging.WARNING, logger="deepseek_pool.cache"):
            again = client.chat("the question")
        assert not again.cached and again.content == right.content and fake.stats.requests == sent + 1
        assert any("corrupt" in record.getMessage() for record in caplog.records)
        assert client.cache is not None and client.cache.stats.corrupt == 1
        assert client.chat("the question").cached  # the call stored a good entry in its place


def test_decode_refuses_what_it_cannot_trust() -> None:
    raw = {"id": "x", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
    good = encode_entry("k", raw, "req", 5.0, True)
    assert decode_entry("k", good).raw == raw
    for bad_key, data in [("other", good), ("k", good[:-1]), ("k", good + b" "), ("k", 42)]:
        with pytest.raises(ValueError):
            decode_entry(bad_key, data)


def test_the_api_key_never_reaches_the_store(fake: FakeDeepSeek, tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with client_for(fake, f"sqlite:///{path}") as client:
        client.chat("q")
        client.chat("q", stream=True)
        with client.chat_stream("r") as stream:
            list(stream)
    for name in os.listdir(tmp_path):
        assert KEY.encode() not in (tmp_path / name).read_bytes()
    assert all(KEY.encode() not in key.encode() + value for key, value in _rows(path).items())


# -- many threads, many processes -------------------------------------------------------------


def test_many_threads_asking_the_same_question_get_right_answers_and_one_whole_entry(
    fake: FakeDeepSeek, tmp_path: Path
) -> None:
    """Concurrent misses of one key are not coalesced: each is sent, each stores, none corrupts."""
    path = tmp_path / "c.db"
    answers: List[str] = []
    errors: List[BaseException] = []
    with client_for(fake, f"sqlite:///{path}", pool_maxsize=32) as client:
        expected = dp.DeepSeekClient(KEY, base_url=fake.base_url).chat("same", cache=False).content
        barrier = threading.Barrier(32, timeout=10)

        def ask() -> None:
            try:
                barrier.wait()
                answers.append(client.chat("same").content)
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=ask) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors and answers == [expected] * 32
        assert client.cache is not None and client.cache.stats.corrupt == 0
        assert client.chat("same").cached
    ((key, value),) = _rows(path).items()
    assert decode_entry(key, value).raw["choices"][0]["message"]["content"] == expected
    # A second cache on the same file (another process's, say) reads the same entry.
    other = dp.ResponseCache(f"sqlite:///{path}")
    assert other.get(key) is not None
    assert other.clear() == 1 and other.get(key) is None
    other.close()


_WORKER = """
import sys
import deepseek_pool as dp
key, base_url, uri = sys.argv[1:4]
with dp.DeepSeekClient(key, base_url=base_url, cache=uri, max_retries=0) as client:
    for round in range(3):
        for n in range(8):
            print(client.chat(f"shared question {n}").content.replace("\\n", " "))
"""


def test_processes_sharing_one_sqlite_file_each_get_right_answers(fake: FakeDeepSeek, tmp_path: Path) -> None:
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/shared.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [sys.executable, "-c", _WORKER, KEY, fake.base_url, uri]
    children = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [child.communicate(timeout=60)[0].splitlines() for child in children]
    assert [child.returncode for child in children] == [0] * 4
    with dp.DeepSeekClient(KEY, base_url=fake.base_url) as plain:
        expected = [plain.chat(f"shared question {n}").content.replace("\n", " ") for n in range(8)]
    for lines in outputs:
        assert lines == expected * 3
    assert fake.stats.requests - 8 <= 4 * 8  # each sent at most its first round (96 without the cache)
    with dp.ResponseCache(uri) as cache:
        assert cache.clear() == 8


# -- redis --------------------------------------------------------------------------------------


def test_a_redis_cache_serves_hits_expires_with_redis_and_clears(
    fake: FakeDeepSeek, redis_url: str, redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    with client_for(fake, redis_url + "?ttl=30&prefix=test-cache:") as client:
        client.chat("q")
        assert client.chat("q").cached and fake.stats.requests == 1
        raw = redis.Redis.from_url(redis_url)
        keys = raw.keys("test-cache:*")
        assert len(keys) == 1 and 0 < raw.ttl(keys[0]) <= 30
        assert KEY.encode() not in raw.get(keys[0])
        raw.set(keys[0], b"garbage")
        with caplog.at_level(logging.WARNING, logger="deepseek_pool.cache"):
            assert not client.chat("q").cached
        assert "corrupt" in caplog.text
        assert client.chat("q").cached
        raw.set("unrelated", b"stays")
        assert client.cache is not None and client.cache.clear() == 1
        assert raw.get("unrelated") == b"stays" and not raw.keys("test-cache:*")
        # Redis gone mid-run: calls go on without the cache (a miss and one warning), never fail.
        redis_server.stop()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="deepseek_pool.cache"):
            assert not client.chat("q").cached
            assert not client.chat("q").cached
        assert sum("cannot" in r.getMessage() for r in caplog.records) == 1
        raw.close()


def test_an_unreachable_redis_is_refused_up_front(fake: FakeDeepSeek) -> None:
    pytest.importorskip("redis")
    from .redisserver import free_port

    uri = f"redis://:hunter2@127.0.0.1:{free_port()}/0?socket_connect_timeout=0.5"
    with pytest.raises(dp.ConfigurationError, match="as a response cache") as refused:
        dp.ResponseCache(uri)
    assert "hunter2" not in str(refused.value) and "***" in str(refused.value)


def test_a_cache_made_before_a_fork_serves_and_stores_in_the_child(fake: FakeDeepSeek, tmp_path: Path) -> None:
    from .test_processes import run_in_fork

    with client_for(fake, f"sqlite:///{tmp_path}/forked.db") as client:
        client.chat("before the fork")  # the parent's connection is open

        def child() -> bool:
            hit = client.chat("before the fork").cached
            client.chat("in the child")
            return hit and client.chat("in the child").cached

        assert run_in_fork(child) == 0
        assert client.chat("in the child").cached  # the child's answer is in the shared file
        assert fake.stats.requests == 2
