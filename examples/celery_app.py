"""Celery workers on any number of machines fan a JSONL batch out under one Redis-backed DeepSeek budget.

Needs ``pip install 'deepseek-pool[redis,celery]'`` and a Redis server. Run::

    celery -A celery_app worker --pool prefork --concurrency 4     # on every worker machine
    python celery_app.py prompts.jsonl results.jsonl 200           # anywhere: fan out, collect

(from this directory, or with it on ``PYTHONPATH``). Each worker process builds its own
pool after it starts (``deepseek_pool.contrib.celery`` hooks ``worker_process_init``),
and every pool's limiter names the same ``redis://`` budget: however many machines and
processes run, at most ``DEEPSEEK_MAX_IN_FLIGHT`` requests are in flight for the account,
and a 429 that names a lower cap lowers it for all of them. The collected file has the
lines ``deepseek-pool run`` writes, one per input line, in input order.

Settings, from the environment (the defaults suit one machine with a local Redis):

* ``DEEPSEEK_API_KEY``, ``DEEPSEEK_BASE_URL``: read by the client;
* ``CELERY_BROKER_URL`` (``redis://127.0.0.1:6379/1``), ``CELERY_RESULT_BACKEND``
  (``redis://127.0.0.1:6379/2``);
* ``DEEPSEEK_LIMITER_STORAGE`` (``redis://127.0.0.1:6379/0?on_storage_error=fail``) and
  ``DEEPSEEK_LIMITER_NAME`` (``deepseek-flash``): the shared budget;
* ``DEEPSEEK_MAX_IN_FLIGHT`` (``400``): the account-wide cap; ``DEEPSEEK_THREADS`` (``32``):
  threads per worker process;
* ``CELERY_VISIBILITY_TIMEOUT`` (``3600``): seconds before the chunks of a worker whose main
  process died are delivered again.

Stopping a worker: SIGTERM is Celery's warm shutdown: the worker takes no new chunk,
finishes the chunks it is running (every call of them answered and written), gives back
the ones it had taken but not started (at once, on Redis), and each process closes its
pool. A second Ctrl-C, or SIGQUIT, is a cold shutdown that drops the running chunks, and
a container runtime sends SIGKILL when its grace period ends (Docker: 10 s, Kubernetes:
``terminationGracePeriodSeconds``, 30 s): give it more than the longest chunk takes, or
the chunks cut short wait for the visibility timeout like those of a killed worker.
"""

from __future__ import annotations

import os
import sys
from typing import List

from celery import Celery

import deepseek_pool as dp
from deepseek_pool.contrib.celery import batch_group, setup

app = Celery(
    "celery_app",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/2"),
)
#: Seconds before the chunks of a worker whose main process died are delivered again.
VISIBILITY_TIMEOUT = int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "3600"))

app.conf.update(
    task_serializer="json",
    result_serializer="json",
    worker_prefetch_multiplier=1,  # a chunk waits in the broker, not behind a busy process
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        # The chunks a worker had taken when its main process died (SIGKILL, OOM, a machine
        # lost) are delivered again only once this many seconds have passed since they were
        # taken (kombu's default: one hour). Keep it above the longest chunk's run time, or a
        # chunk still running is delivered to a second worker too (its calls sent twice).
        "visibility_timeout": VISIBILITY_TIMEOUT,
        # How often a running worker looks for such chunks (kombu 5.7 on Redis: every 10 s,
        # but only every 10th look scans, so up to ~100 s late). Older kombus ignore these.
        "unacked_restore_interval": max(1, min(10, VISIBILITY_TIMEOUT)),
        "unacked_restore_throttle": 1,
    },
)


def make_pool() -> dp.DeepSeekPool:
    """Called once in each worker process, after it starts."""
    limiter = dp.Limiter(
        max_in_flight=int(os.environ.get("DEEPSEEK_MAX_IN_FLIGHT", "400")),
        storage=os.environ.get("DEEPSEEK_LIMITER_STORAGE", "redis://127.0.0.1:6379/0?on_storage_error=fail"),
        name=os.environ.get("DEEPSEEK_LIMITER_NAME", "deepseek-flash"),
    )
    return dp.DeepSeekPool(max_workers=int(os.environ.get("DEEPSEEK_THREADS", "32")), limiter=limiter)


run_chunk = setup(app, make_pool)


def fan_out(input_path: str, output_path: str, chunk_size: int = 100, timeout: float = 3600.0) -> int:
    """Send every chunk of ``input_path`` to the workers, write the answers to ``output_path``; return the count."""
    job = batch_group(run_chunk, input_path, chunk_size=chunk_size).apply_async()
    chunks: List[List[str]] = job.get(timeout=timeout)
    count = 0
    with open(output_path, "w", encoding="utf-8") as out:
        for lines in chunks:
            for line in lines:
                out.write(line + "\n")
                count += 1
    return count


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python celery_app.py INPUT.jsonl OUTPUT.jsonl [CHUNK_SIZE]")
    written = fan_out(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 100)
    print(f"{written} result lines written to {sys.argv[2]}")
