"""OpenTelemetry, native and optional: spans and metrics with the real SDK, over real sockets.

Each test gives its client its own providers (``dp.Telemetry(tracer_provider=...,
meter_provider=...)``) with in-memory exporters, so no test sets OpenTelemetry's global
providers (set once per process); the automatic mode, which reads the globals, and the
promise that nothing is imported without OpenTelemetry run in child processes.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
from typing import Any, Dict, Iterator, List, Tuple

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek

KEY = "sk-telemetry-secret-0123456789"
WAIT = 30


class Otel:
    """A tracer and a meter provider of the real SDK, exporting to memory."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metrics])

    def telemetry(self, **options: Any) -> dp.Telemetry:
        return dp.Telemetry(tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **options)

    def finished(self, name_prefix: str = "chat") -> List[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name.startswith(name_prefix)]

    def points(self, name: str) -> List[Tuple[Dict[str, Any], Any]]:
        """(attributes, value or histogram) of every data point of metric ``name``."""
        found = []
        data = self.metrics.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend((dict(point.attributes), point) for point in metric.data.data_points)
        return found

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def otel() -> Iterator[Otel]:
    sdk = Otel()
    yield sdk
    sdk.close()


@pytest.fixture
def fake() -> Iterator[FakeDeepSeek]:
    with FakeDeepSeek() as server:
        yield server


def port_of(fake: FakeDeepSeek) -> int:
    return int(fake.base_url.rsplit(":", 1)[1].split("/")[0])


def client_for(fake: FakeDeepSeek, otel: Otel, retries: int = 0, **options: Any) -> dp.DeepSeekClient:
    retry = dp.DeepSeekRetry(retries, backoff_factor=0.005, backoff_jitter=0, max_retry_after=0.05)
    return dp.DeepSeekClient(
        api_key=KEY, base_url=fake.base_url, max_retries=retry, telemetry=otel.telemetry(**options)
    )


# -- the span's parent: the caller's span, through every way a pool runs a call ----------------


@pytest.mark.parametrize("how", ["submit", "map", "as_completed", "shared_reader_streams"])
def test_the_callers_span_is_the_parent_of_every_calls_span(fake: FakeDeepSeek, otel: Otel, how: str) -> None:
    client = client_for(fake, otel)
    tracer = otel.tracer_provider.get_tracer("caller")
    prompts = [f"q{i}" for i in range(6)]
    with dp.DeepSeekPool(client, max_workers=3) as pool, tracer.start_as_current_span("request") as parent:
        if how == "submit":
            for future in [pool.submit(prompt) for prompt in prompts]:
                future.result(timeout=WAIT)
        elif how == "map":
            assert all(result.ok for result in pool.map(prompts))
        elif how == "as_completed":
            assert all(result.ok for result in pool.as_completed(prompts))
        else:  # streamed, nobody watches the chunks: the shared reader thread reads the bodies
            results = pool.map([{"messages": prompt, "stream": True} for prompt in prompts])
            assert all(result.ok for result in results)
    client.close()
    spans = otel.finished()
    assert len(spans) == len(prompts)
    parent_context = parent.get_span_context()
    for span in spans:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id == parent_context.span_id
        assert span.context.trace_id == parent_context.trace_id
    if how == "shared_reader_streams":
        assert all(span.attributes["gen_ai.request.stream"] is True for span in spans)
        assert all(span.attributes["gen_ai.response.time_to_first_chunk"] > 0 for span in spans)


def test_a_direct_call_in_a_thread_without_a_span_is_a_root(fake: FakeDeepSeek, otel: Otel) -> None:
    client = client_for(fake, otel)
    client.chat("hi")
    client.close()
    (span,) = otel.finished()
    assert span.parent is None


# -- what a span says ------------------------------------------------------------------------


