"""The wire: one call's trip from a ``requests.Session`` through urllib3 to DeepSeek and back.

Owns the attempt loop and the retry policy (urllib3's ``Retry`` as a value), each call's
control, deadlines and the watchdog that enforces them, the requests adapter and the route
it picks, chunked framing, the SSE decoder and the shared stream reader.

May import: the standard library, requests, urllib3, and the foundation modules
(:mod:`deepseek_pool.errors`, :mod:`~deepseek_pool.config`, :mod:`~deepseek_pool.types`,
:mod:`~deepseek_pool.messages`, :mod:`~deepseek_pool.forks`). Nothing above it: the wire
knows no client, pool, budget or batch.
"""
