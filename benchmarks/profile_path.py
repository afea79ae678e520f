"""Where the CPU of one call goes: sequential calls, one thread, zero server latency.

``python -m benchmarks.profile_path`` prints the client CPU per call (µs) of the
urllib3 floor, a requests Session, ``DeepSeekClient.chat`` and a ``DeepSeekPool``
call, then a cProfile of ``DeepSeekClient.chat`` (``--top`` rows). One thread and no
latency remove scheduling noise, so the differences are the code paths themselves.
The load server runs in its own process, so its CPU is not counted.

``--stream`` measures streams instead: client CPU per *event* (µs) of the urllib3
floor (JSON per event), ``DeepSeekClient.chat_stream`` and a ``DeepSeekPool`` stream,
``--chunks`` events per stream sent ``--gap`` seconds apart (0: back to back, so reads
carry many events; a gap of a few ms makes every read carry one, as at DeepSeek's pace),
then a cProfile of ``chat_stream``.

``--https`` runs the same against a load server that speaks TLS (a throwaway certificate,
:mod:`benchmarks.tls`), every path trusting its CA.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional

import requests
import urllib3
from requests.adapters import HTTPAdapter

from benchmarks import protocol
from benchmarks.contenders.urllib3_threads import RETRY
from benchmarks.harness import LoadServer
from deepseek_pool import DeepSeekClient, DeepSeekPool


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def paths(base_url: str, ca: Optional[str] = None) -> Dict[str, Callable[[int], str]]:
    """One call of each contender's request path, by name (``ca``: the CA of an HTTPS server)."""
    http = urllib3.PoolManager(maxsize=4, retries=RETRY, ca_certs=ca)
    url = base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {protocol.API_KEY}", "Content-Type": "application/json"}

    def floor(i: int) -> str:
        body = json.dumps(protocol.chat_body(i)).encode()
        response = http.request("POST", url, body=body, headers=headers)
        content: str = json.loads(response.data)["choices"][0]["message"]["content"]
        return content

    session = requests.Session()
    adapter = HTTPAdapter(pool_maxsize=4, max_retries=RETRY)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["Authorization"] = f"Bearer {protocol.API_KEY}"
    if ca:
        session.verify = ca

    def with_requests(i: int) -> str:
        content: str = session.post(url, json=protocol.chat_body(i), timeout=60).json()["choices"][0]["message"][
            "content"
        ]
        return content

    client = _client(base_url, ca)

    def with_client(i: int) -> str:
        return client.chat(protocol.prompt_for(i)).content

    pool = DeepSeekPool(client, max_workers=1)

    def with_pool(i: int) -> str:
        return pool.submit(protocol.prompt_for(i)).result(timeout=60).content

    executor = ThreadPoolExecutor(1)

    def floor_in_thread(i: int) -> str:
        return executor.submit(floor, i).result(timeout=60)

    return {
        "urllib3 (floor)": floor,
        "urllib3 via a 1-thread executor": floor_in_thread,
        "requests Session": with_requests,
        "DeepSeekClient.chat": with_client,
        "DeepSeekPool.submit (1 worker)": with_pool,
    }


def _client(base_url: str, ca: Optional[str]) -> DeepSeekClient:
    client = DeepSeekClient(protocol.API_KEY, base_url=base_url, model=protocol.MODEL, timeout=60)
    if ca:
        client.session.verify = ca
    return client


def stream_paths(base_url: str, ca: Optional[str] = None) -> Dict[str, Callable[[int], str]]:
    """One streamed call of each path, by name (the answer joined from its pieces)."""
    http = urllib3.PoolManager(maxsize=4, retries=RETRY, ca_certs=ca)
    url = base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {protocol.API_KEY}", "Content-Type": "application/json"}

    def floor(i: int) -> str:
        body = json.dumps(protocol.chat_body(i, True)).encode()
        response = http.request("POST", url, body=body, headers=headers, preload_content=False)
        try:
            lines = protocol.split_lines(response.stream(65536))
            return "".join(piece or "" for piece in protocol.sse_contents(lines))
        finally:
            response.release_conn()

    client = _client(base_url, ca)

    def with_client(i: int) -> str:
        with client.chat_stream(protocol.prompt_for(i)) as stream:
            return "".join(chunk.content or "" for chunk in stream)

    pool = DeepSeekPool(client, max_workers=1)

    def with_pool(i: int) -> str:
        return pool.submit(protocol.prompt_for(i), stream=True).result(timeout=60).content

    return {
        "urllib3 (floor)": floor,
        "DeepSeekClient.chat_stream": with_client,
        "DeepSeekPool stream (1 worker)": with_pool,
    }


def measure(call: Callable[[int], str], n: int) -> float:
    """Client CPU µs per call over ``n`` sequential calls (after 50 warm-up calls), answers checked."""
    for i in range(50):
        call(i)
    cpu0 = _cpu()
    for i in range(n):
        if call(i) != protocol.answer_for(i):
            raise AssertionError(f"wrong answer for {i}")
    return 1e6 * (_cpu() - cpu0) / n


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--only", help="measure only the paths whose name contains this")
    parser.add_argument("--stream", action="store_true", help="streams: CPU per event instead of per call")
    parser.add_argument("--chunks", type=int, default=150, help="events per stream (with --stream)")
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between events (with --stream)")
    parser.add_argument("--https", action="store_true", help="against a TLS load server (a throwaway certificate)")
    args = parser.parse_args(argv)
    if args.stream:
        args.n = min(args.n, 400)
    if args.https:  # with trust_env these would win over the paths' own trust of the CA (as in the children)
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            os.environ.pop(name, None)
    with LoadServer(tls=args.https) as server:
        server.reset({"latency": 0.0, "chunks": args.chunks, "gap": args.gap})
        calls = stream_paths(server.base_url, server.ca) if args.stream else paths(server.base_url, server.ca)
        per = args.chunks if args.stream else 1
        results: Dict[str, List[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                if args.only and args.only not in name:
                    continue
                results[name].append(measure(call, args.n) / per)
        what = f"event ({args.chunks} per stream, {1000 * args.gap:g} ms apart)" if args.stream else "call"
        print(f"client CPU per sequential {what}, µs (median of {args.rounds} x {args.n} calls, zero latency):")
        floor = (
            sorted(results["urllib3 (floor)"])[len(results["urllib3 (floor)"]) // 2]
            if results["urllib3 (floor)"]
            else None
        )
        for name, values in results.items():
            if not values:
                continue
            median = sorted(values)[len(values) // 2]
            ratio = f"  {median / floor:.2f}x floor" if floor else ""
            print(f"  {name:34} {median:7.1f}{ratio}")
        if args.top:
            client_call = calls["DeepSeekClient.chat_stream" if args.stream else "DeepSeekClient.chat"]
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            for i in range(args.n):
                client_call(i)
            profiler.disable()
            print(
                f"\ncProfile of DeepSeekClient.{'chat_stream' if args.stream else 'chat'} x {args.n} "
                f"({time.perf_counter() - started:.2f} s with profiling):"
            )
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(args.top)
            print(out.getvalue())


if __name__ == "__main__":
    main()
