"""Worker processes (Celery prefork, RQ, multiprocessing): one pool per process, built after it starts.

Run it::

    python examples/worker_processes.py                          # offline: a local FakeDeepSeek
    DEEPSEEK_API_KEY=sk-... python examples/worker_processes.py  # the real API

What this adds to the web examples:

* **Build the pool inside each worker process, after it has started.** A pool made in the
  parent does work in a child forked through Python (``os.fork``: gunicorn ``--preload``,
  Celery prefork, multiprocessing's "fork"), whose hooks start its threads and connections
  afresh there; but a pool built in the child lets no thread, socket or lease cross the fork
  at all. (A fork from C without those hooks, uWSGI's default mode, is covered too: every
  object checks its process id.) Here ``init_worker`` runs in each process as the
  executor's initializer.
* **Share one budget between the processes.** DeepSeek caps concurrent requests per
  account (all keys together). Each process builds its own :class:`~deepseek_pool.Limiter`
  on the same ``sqlite://`` file and name, so they share one budget: a busy process may use
  what an idle one does not, a process that dies gives its slots back, and a 429 naming a
  lower cap lowers it for all of them. (``redis://`` does the same across machines.)
* **A task fans out too.** A task runs in one thread of its worker; the pool lets it
  make its calls at once (here: one per section of a document, then one to combine them).

With Celery, the same functions plug into its signals (Celery is not needed to run this file)::

    from celery import Celery
    from celery.signals import worker_process_init

    app = Celery("tasks", broker="redis://localhost")

    @worker_process_init.connect
    def start_deepseek_pool(**kwargs):
        init_worker(BUDGET_STORAGE)

With gunicorn, the same in its config file (``gunicorn -c gunicorn.conf.py -w 4 app:app``)::

    # gunicorn.conf.py: every worker process joins the one budget after it is forked
    def post_fork(server, worker):
        import app
        app.init_worker("sqlite:////var/tmp/deepseek-budget.db")

    @app.task
    def summarize(document):
        return summarize_document(document)
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import time
from typing import Any, Dict, List, Optional, TextIO

import deepseek_pool as dp
from deepseek_pool.testing import FakeDeepSeek

#: Worker processes, and the concurrent requests all of them together may have open.
PROCESSES = 2
ACCOUNT_BUDGET = 32
#: Where the shared budget lives (a file every worker on this machine opens).
BUDGET_STORAGE = "sqlite:////var/tmp/deepseek-budget.db"
#: Threads per process (calls beyond max_in_flight wait in the limiter, not at DeepSeek).
THREADS_PER_PROCESS = 16
#: Seconds the offline FakeDeepSeek takes per answer (the real API takes seconds).
OFFLINE_LATENCY = 0.2

#: This process's pool: None in the parent, built by init_worker in each worker.
_pool: Optional[dp.DeepSeekPool] = None


def init_worker(storage: str, api_key: Optional[str] = None, base_url: Optional[str] = None) -> None:
    """Build this process's pool on the shared budget; run it in the worker process, after it starts."""
    global _pool
    client = dp.DeepSeekClient(api_key, base_url=base_url)  # None: DEEPSEEK_API_KEY / DEEPSEEK_BASE_URL
    budget = dp.Limiter(max_in_flight=ACCOUNT_BUDGET, storage=storage, name="deepseek-account")
    _pool = dp.DeepSeekPool(client, max_workers=THREADS_PER_PROCESS, limiter=budget)


def summarize_document(document: Dict[str, Any]) -> Dict[str, Any]:
    """A task: summarize every section at once, then combine the summaries in one more call."""
    if _pool is None:
        raise RuntimeError("init_worker() has not run in this process")
    sections: List[str] = document["sections"]
    prompts = [f"Summarize in one sentence: {section}" for section in sections]
    results = _pool.map(prompts)  # all sections at once; errors stay on their Result
    failed = [r for r in results if not r.ok]
    if failed:
        return {"title": document["title"], "error": f"{len(failed)} section(s) failed: {failed[0].error}"}
    summaries = [r.unwrap().content for r in results]
    combined = _pool.submit("Combine into one paragraph:\n" + "\n".join(summaries), thinking=False).result()
    return {"title": document["title"], "pid": os.getpid(), "sections": summaries, "summary": combined.content}


def sample_documents(count: int = 6) -> List[Dict[str, Any]]:
    return [
        {"title": f"Report {d}", "sections": [f"Section {s} of report {d} says something." for s in range(1, 5)]}
        for d in range(1, count + 1)
    ]


def main(out: TextIO = sys.stdout, storage: str = BUDGET_STORAGE) -> int:
    documents = sample_documents()
    fake: Optional[FakeDeepSeek] = None
    api_key = base_url = None
    if not os.environ.get("DEEPSEEK_API_KEY"):
        print("(DEEPSEEK_API_KEY is not set: a local FakeDeepSeek answers)", file=out)
        fake = FakeDeepSeek(latency=OFFLINE_LATENCY).start()
        api_key, base_url = "sk-offline-example", fake.base_url
    started = time.monotonic()
    try:
        # "spawn" starts clean processes on every OS; with "fork", init_worker still runs after the fork.
        with cf.ProcessPoolExecutor(
            PROCESSES,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(storage, api_key, base_url),
        ) as workers:
            for outcome in workers.map(summarize_document, documents):
                text = outcome.get("summary", outcome.get("error"))
                print(f"{outcome['title']} (process {outcome.get('pid')}): {text}", file=out)
    finally:
        if fake is not None:
            fake.stop()
    print(f"{len(documents)} documents in {time.monotonic() - started:.1f} s", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
