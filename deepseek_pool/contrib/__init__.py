"""Optional integrations with existing engines, each behind its own extra; the core never imports them.

* :mod:`deepseek_pool.contrib.celery` (``pip install 'deepseek-pool[celery]'``): a pool per
  Celery worker process, and a task that runs chunks of a JSONL batch.

May import: its engine (Celery), :mod:`deepseek_pool.batch` and :mod:`deepseek_pool.pool`,
and what those stand on. Nothing in the package imports contrib.
"""
