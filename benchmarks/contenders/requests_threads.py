"""requests: one ``Session`` (adapter pool and retries sized for C) + ``ThreadPoolExecutor(C)``."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

import requests
from requests.adapters import HTTPAdapter

from benchmarks import protocol
from benchmarks.contenders import TIMEOUT, Outcome, Spec
from benchmarks.contenders.urllib3_threads import RETRY


def session_for(spec: Spec) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=spec.concurrency, max_retries=RETRY)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["Authorization"] = f"Bearer {protocol.API_KEY}"
    if spec.ca_file:
        session.verify = spec.ca_file
    return session


def run(spec: Spec) -> Outcome:
    outcome = Outcome.empty(spec.n)
    session = session_for(spec)
    url = spec.base_url + "/chat/completions"
    stream = spec.stream

    def call(i: int) -> Tuple[int, Optional[str], Optional[str], float, int]:
        started = time.perf_counter()
        try:
            if not stream:
                response = session.post(url, json=protocol.chat_body(i), timeout=TIMEOUT)
                if response.status_code != 200:
                    return i, None, f"HTTP {response.status_code}", 0.0, 0
                return i, response.json()["choices"][0]["message"]["content"], None, 0.0, 0
            with session.post(url, json=protocol.chat_body(i, True), timeout=TIMEOUT, stream=True) as response:
                if response.status_code != 200:
                    return i, None, f"HTTP {response.status_code}", 0.0, 0
                parts: List[str] = []
                first = 0.0
                for piece in protocol.sse_contents(response.iter_lines()):
                    if piece:
                        if not parts:
                            first = time.perf_counter() - started
                        parts.append(piece)
                return i, "".join(parts), None, first, len(parts)
        except Exception as err:
            return i, None, type(err).__name__, 0.0, 0

    with ThreadPoolExecutor(spec.concurrency) as executor:
        for i, content, error, first, chunks in executor.map(call, range(spec.n)):
            outcome.contents[i] = content
            outcome.errors[i] = error
            if first:
                outcome.ttfc.append(first)
            outcome.chunks += chunks
    session.close()
    return outcome
