"""What OpenTelemetry costs a call: client CPU per request with telemetry off, unconfigured and on.

``python -m benchmarks.telemetry_cost`` measures, in one process against the load server
(its own process, zero latency, one thread: the code path is all that is measured), the
client CPU per sequential ``DeepSeekClient.chat`` in three phases, each one interleaving
its paths round by round so drift hits them alike:

1. OpenTelemetry never imported: ``telemetry=False`` against the default (automatic) client;
2. OpenTelemetry imported, no provider configured: the same two again;
3. configured -- an SDK ``TracerProvider`` with a ``BatchSpanProcessor`` (its exporter drops
   the spans: export is the backend's cost, not the client's) and an SDK ``MeterProvider``
   -- against the urllib3 floor, openai-python's ``chat.completions.create`` and
   ``telemetry=False``.

It prints µs per call and the ratios the goal is stated in: off vs automatic (nothing
measurable), and what telemetry adds against what openai-python adds over the floor.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import timeit
from typing import Any, Callable, Dict, List, Optional, Sequence

import urllib3

from benchmarks import protocol
from benchmarks.contenders.urllib3_threads import RETRY
from benchmarks.harness import LoadServer
from benchmarks.profile_path import measure
from deepseek_pool import DeepSeekClient, Telemetry
from deepseek_pool.telemetry import AUTO

Path = Callable[[int], str]


def _client(base_url: str, telemetry: Any) -> Path:
    client = DeepSeekClient(protocol.API_KEY, base_url=base_url, model=protocol.MODEL, timeout=60, telemetry=telemetry)

    def call(i: int) -> str:
        return client.chat(protocol.prompt_for(i)).content

    return call


def _floor(base_url: str) -> Path:
    http = urllib3.PoolManager(maxsize=4, retries=RETRY)
    url = base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {protocol.API_KEY}", "Content-Type": "application/json"}

    def floor(i: int) -> str:
        body = json.dumps(protocol.chat_body(i)).encode()
        content: str = json.loads(http.request("POST", url, body=body, headers=headers).data)["choices"][0]["message"][
            "content"
        ]
        return content

    return floor


def _openai(base_url: str) -> Path:
    from openai import OpenAI

    client = OpenAI(api_key=protocol.API_KEY, base_url=base_url + "/v1", timeout=60)

    def call(i: int) -> str:
        completion = client.chat.completions.create(model=protocol.MODEL, messages=protocol.messages_for(i))  # type: ignore[arg-type]
        return completion.choices[0].message.content or ""

    return call


def _configured() -> Telemetry:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Dropped()))
    return Telemetry(tracer_provider=tracer_provider, meter_provider=MeterProvider([InMemoryMetricReader()]))


def _check_cost() -> float:
    """µs of the automatic client's per-call look for a configured OpenTelemetry (its only cost when off)."""
    payload = {"model": protocol.MODEL, "messages": protocol.messages_for(0)}
    start = AUTO.start
    number = 100_000
    call = lambda: start("http://127.0.0.1/chat/completions", payload, False, None)  # noqa: E731
    seconds = min(timeit.repeat(call, number=number, repeat=5))  # the least disturbed of five
    return 1e6 * seconds / number


def _phase(title: str, paths: Dict[str, Path], n: int, rounds: int) -> Dict[str, float]:
    results: Dict[str, List[float]] = {name: [] for name in paths}
    for round_number in range(rounds):
        order = list(paths.items())
        for name, call in order if round_number % 2 == 0 else reversed(order):  # no path always goes first
            results[name].append(measure(call, n))
    medians = {name: sorted(values)[len(values) // 2] for name, values in results.items()}
    print(f"\n{title}")
    for name, median in medians.items():
        spread = f"{min(results[name]):.1f}-{max(results[name]):.1f}"
        print(f"  {name:44} {median:7.1f} µs  (rounds {spread})")
    return medians


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=2000, help="calls per path per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    assert not any(name.startswith("opentelemetry") for name in sys.modules), "imported too early"
    print(f"client CPU per sequential call, median of {args.rounds} rounds x {args.n} calls, zero latency")
    with LoadServer() as server:
        server.reset({"latency": 0.0})
        base = server.base_url
        off = _client(base, False)
        one = _phase(
            "1. OpenTelemetry not imported",
            {"telemetry=False": off, "automatic (default)": _client(base, None)},
            args.n,
            args.rounds,
        )
        not_imported = _check_cost()
        for module in ("opentelemetry.trace", "opentelemetry.metrics"):  # as a dependency might, unconfigured
            importlib.import_module(module)

        two = _phase(
            "2. OpenTelemetry imported, not configured",
            {"telemetry=False": off, "automatic (default)": _client(base, None)},
            args.n,
            args.rounds,
        )
        not_configured = _check_cost()
        three = _phase(
            "3. configured (SDK tracer with a batch processor, SDK meter)",
            {
                "urllib3 (floor)": _floor(base),
                "openai-python chat.completions.create": _openai(base),
                "telemetry=False": off,
                "telemetry on": _client(base, _configured()),
            },
            args.n,
            args.rounds,
        )
    print(
        f"\nthe automatic client's look for a configured OpenTelemetry, per call: {not_imported:.2f} µs not imported, "
        f"{not_configured:.2f} µs imported and not configured"
    )
    print("\nratios:")
    print(f"  not imported: automatic / off           {one['automatic (default)'] / one['telemetry=False']:.3f}")
    print(f"  not configured: automatic / off         {two['automatic (default)'] / two['telemetry=False']:.3f}")
    added = three["telemetry on"] - three["telemetry=False"]
    openai_over = three["openai-python chat.completions.create"] - three["urllib3 (floor)"]
    print(f"  configured: on / off                    {three['telemetry on'] / three['telemetry=False']:.3f}")
    print(
        f"  telemetry adds {added:.1f} µs; openai-python adds {openai_over:.1f} µs over the floor "
        f"({added / openai_over:.2f} of it)"
    )


if __name__ == "__main__":
    main()
