"""deepseek_pool: ``DeepSeekPool.as_completed`` with ``max_workers=C`` (its defaults otherwise)."""

from __future__ import annotations

from typing import Any, Dict, Iterator, Union

from benchmarks import protocol
from benchmarks.contenders import TIMEOUT, Outcome, Spec
from deepseek_pool import DeepSeekClient, DeepSeekPool


def run(spec: Spec) -> Outcome:
    outcome = Outcome.empty(spec.n)
    client = DeepSeekClient(protocol.API_KEY, base_url=spec.base_url, model=protocol.MODEL, timeout=TIMEOUT)
    if spec.ca_file:
        client.session.verify = spec.ca_file  # the HTTPS cells' throwaway CA, as requests is told it

    def requests() -> Iterator[Union[str, Dict[str, Any]]]:
        for i in range(spec.n):
            yield {"prompt": protocol.prompt_for(i), "stream": True} if spec.stream else protocol.prompt_for(i)

    with client, DeepSeekPool(client, max_workers=spec.concurrency) as pool:
        for result in pool.as_completed(requests()):
            if result.ok:
                assert result.completion is not None
                outcome.contents[result.index] = result.completion.content
                if spec.stream and result.first_token is not None:
                    outcome.ttfc.append(result.first_token)
            else:
                outcome.errors[result.index] = type(result.error).__name__
    if spec.stream:
        stats = pool.stats
        outcome.chunks = stats.ok * protocol.DEFAULT_CHUNKS  # the pool aggregates; chunks are not surfaced
    return outcome
