"""The wire: one call's trip from a ``requests.Session`` through urllib3 to DeepSeek and back.

Modules, top down: :mod:`~deepseek_pool.wire.route` (the session's way, or the direct route
where that is the same), :mod:`~deepseek_pool.wire.attempts` (every attempt of a call, the
retry policy of :mod:`~deepseek_pool.wire.retry` asked at each), the streamed answer
(:mod:`~deepseek_pool.wire.stream`) and the shared reader of streams nobody watches
(:mod:`~deepseek_pool.wire.reader`), a body's reads under the deadlines
(:mod:`~deepseek_pool.wire.body`, with :mod:`~deepseek_pool.wire.chunked` framing and the
:mod:`~deepseek_pool.wire.sse` decoder), a 2xx body read into the call's answer
(:mod:`~deepseek_pool.wire.answers`), requests' adapter and its watchable connections
(:mod:`~deepseek_pool.wire.adapter`, which resolves names within the connect timeout,
:mod:`~deepseek_pool.wire.resolve`, and is mounted sized to the threads by
:mod:`~deepseek_pool.wire.mount`), a call's control, handle, deadlines and watchdog
(:mod:`~deepseek_pool.wire.calls`), a direct call's slot of a shared budget, named by a
Protocol (:mod:`~deepseek_pool.wire.slot`), a client's URLs (:mod:`~deepseek_pool.wire.urls`),
and the translation of foreign exceptions (:mod:`~deepseek_pool.wire.failures`).

May import: the standard library, requests, urllib3, and the foundation modules
(:mod:`deepseek_pool.errors`, :mod:`~deepseek_pool.config`, :mod:`~deepseek_pool.types`,
:mod:`~deepseek_pool.messages`, :mod:`~deepseek_pool.params`, :mod:`~deepseek_pool.forks`), and
:mod:`deepseek_pool.telemetry`'s no-op-by-default interface (a call's trace, or None).
Nothing above it: the wire knows no client, pool, budget or batch.
"""