def test_a_chat_span_has_the_conventions_attributes(otel: Otel) -> None:
    fake = FakeDeepSeek(cache_build_delay=0.0, cache_min_tokens=1, cache_unit_tokens=1).start()
    client = client_for(fake, otel)
    answer = client.chat(
        "Explain caching as json",
        model="deepseek-reasoner",  # an alias: DeepSeek answers with the model it rewrote it to
        max_tokens=200,
        temperature=0.4,
        top_p=0.9,
        stop=["\n\n"],
        response_format={"type": "json_object"},
    )
    again = client.chat("Explain caching as json", model="deepseek-reasoner", max_tokens=200)  # a prefix cache hit
    client.close()
    fake.stop()
    first, second = otel.finished()
    attributes = first.attributes
    assert first.name == "chat deepseek-reasoner" and first.kind is SpanKind.CLIENT
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "deepseek"
    assert attributes["gen_ai.request.model"] == "deepseek-reasoner"
    assert attributes["gen_ai.response.model"] == answer.model == "deepseek-flash"
    assert attributes["gen_ai.response.id"] == answer.id
    assert attributes["server.address"] == "127.0.0.1" and attributes["server.port"] == port_of(fake)
    assert attributes["gen_ai.request.max_tokens"] == 200
    assert attributes["gen_ai.request.temperature"] == 0.4 and attributes["gen_ai.request.top_p"] == 0.9
    assert list(attributes["gen_ai.request.stop_sequences"]) == ["\n\n"]
    assert attributes["gen_ai.output.type"] == "json"
    assert list(attributes["gen_ai.response.finish_reasons"]) == [answer.finish_reason]
    usage = answer.usage
    assert usage is not None and usage.reasoning_tokens > 0
    assert attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert attributes["gen_ai.usage.reasoning.output_tokens"] == usage.reasoning_tokens
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == usage.prompt_cache_hit_tokens
    assert again.usage is not None and again.usage.prompt_cache_hit_tokens > 0
    assert second.attributes["gen_ai.usage.cache_read.input_tokens"] == again.usage.prompt_cache_hit_tokens
    assert "gen_ai.request.stream" not in attributes and "gen_ai.response.time_to_first_chunk" not in attributes
    assert first.status.status_code is StatusCode.UNSET


def test_fim_is_a_text_completion_span(fake: FakeDeepSeek, otel: Otel) -> None:
    client = client_for(fake, otel)
    client.fim("def add(a, b):", "    return c", max_tokens=30)
    client.models()  # not a generation: no span
    client.close()
    (span,) = otel.finished("")
    assert span.name == f"text_completion {client.model}"
    assert span.attributes["gen_ai.operation.name"] == "text_completion"


def test_retries_are_one_span_with_an_event_per_retry(fake: FakeDeepSeek, otel: Otel) -> None:
    fake.script("503", "429:0.01", "ok")
    client = client_for(fake, otel, retries=3)
    client.chat("flaky")
    client.close()
    (span,) = otel.finished()
    retries = [event for event in span.events if event.name == "deepseek_pool.retry"]
    assert [event.attributes["http.response.status_code"] for event in retries] == [503, 429]
    assert [event.attributes["deepseek_pool.attempt"] for event in retries] == [1, 2]
    assert span.attributes["deepseek_pool.retries"] == 2
    assert span.status.status_code is StatusCode.UNSET and "error.type" not in span.attributes
    [(_, retried)] = [(attrs, point) for attrs, point in otel.points("deepseek_pool.retries")]
    assert retried.value == 2
    [(_, limited)] = otel.points("deepseek_pool.rate_limited")
    assert limited.value == 1


def test_a_span_covers_the_wait_before_a_retry(fake: FakeDeepSeek, otel: Otel) -> None:
    fake.script("429:0.3", "ok")
    retry = dp.DeepSeekRetry(1, backoff_factor=0.005, backoff_jitter=0, max_retry_after=1.0)
    client = dp.DeepSeekClient(api_key=KEY, base_url=fake.base_url, max_retries=retry, telemetry=otel.telemetry())
    client.chat("wait for me")
    client.close()
    (span,) = otel.finished()
    assert span.end_time is not None and span.start_time is not None
    assert (span.end_time - span.start_time) / 1e9 >= 0.3


def test_a_pool_calls_span_covers_its_wait_at_the_limiter(otel: Otel) -> None:
    with FakeDeepSeek(latency=0.3) as fake:
        client = client_for(fake, otel)
        with dp.DeepSeekPool(client, max_workers=2, limiter=dp.Limiter(max_in_flight=1)) as pool:
            assert all(result.ok for result in pool.map(["first", "second"]))
        client.close()
    first, second = sorted(otel.finished(), key=lambda span: span.end_time or 0)
    assert first.start_time is not None and second.start_time is not None and second.end_time is not None
    # Both began together; the second waited for the first's slot, inside its own span.
    assert abs(second.start_time - first.start_time) / 1e9 < 0.2
    assert (second.end_time - second.start_time) / 1e9 >= 0.55


