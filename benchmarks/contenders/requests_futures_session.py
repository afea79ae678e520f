"""requests-futures: ``FuturesSession(max_workers=C)`` (it sizes the adapter pool to C), futures gathered."""

from __future__ import annotations

from requests_futures.sessions import FuturesSession

from benchmarks import protocol
from benchmarks.contenders import TIMEOUT, Outcome, Spec


def run(spec: Spec) -> Outcome:
    if spec.stream:
        raise NotImplementedError("requests-futures is not run in the streaming cell")
    outcome = Outcome.empty(spec.n)
    url = spec.base_url + "/chat/completions"
    with FuturesSession(max_workers=spec.concurrency) as session:
        session.headers["Authorization"] = f"Bearer {protocol.API_KEY}"
        if spec.ca_file:
            session.verify = spec.ca_file
        futures = [session.post(url, json=protocol.chat_body(i), timeout=TIMEOUT) for i in range(spec.n)]
        for i, future in enumerate(futures):
            try:
                response = future.result()
                if response.status_code != 200:
                    outcome.errors[i] = f"HTTP {response.status_code}"
                else:
                    outcome.contents[i] = response.json()["choices"][0]["message"]["content"]
            except Exception as err:
                outcome.errors[i] = type(err).__name__
    return outcome
