"""The contenders: one module per way of making many chat calls at once.

Each module has ``run(spec) -> Outcome`` that makes ``spec.n`` chat calls
(prompt ``i`` is :func:`benchmarks.protocol.prompt_for` ``(i)``) with ``spec.concurrency``
at once against ``spec.base_url``, the way a user of that library would write it, and
returns every answer's content (or its error) by index. The harness checks the answers
and does all the timing and accounting, in a separate process per run.
"""

from __future__ import annotations

import importlib
import importlib.util
import ssl
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

TIMEOUT = 60.0


@dataclass(frozen=True)
class Spec:
    """One run: where to send, how many, how many at once, streamed or not."""

    base_url: str
    n: int
    concurrency: int
    stream: bool = False
    #: the CA that signed an HTTPS load server's certificate (None: plain HTTP)
    ca_file: Optional[str] = None

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        """A client context trusting :attr:`ca_file` (for the libraries that take one), or None."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None


@dataclass
class Outcome:
    """What a contender got back, by request index."""

    contents: List[Optional[str]]
    errors: List[Optional[str]]
    #: seconds from just before the call to the first content chunk (streaming only)
    ttfc: List[float] = field(default_factory=list)
    #: content chunks seen (streaming only)
    chunks: int = 0

    @classmethod
    def empty(cls, n: int) -> Outcome:
        return cls([None] * n, [None] * n)


@dataclass(frozen=True)
class Contender:
    """A contender: its module, the packages it needs, what it can do."""

    name: str
    label: str
    module: str
    needs: Tuple[str, ...]
    streams: bool = True
    #: retries 429/503/resets out of the box (or as users commonly configure it)
    retries: bool = False
    thread_based: bool = True
    #: run only when named (``--contenders``): a variant of another contender, not a peer
    variant: bool = False
    #: takes part in the streaming cells only
    stream_only: bool = False

    def available(self) -> bool:
        return all(importlib.util.find_spec(package) is not None for package in self.needs)

    def load(self) -> Callable[[Spec], Outcome]:
        module = importlib.import_module(f"benchmarks.contenders.{self.module}")
        run: Callable[[Spec], Outcome] = module.run
        return run


FLOOR = "urllib3"

CONTENDERS: Dict[str, Contender] = {
    c.name: c
    for c in (
        Contender("deepseek_pool", "deepseek_pool (DeepSeekPool)", "dspool", ("deepseek_pool",), retries=True),
        Contender(
            "deepseek_pool_tuned",
            "deepseek_pool + tune_process(C)",
            "dspool_tuned",
            ("deepseek_pool",),
            retries=True,
            variant=True,
        ),
        Contender(
            "deepseek_pool_relay",
            "deepseek_pool chat_stream + threads (chunk by chunk)",
            "dspool_relay",
            ("deepseek_pool",),
            retries=True,
            stream_only=True,
        ),
        Contender("urllib3", "urllib3 PoolManager + threads (floor)", "urllib3_threads", ("urllib3",), retries=True),
        Contender("requests", "requests Session + threads", "requests_threads", ("requests",), retries=True),
        Contender(
            "requests_futures", "requests-futures", "requests_futures_session", ("requests_futures",), streams=False
        ),
        Contender("openai", "openai-python + threads", "openai_threads", ("openai",), retries=True),
        Contender("httpx", "httpx async + gather", "httpx_async", ("httpx",), thread_based=False),
        Contender("aiohttp", "aiohttp async + gather", "aiohttp_async", ("aiohttp",), thread_based=False),
    )
}