def test_a_direct_calls_span_covers_its_wait_for_a_slot(otel: Otel) -> None:
    limiter = dp.Limiter(max_in_flight=1)
    with FakeDeepSeek(latency=0.3) as fake:
        client = dp.DeepSeekClient(api_key=KEY, base_url=fake.base_url, limiter=limiter, telemetry=otel.telemetry())
        permit = limiter.acquire()  # another caller holds the only slot for 0.3 s
        timer = threading.Timer(0.3, limiter.release, [permit])
        timer.start()
        client.chat("waits for the slot")
        timer.join(WAIT)
        client.close()
    (span,) = otel.finished()
    assert span.end_time is not None and span.start_time is not None
    assert (span.end_time - span.start_time) / 1e9 >= 0.55


def test_a_failed_call_has_error_type_and_status(fake: FakeDeepSeek, otel: Otel) -> None:
    fake.script("429")
    client = client_for(fake, otel)
    with pytest.raises(dp.RateLimitError):
        client.chat("refused")
    client.close()
    (span,) = otel.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "RateLimitError"
    assert span.attributes["http.response.status_code"] == 429
    [(attributes, point)] = otel.points("gen_ai.client.operation.duration")
    assert attributes["error.type"] == "RateLimitError" and point.count == 1
    [(_, limited)] = otel.points("deepseek_pool.rate_limited")
    assert limited.value == 1


def test_the_api_key_is_never_in_a_span(otel: Otel) -> None:
    with FakeDeepSeek(api_key="sk-the-right-one") as fake:  # our key is refused: a 401 that names it?
        client = client_for(fake, otel, capture_content=True)
        with pytest.raises(dp.AuthenticationError):
            client.chat(f"my key is not {KEY[:5]}")
        client.close()
    (span,) = otel.finished()
    everything = json.dumps(
        [dict(span.attributes), [(event.name, dict(event.attributes or {})) for event in span.events]], default=str
    )
    everything += str(span.status.description) + span.name
    assert KEY not in everything and KEY[-12:] not in everything
    assert span.attributes["error.type"] == "AuthenticationError"


# -- streams ---------------------------------------------------------------------------------


def test_a_stream_read_to_its_end_ends_its_span_then(fake: FakeDeepSeek, otel: Otel) -> None:
    client = client_for(fake, otel)
    with client.chat_stream("count", stream_options={"include_usage": True}) as stream:
        next(stream)
        assert otel.finished() == []  # the span lives as long as the stream
        text = "".join(chunk.content or "" for chunk in stream)
        assert text
    client.close()
    (span,) = otel.finished()
    attributes = span.attributes
    assert attributes["gen_ai.request.stream"] is True
    assert list(attributes["gen_ai.response.finish_reasons"]) == ["stop"]
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert 0 < attributes["gen_ai.response.time_to_first_chunk"] < (span.end_time - span.start_time) / 1e9
    assert "deepseek_pool.stream.ended" not in attributes
    [(_, first_chunk)] = otel.points("gen_ai.client.operation.time_to_first_chunk")
    assert first_chunk.count == 1


def test_an_abandoned_stream_ends_its_span(fake: FakeDeepSeek, otel: Otel) -> None:
    client = client_for(fake, otel)
    stream = client.chat_stream("walk away")
    next(stream)
    del stream  # never closed, never read to the end
    gc.collect()
    (span,) = otel.finished()
    assert span.attributes["deepseek_pool.stream.ended"] == "abandoned"
    assert list(span.attributes["gen_ai.response.finish_reasons"]) == ["error"]
    client.close()


def test_a_stream_closed_early_ends_its_span(fake: FakeDeepSeek, otel: Otel) -> None:
    client = client_for(fake, otel)
    with client.chat_stream("just the start") as stream:
        next(stream)
    (span,) = otel.finished()
    assert span.attributes["deepseek_pool.stream.ended"] == "closed"
    assert list(span.attributes["gen_ai.response.finish_reasons"]) == ["error"]
    assert span.status.status_code is StatusCode.UNSET  # the caller's choice, not a failure
    client.close()


def test_a_stream_cut_short_is_an_error_with_finish_reason_error(fake: FakeDeepSeek, otel: Otel) -> None:
    fake.script("cut:3")
    client = client_for(fake, otel)
    with pytest.raises(dp.APIConnectionError), client.chat_stream("cut me") as stream:
        for _ in stream:
            pass
    (span,) = otel.finished()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "APIConnectionError"
    assert list(span.attributes["gen_ai.response.finish_reasons"]) == ["error"]
    assert span.attributes["deepseek_pool.stream.ended"] == "broken"
    client.close()


