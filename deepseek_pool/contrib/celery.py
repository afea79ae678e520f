"""Celery: one :class:`~deepseek_pool.DeepSeekPool` per worker process, and a task for chunks of a batch.

Needs Celery (``pip install 'deepseek-pool[celery]'``). Each worker process builds its pool
after it starts (``worker_process_init``: never in the parent before the fork, so no
socket or thread crosses it) and closes it when it stops (``worker_process_shutdown``).
Give the pools a :class:`~deepseek_pool.Limiter` on one ``redis://`` storage and every
process of every worker machine shares one budget: the account's cap holds however many
workers run::

    from celery import Celery
    import deepseek_pool as dp
    from deepseek_pool.contrib.celery import batch_group, setup

    app = Celery("batch", broker="redis://redis:6379/1", backend="redis://redis:6379/2")

    def make_pool() -> dp.DeepSeekPool:
        limiter = dp.Limiter(max_in_flight=400, storage="redis://redis:6379/0", name="flash")
        return dp.DeepSeekPool(max_workers=32, limiter=limiter)

    run_chunk = setup(app, make_pool)

    # anywhere else (a Django view, a script): fan a JSONL out over every worker, collect it
    job = batch_group(run_chunk, "prompts.jsonl", chunk_size=200).apply_async()
    lines = [line for chunk in job.get() for line in chunk]     # or chord(...)(collect.s())

The task, ``run_chunk(lines, first_line=1, model=None)``, returns the batch-output lines
of its chunk (:func:`deepseek_pool.batch.runner.run_lines`: the lines ``deepseek-pool run``
writes, one per non-blank input line) and never raises for one item: a malformed line or
a failed call is an error line. It is ``acks_late`` with ``reject_on_worker_lost``, so a
chunk whose worker died (SIGKILL, OOM) is delivered again and run whole again: every line
comes back exactly once, though the calls of a lost chunk may be sent twice.

When is "again"? A pool process that dies under a live worker: at once (the worker
requeues it). A worker whose *main* process dies (the container or machine killed): its
unacknowledged chunks wait in the broker for kombu's visibility timeout, **one hour by
default** on Redis and SQS, before any worker gets them. Shorten it with
``app.conf.broker_transport_options = {"visibility_timeout": seconds}``, but keep it above
the longest chunk's run time: a chunk still running past it is delivered to a second
worker as well. A warm shutdown (SIGTERM) loses nothing: the worker finishes the chunks it
runs and gives back the others at once (see :doc:`/django-celery`).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple, Union

from celery import Celery, group
from celery.signals import worker_process_init, worker_process_shutdown

from ..batch.runner import run_lines
from ..pool.pool import DeepSeekPool

__all__ = ["DEFAULT_TASK_NAME", "batch_group", "chunks", "close_pool", "get_pool", "setup"]

log = logging.getLogger(__name__)

#: The name the chunk task is registered under.
DEFAULT_TASK_NAME = "deepseek_pool.run_chunk"
#: Options of the chunk task unless ``setup`` is given others.
TASK_OPTIONS = {"acks_late": True, "reject_on_worker_lost": True}

PoolFactory = Callable[[], DeepSeekPool]

_lock = threading.Lock()
_factory: Optional[PoolFactory] = None
_pool: Optional[DeepSeekPool] = None
_pool_pid: Optional[int] = None


def setup(app: Celery, make_pool: PoolFactory, *, name: str = DEFAULT_TASK_NAME, **task_options: Any) -> Any:
    """Make each worker process build ``make_pool()`` when it starts, close it when it stops; register the task.

    :param make_pool: builds this process's pool (called once per worker process).
    :param name: the chunk task's name.
    :param task_options: options of the task (defaults: :data:`TASK_OPTIONS`).
    :returns: the chunk task, ``run_chunk(lines, first_line=1, model=None) -> List[str]``.
    """
    global _factory
    if not callable(make_pool):
        raise TypeError(f"make_pool must be a callable that returns a DeepSeekPool, got {make_pool!r}")
    _factory = make_pool
    worker_process_init.connect(_open_in_worker, weak=False, dispatch_uid="deepseek_pool.open")
    worker_process_shutdown.connect(_close_in_worker, weak=False, dispatch_uid="deepseek_pool.close")
    options = {**TASK_OPTIONS, **task_options}
    return app.task(name=name, **options)(run_chunk)


def run_chunk(lines: List[str], first_line: int = 1, model: Optional[str] = None) -> List[str]:
    """Run a chunk of batch input lines on this process's pool; return their batch-output lines."""
    return run_lines(lines, get_pool(), first_line=first_line, model=model)


def get_pool() -> DeepSeekPool:
    """This worker process's pool: built at ``worker_process_init``, else on first use (solo and
    threads pools, eager tasks, tests)."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            if _factory is None:
                raise RuntimeError("deepseek_pool.contrib.celery.setup(app, make_pool) was not called")
            pool = _factory()
            if not isinstance(pool, DeepSeekPool):
                raise TypeError(f"make_pool() must return a DeepSeekPool, got {pool!r}")
            _pool, _pool_pid = pool, os.getpid()
            log.info("built the DeepSeek pool of worker process %d: %r", _pool_pid, pool)
        return _pool


def close_pool() -> None:
    """Close this process's pool and its limiter (their storage connections too), if built here."""
    global _pool, _pool_pid
    with _lock:
        pool, pid = _pool, _pool_pid
        _pool = _pool_pid = None
    if pool is not None and pid == os.getpid():
        pool.close(wait=True)
        pool.limiter.close()
        log.info("closed the DeepSeek pool of worker process %d", pid)


def _open_in_worker(**_: Any) -> None:
    global _pool, _pool_pid
    with _lock:  # a pool inherited from the parent is the parent's: never used or closed here
        _pool = _pool_pid = None
    get_pool()


def _close_in_worker(**_: Any) -> None:
    close_pool()


def chunks(source: Union[str, os.PathLike[str], Iterable[str]], chunk_size: int) -> Iterator[Tuple[int, List[str]]]:
    """``(first line number, lines)`` for each chunk of a JSONL file (a path) or of lines."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8", errors="surrogateescape", newline="") as file:
            yield from chunks(file, chunk_size)
        return
    lines = iter(source)
    first = 1
    while True:
        chunk = [line.rstrip("\r\n") for line in itertools.islice(lines, chunk_size)]
        if not chunk:
            return
        yield first, chunk
        first += len(chunk)


def batch_group(
    task: Any,
    source: Union[str, os.PathLike[str], Iterable[str]],
    *,
    chunk_size: int = 100,
    model: Optional[str] = None,
) -> Any:
    """A ``celery.group`` of ``task`` over the chunks of ``source``; apply it, or make it a chord's header.

    Its result is a list (one per chunk, in order) of lists of batch-output lines.
    """
    return group(task.s(lines, first, model) for first, lines in chunks(source, chunk_size))
