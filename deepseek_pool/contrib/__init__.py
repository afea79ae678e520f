"""Optional integrations with existing engines, each behind its own extra; the core never imports them.

* :mod:`deepseek_pool.contrib.celery` (``pip install 'deepseek-pool[celery]'``): a pool per
  Celery worker process, and a task that runs chunks of a JSONL batch.
* :mod:`deepseek_pool.contrib.relay` (no extra: it imports no web framework): relay a
  stream to a web client as server-sent events with keep-alive comments, and abort the
  DeepSeek call when the client leaves (WSGI and ASGI).

May import: its engine (Celery), :mod:`deepseek_pool.batch`, :mod:`deepseek_pool.pool`,
:mod:`deepseek_pool.client`, :mod:`deepseek_pool.wire` (a stream, a call's control), and what those stand on
(:mod:`deepseek_pool.errors`, :mod:`~deepseek_pool.types`, :mod:`~deepseek_pool.messages`).
Nothing in the package imports contrib.
"""