def test_an_aggregated_stream_cut_short_says_error_and_one_refused_says_no_finish_reason(
    fake: FakeDeepSeek, otel: Otel
) -> None:
    client = client_for(fake, otel)
    fake.script("cut:3")
    with pytest.raises(dp.APIConnectionError):
        client.chat("cut me", stream=True)
    fake.script("429")
    with pytest.raises(dp.RateLimitError):
        client.chat("refused", stream=True)
    client.close()
    cut, refused = otel.finished()
    assert list(cut.attributes["gen_ai.response.finish_reasons"]) == ["error"]
    assert cut.attributes["error.type"] == "APIConnectionError"
    assert "gen_ai.response.finish_reasons" not in refused.attributes  # no stream ever began
    assert refused.attributes["error.type"] == "RateLimitError"


# -- content: off unless OpenTelemetry's own switch says so -------------------------------------


CONTENT = ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions")


def test_content_is_not_captured_by_default(fake: FakeDeepSeek, otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    client = client_for(fake, otel)
    answer = client.chat([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "private words"}])
    client.close()
    (span,) = otel.finished()
    assert not any(name in span.attributes for name in CONTENT)
    assert "private words" not in json.dumps(dict(span.attributes), default=str)
    assert answer.content not in json.dumps(dict(span.attributes), default=str)


@pytest.mark.parametrize("value", ["SPAN_ONLY", "span_and_event", "true"])
def test_content_is_captured_with_opentelemetrys_switch(
    fake: FakeDeepSeek, otel: Otel, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", value)
    client = client_for(fake, otel)
    answer = client.chat([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "private words"}])
    client.close()
    (span,) = otel.finished()
    assert json.loads(span.attributes["gen_ai.system_instructions"]) == [{"type": "text", "content": "Be terse."}]
    assert json.loads(span.attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "private words"}]}
    ]
    [output] = json.loads(span.attributes["gen_ai.output.messages"])
    assert output["role"] == "assistant" and output["finish_reason"] == "stop"
    assert {"type": "text", "content": answer.content} in output["parts"]


def test_no_content_with_the_switch_set_to_no_content(
    fake: FakeDeepSeek, otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "NO_CONTENT")
    client = client_for(fake, otel)
    client.chat("private words")
    client.close()
    (span,) = otel.finished()
    assert not any(name in span.attributes for name in CONTENT)


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_previous_names_by_default(fake: FakeDeepSeek, otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    client = client_for(fake, otel)
    answers = [client.chat(f"q{i}", model="deepseek-flash") for i in range(3)]
    client.close()
    [(attributes, duration)] = otel.points("gen_ai.client.operation.duration")
    assert duration.count == 3
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "deepseek",
        "gen_ai.request.model": "deepseek-flash",
        "gen_ai.response.model": "deepseek-flash",
        "server.address": "127.0.0.1",
        "server.port": port_of(fake),
    }
    tokens = {attrs["gen_ai.token.type"]: point for attrs, point in otel.points("gen_ai.client.token.usage")}
    assert tokens["input"].sum == sum(answer.usage.prompt_tokens for answer in answers if answer.usage)
    assert tokens["output"].sum == sum(answer.usage.completion_tokens for answer in answers if answer.usage)
    [(_, spend)] = otel.points("deepseek_pool.spend")
    assert spend.value > 0
    assert otel.points("gen_ai.client.inference.duration") == []
    (span, *_) = otel.finished()
    assert span.attributes["gen_ai.system"] == "deepseek"  # the deprecated name, for older backends


