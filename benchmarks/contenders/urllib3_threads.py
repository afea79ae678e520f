"""The floor: urllib3 ``PoolManager`` (maxsize=C) + ``ThreadPoolExecutor(C)``, JSON by hand.

The least work a thread pool can do per call: no session, no hooks, no environment
lookups. Retries as users configure them for an API: POST included, 429/5xx, backoff.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

import urllib3
from urllib3.util.retry import Retry

from benchmarks import protocol
from benchmarks.contenders import TIMEOUT, Outcome, Spec

RETRY = Retry(
    total=2, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None, raise_on_status=False
)


def run(spec: Spec) -> Outcome:
    outcome = Outcome.empty(spec.n)
    http = urllib3.PoolManager(
        maxsize=spec.concurrency,
        retries=RETRY,
        timeout=urllib3.Timeout(connect=10, read=TIMEOUT),
        ca_certs=spec.ca_file,  # the HTTPS cells' throwaway CA (None: the default trust)
    )
    url = spec.base_url + "/chat/completions"
    headers = {"Authorization": f"Bearer {protocol.API_KEY}", "Content-Type": "application/json"}
    stream = spec.stream
    dumps, loads = json.dumps, json.loads

    def call(i: int) -> Tuple[int, Optional[str], Optional[str], float, int]:
        started = time.perf_counter()
        try:
            body = dumps(protocol.chat_body(i, stream)).encode()
            if not stream:
                response = http.request("POST", url, body=body, headers=headers)
                if response.status != 200:
                    return i, None, f"HTTP {response.status}", 0.0, 0
                return i, loads(response.data)["choices"][0]["message"]["content"], None, 0.0, 0
            response = http.request("POST", url, body=body, headers=headers, preload_content=False)
            try:
                if response.status != 200:
                    return i, None, f"HTTP {response.status}", 0.0, 0
                parts: List[str] = []
                first = 0.0
                for piece in protocol.sse_contents(protocol.split_lines(response.stream(65536))):
                    if piece:
                        if not parts:
                            first = time.perf_counter() - started
                        parts.append(piece)
                return i, "".join(parts), None, first, len(parts)
            finally:
                response.release_conn()
        except Exception as err:
            return i, None, type(err).__name__, 0.0, 0

    with ThreadPoolExecutor(spec.concurrency) as executor:
        for i, content, error, first, chunks in executor.map(call, range(spec.n)):
            outcome.contents[i] = content
            outcome.errors[i] = error
            if first:
                outcome.ttfc.append(first)
            outcome.chunks += chunks
    http.clear()
    return outcome
