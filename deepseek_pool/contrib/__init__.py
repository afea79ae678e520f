"""Optional integrations with existing engines, each behind its own extra; the core never imports them.

* :mod:`deepseek_pool.contrib.celery` (``pip install 'deepseek-pool[celery]'``): a pool per
  Celery worker process, and a task that runs chunks of a JSONL batch.
"""