def test_metrics_new_names_with_the_stability_opt_in(
    fake: FakeDeepSeek, otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http,gen_ai_latest_experimental")
    client = client_for(fake, otel)
    answer = client.chat("q", model="deepseek-reasoner")
    fake.script("500")
    with pytest.raises(dp.InternalServerError):
        client.chat("fails")
    with client.chat_stream("s") as stream:
        for _ in stream:
            pass
    client.close()
    assert otel.points("gen_ai.client.operation.duration") == [] and otel.points("gen_ai.client.token.usage") == []
    durations = otel.points("gen_ai.client.inference.duration")
    assert sum(point.count for _, point in durations) == 3
    assert otel.points("gen_ai.client.inference.time_to_first_chunk")
    assert answer.usage is not None
    by_modality = {
        attrs["gen_ai.token.modality"]: point.value
        for attrs, point in otel.points("gen_ai.client.inference.usage.reasoning.output_tokens")
        if attrs["gen_ai.request.model"] == "deepseek-reasoner" or attrs["gen_ai.token.modality"] == "unknown"
    }
    assert by_modality == {"text": answer.usage.reasoning_tokens, "unknown": 0}  # failures count 0, modality unknown
    assert otel.points("gen_ai.client.inference.usage.cache_read.input_tokens")
    assert otel.points("gen_ai.client.inference.operation.input_tokens")
    spans = otel.finished()
    assert all("gen_ai.system" not in span.attributes for span in spans)


def test_the_pools_limiter_is_reported(fake: FakeDeepSeek, otel: Otel) -> None:
    client = client_for(fake, otel)
    limiter = dp.Limiter(max_in_flight=4, name="acme")
    with dp.DeepSeekPool(client, max_workers=4, limiter=limiter) as pool:
        assert all(result.ok for result in pool.map([f"q{i}" for i in range(8)]))
        limiter.cool_down(0.01)
    client.close()
    in_flight = otel.points("deepseek_pool.limiter.in_flight")
    assert [(attrs, point.value) for attrs, point in in_flight] == [({"deepseek_pool.limiter.name": "acme"}, 0)]
    [(_, cap)] = otel.points("deepseek_pool.limiter.cap")
    assert cap.value == 4
    [(_, cool_downs)] = otel.points("deepseek_pool.limiter.cool_downs")
    assert cool_downs.value == 1
    assert otel.points("deepseek_pool.limiter.waiting")


def test_instruments_are_created_once(fake: FakeDeepSeek, otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    telemetry = otel.telemetry()
    made: List[str] = []
    meter = type(otel.meter_provider.get_meter("x"))
    create = meter.create_histogram

    def counting(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        made.append(name)
        return create(self, name, *args, **kwargs)

    monkeypatch.setattr(meter, "create_histogram", counting)
    client = dp.DeepSeekClient(api_key=KEY, base_url=fake.base_url, telemetry=telemetry)
    for i in range(3):
        client.chat(f"q{i}")
    client.close()
    assert made == []  # the telemetry made its instruments when it was made, never per call


# -- switched on and off ---------------------------------------------------------------------


def test_telemetry_false_records_nothing(fake: FakeDeepSeek) -> None:
    client = dp.DeepSeekClient(api_key=KEY, base_url=fake.base_url, telemetry=False)
    assert client.telemetry is None
    client.chat("hi")
    client.close()


def test_a_bad_telemetry_value_is_refused() -> None:
    with pytest.raises(dp.ConfigurationError, match="telemetry"):
        dp.DeepSeekClient(api_key=KEY, telemetry="yes")  # type: ignore[arg-type]


def _child(code: str, fake: FakeDeepSeek) -> Dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["FAKE_URL"] = fake.base_url
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_nothing_is_imported_from_opentelemetry_unless_it_is_configured(fake: FakeDeepSeek) -> None:
    seen = _child(
        """
        import json, os, sys
        import deepseek_pool as dp
        client = dp.DeepSeekClient(api_key="sk-x", base_url=os.environ["FAKE_URL"])
        with dp.DeepSeekPool(client, max_workers=2) as pool:
            ok = all(r.ok for r in pool.map(["a", {"messages": "b", "stream": True}]))
        with client.chat_stream("c") as stream:
            list(stream)
        print(json.dumps({"ok": ok, "imported": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
                          "ours": "deepseek_pool.telemetry.otel" in sys.modules}))
        """,
        fake,
    )
    assert seen == {"ok": True, "imported": [], "ours": False}


def test_automatic_mode_waits_for_a_configured_provider(fake: FakeDeepSeek) -> None:
    seen = _child(
        """
        import json, os
        from opentelemetry import trace
        import deepseek_pool as dp
        client = dp.DeepSeekClient(api_key="sk-x", base_url=os.environ["FAKE_URL"])  # made before the SDK
        off = dp.DeepSeekClient(api_key="sk-x", base_url=os.environ["FAKE_URL"], telemetry=False)
        client.chat("before")  # OpenTelemetry imported, not configured: nothing recorded
        before = client.telemetry.recording
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        client.chat("after")
        off.chat("never")
        print(json.dumps({"before": before, "after": client.telemetry.recording,
                          "spans": [s.name for s in exporter.get_finished_spans()]}))
        """,
        fake,
    )
    assert seen == {"before": False, "after": True, "spans": ["chat deepseek-flash"]}


def test_explicit_telemetry_without_opentelemetry_says_what_to_install() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['opentelemetry'] = None\n"
            "import deepseek_pool as dp\n"
            "try:\n    dp.Telemetry()\nexcept dp.ConfigurationError as e:\n    print(e)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "deepseek-pool[otel]" in done.stdout, done.stderr


def test_the_cost_benchmark_runs() -> None:
    pytest.importorskip("openai")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = root
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.telemetry_cost", "--n", "5", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "telemetry adds" in done.stdout and "openai-python adds" in done.stdout
