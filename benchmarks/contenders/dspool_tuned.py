"""deepseek_pool as an application that makes the call: ``dp.tune_process(C)`` around the same pool.

The plain ``deepseek_pool`` contender is what a library user gets without it (CPython's
switch interval and collector threshold); this one raises them for the batch and gives
them back after, as ``deepseek-pool run`` does.
"""

from __future__ import annotations

from benchmarks.contenders import Outcome, Spec, dspool
from deepseek_pool import tune_process


def run(spec: Spec) -> Outcome:
    with tune_process(spec.concurrency):
        return dspool.run(spec)
