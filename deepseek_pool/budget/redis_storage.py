"""``redis://host:port/db``: one budget for every process on every machine that reaches one Redis.

Needs redis-py (``pip install 'deepseek-pool[redis]'``); the core imports this module only
when a ``redis://`` or ``rediss://`` storage is asked for, or a redis-py client is given::

    dp.Limiter(max_in_flight=400, storage="redis://redis.internal:6379/0", name="flash")
    dp.Limiter(max_in_flight=400, storage="rediss://:secret@redis.internal:6380/0?on_storage_error=local")
    dp.Limiter(max_in_flight=400, storage=redis.Redis(...))                 # your own connection settings
    dp.Limiter(max_in_flight=400, storage=RedisStorage(client, on_storage_error="local"))

Every operation of :class:`~deepseek_pool.budget.storage.Storage` is one Lua script
(:mod:`deepseek_pool.budget.redis_scripts`), run atomically by Redis on **Redis's clock**
(``TIME``), so machines whose clocks disagree still share one budget. The rules are those
of :mod:`deepseek_pool.budget.rules`, written again in Lua; their constants (the decrease
factor, the named cap's hold, the patience of the increase, the sporadic cool-down) are
passed from that module with every call, so there is one source of truth, and the same
behaviour tests run on every storage.

A budget ``name`` is two keys with one hash tag, so that Redis Cluster keeps them in one
slot: ``{deepseek:<name>}:state`` (a hash: the adaptive cap, rpm spacing, the tpm bucket,
the cool-down and retry hold, the retry budget, the counters) and
``{deepseek:<name>}:leases`` (a sorted set: lease id -> expiry, on Redis's clock). Both
expire after :data:`~deepseek_pool.budget.redis_scripts.KEY_TTL` seconds unused.

Round-trips (one ``EVALSHA`` each; the first use of a script on a server adds one
``SCRIPT LOAD``):

* acquire: 1 when a slot is free; a waiting limiter's head thread polls with 1 every
  :data:`~deepseek_pool.budget.retries.SHARED_POLL_INTERVAL` (the other waiters of a process wait
  locally, without a round-trip);
* release: 1;
* renew: 1 per limiter every ``lease_seconds / 3``, for all the leases it holds;
* a 429 (cool-down), a paid retry, a look at the retry hold, a retry's place in the ``rpm``
  spacing (only with ``rpm``), ``stats``: 1 each.

A process that dies holding slots gives them back when their leases expire, within
``lease_seconds`` (Redis cannot see a process on another machine die).

When Redis cannot be reached (connection refused, timed out, the server loading), the
storage does what ``on_storage_error`` says, and logs it at WARNING once per outage:

* ``"fail"`` (the default): raise :class:`~deepseek_pool.errors.StorageUnavailable`.
  A call that cannot be admitted fails with it, unsent; a release or renewal that
  cannot reach Redis is logged and dropped (its lease expires by itself);
* ``"local"``: carry on with a budget in this process's memory with the same limits
  (so N processes may together run N times the cap until Redis is back), and go back
  to Redis, probing it at most every :data:`PROBE_INTERVAL` seconds, as soon as it
  answers. Calls admitted locally are released locally.

Choose it as a URI query parameter (``redis://host/0?on_storage_error=local``, so that a
storage URI alone configures it, as ``deepseek-pool run --limiter-storage`` takes it) or
as ``RedisStorage(client, on_storage_error=...)``. Other query parameters are redis-py's
(``socket_timeout``, ``socket_connect_timeout``, ``health_check_interval`` ...).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.exceptions

from ..errors import ConfigurationError, StorageUnavailable
from ..forks import reset_after_fork
from .redis_scripts import PRELUDE, SCRIPTS, config_args, script_constants
from .rules import BudgetConfig, CoolingDelay, RateLimitSignal, budget_conflict
from .storage import BudgetSnapshot, MemoryStorage, Storage

__all__ = ["ON_STORAGE_ERROR", "RedisStorage"]

log = logging.getLogger(__name__)

#: The choices for a Redis that cannot be reached.
ON_STORAGE_ERROR = ("fail", "local")
#: While Redis is unreachable and ``on_storage_error="local"``, try it again at most this often.
PROBE_INTERVAL = 1.0
#: What counts as Redis being unreachable (anything else, a script error say, is raised).
UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _opt(value: Optional[float]) -> str:
    return "" if value is None else repr(value)


class RedisStorage(Storage):
    """Budgets in a Redis server (or cluster) shared by processes on any number of machines.

    :param client: a ``redis.Redis`` (or ``redis.cluster.RedisCluster``) client; it is
        not closed by :meth:`close` (a component closes only what it opened). Use
        :meth:`from_uri` to have the storage open its own.
    :param on_storage_error: ``"fail"`` (raise :class:`~deepseek_pool.errors.StorageUnavailable`)
        or ``"local"`` (fall back to a per-process budget until Redis answers again); see
        the module docstring.
    :param clock: for tests only: a clock to use instead of Redis's ``TIME``, so that the
        budget's rules can be checked on an injected clock.
    """

    shared = True
    leases_expire = True

    def __init__(
        self,
        client: Any,
        *,
        on_storage_error: str = "fail",
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        if on_storage_error not in ON_STORAGE_ERROR:
            raise ConfigurationError(
                f"on_storage_error must be one of {', '.join(map(repr, ON_STORAGE_ERROR))}, got {on_storage_error!r}"
            )
        if not hasattr(client, "register_script"):
            raise ConfigurationError(f"RedisStorage needs a redis-py client (redis.Redis), got {client!r}")
        self.client = client
        self.on_storage_error = on_storage_error
        self._test_clock = clock
        self._owns_client = False
        self._where = _describe(client)
        self._scripts = {name: client.register_script(PRELUDE + body) for name, body in SCRIPTS.items()}
        self._constants = script_constants()
        self._reset_local()
        reset_after_fork(self)

    def _reset_local(self) -> None:
        self._lock = threading.Lock()
        self._down_since: Optional[float] = None  # monotonic, while Redis is unreachable
        self._next_probe = 0.0
        self._local = MemoryStorage()
        self._local_leases: Set[str] = set()

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> RedisStorage:
        """``redis://[[user]:password@]host[:port][/db][?option=value...]``, or ``rediss://`` (TLS).

        ``on_storage_error`` is read from the query; the rest of the URI goes to
        ``redis.Redis.from_url``.
        """
        parts = urlsplit(uri)
        query = parse_qsl(parts.query, keep_blank_values=True)
        on_storage_error = options.get("on_storage_error", "fail")
        rest = []
        for key, value in query:
            if key == "on_storage_error":
                on_storage_error = value
            else:
                rest.append((key, value))
        url = urlunsplit(parts._replace(query=urlencode(rest)))
        try:
            client = redis.Redis.from_url(url)
        except (ValueError, TypeError) as err:
            raise ConfigurationError(f"cannot use {_redact(uri)!r} as a limiter storage: {err}") from None
        storage = cls(client, on_storage_error=on_storage_error)
        storage._owns_client = True
        return storage

    # -- running a script, and what an unreachable Redis does ------------------------------

    def _run(self, op: str, name: str, config: Optional[BudgetConfig], args: List[Any]) -> Any:
        """Run one script (raises what Redis raised; the caller decides what unreachable means)."""
        now = "" if self._test_clock is None else repr(float(self._test_clock()))
        limits = config_args(config)
        keys = [f"{{deepseek:{name}}}:state", f"{{deepseek:{name}}}:leases"]
        return self._scripts[op](keys=keys, args=[now, *limits, *self._constants, *args])

    def _redis_is_down(self) -> bool:
        """True while Redis is known to be unreachable and not yet due for another try."""
        return self._down_since is not None and time.monotonic() < self._next_probe

    def _unreachable(self, err: Exception) -> None:
        """Redis did not answer: note the outage (logged once), raise in ``"fail"`` mode."""
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
            self._next_probe = time.monotonic() + PROBE_INTERVAL
        if self.on_storage_error == "fail":
            if first:
                log.warning(
                    "the limiter's Redis at %s is unreachable (%s): calls fail until it answers", self._where, err
                )
            raise StorageUnavailable(
                f"the limiter's Redis at {self._where} is unreachable: {err} (on_storage_error='fail'; "
                "use 'local' to fall back to a per-process budget)"
            ) from err
        if first:
            log.warning(
                "the limiter's Redis at %s is unreachable (%s): falling back to a budget in this process, "
                "with the same limits, until it is back",
                self._where,
                err,
            )

    def _answered(self) -> None:
        if self._down_since is not None:
            with self._lock:
                since, self._down_since = self._down_since, None
            if since is not None:
                log.warning(
                    "the limiter's Redis at %s answers again after %.1f s: back to the shared budget",
                    self._where,
                    time.monotonic() - since,
                )

    def _shared(self, op: str, name: str, config: Optional[BudgetConfig], args: List[Any]) -> Tuple[bool, Any]:
        """(True, the script's answer), or (False, None) when Redis is down and the budget is local."""
        if self._redis_is_down() and self.on_storage_error == "local":
            return False, None
        try:
            answer = self._run(op, name, config, args)
        except UNREACHABLE as err:
            self._unreachable(err)  # raises in "fail" mode
            return False, None
        self._answered()
        return True, answer

    # -- the operations ----------------------------------------------------------------

    def clock(self) -> float:
        if self._test_clock is not None:
            return float(self._test_clock())
        seconds, micros = self.client.time()
        return float(seconds) + float(micros) / 1e6

    def start(self, name: str, config: BudgetConfig, tokens: int, lease: str, lease_seconds: float) -> float:
        self._check_process()  # before the lock: a fork from C may have copied it held
        shared, answer = self._shared("start", name, config, [tokens, lease, repr(float(lease_seconds))])
        if shared:
            text = answer.decode() if isinstance(answer, bytes) else str(answer)
            if text.startswith("cooling"):
                return CoolingDelay(text.split()[1])
            if text.startswith("ceiling"):
                raise budget_conflict(config, int(float(text.split()[1])))
            return float(text)
        delay = self._local.start(name, config, tokens, lease, lease_seconds)
        if delay == 0.0:
            with self._lock:
                self._local_leases.add(lease)
        return delay

    def finish(
        self,
        name: str,
        config: BudgetConfig,
        lease: str,
        *,
        reserved: int,
        tokens_used: Optional[int],
        earned: int,
        ok: bool,
    ) -> None:
        with self._lock:
            local = lease in self._local_leases
            self._local_leases.discard(lease)
        if not local:
            args = [lease, reserved, _opt(tokens_used), earned, "1" if ok else "0"]
            try:
                shared, _ = self._shared("finish", name, config, args)
            except StorageUnavailable:
                shared = False
            if shared:
                return
            log.debug("lease %s not released in Redis (unreachable): it expires by itself", lease)
        self._local.finish(name, config, lease, reserved=reserved, tokens_used=tokens_used, earned=earned, ok=ok)

    def rate_limited(self, name: str, config: BudgetConfig, seconds: float, signal: RateLimitSignal) -> float:
        args = [
            repr(float(seconds)),
            "" if signal.named_cap is None else str(signal.named_cap),
            "1" if signal.concurrency else "0",
            "1" if signal.sporadic else "0",
            "1" if signal.retry_after else "0",
        ]
        shared, answer = self._shared("rate_limited", name, config, args)
        local = self._local.rate_limited(name, config, seconds, signal)  # the fallback learns it too
        return float(answer) if shared else local

    def spend_retry(self, name: str, config: BudgetConfig, cost: int) -> Tuple[Optional[int], int]:
        shared, answer = self._shared("spend_retry", name, config, [cost])
        if not shared:
            return self._local.spend_retry(name, config, cost)
        paid, left = answer
        return (int(float(paid)) if paid else None), int(float(left))

    def retry_hold(self, name: str) -> float:
        shared, answer = self._shared("retry_hold", name, None, [])
        return float(answer) if shared else self._local.retry_hold(name)

    def pace(self, name: str, config: BudgetConfig) -> float:
        shared, answer = self._shared("pace", name, config, [])
        return float(answer) if shared else self._local.pace(name, config)

    def renew(self, name: str, leases: Iterable[str], lease_seconds: float) -> None:
        with self._lock:
            ids = [lease for lease in leases if lease not in self._local_leases]
        if not ids:
            return
        # An outage is logged once; a lease lasts three renewal rounds.
        with contextlib.suppress(StorageUnavailable):
            self._shared("renew", name, None, [repr(float(lease_seconds)), *ids])

    def snapshot(self, name: str, config: BudgetConfig) -> BudgetSnapshot:
        shared, answer = self._shared("snapshot", name, config, [])
        if not shared:
            return self._local.snapshot(name, config)
        values = [float(v) for v in answer]
        in_flight, cap, cooling_for, budget_left, *counters = values
        started, finished, cool_downs, retries, refused, tokens_used = (int(v) for v in counters)
        return BudgetSnapshot(
            in_flight=int(in_flight),
            cap=cap,
            cooling_for=cooling_for,
            budget_left=int(budget_left),
            started=started,
            finished=finished,
            cool_downs=cool_downs,
            retries=retries,
            retries_refused=refused,
            tokens_used=tokens_used,
        )

    @property
    def local(self) -> bool:
        """Whether the budget is this process's own now (Redis unreachable, ``on_storage_error="local"``)."""
        return self._down_since is not None and self.on_storage_error == "local"

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def after_fork(self) -> None:
        # redis-py's connection pool sees the new pid and opens the child's own sockets;
        # the parent's locks and locally admitted calls stay in the parent.
        self._reset_local()

    def __repr__(self) -> str:
        return f"RedisStorage({self._where!r}, on_storage_error={self.on_storage_error!r})"


def _describe(client: Any) -> str:
    """host:port/db of a client, for messages (never its password)."""
    try:
        kwargs: Dict[str, Any] = client.connection_pool.connection_kwargs
    except AttributeError:
        return type(client).__name__
    if "path" in kwargs:
        return f"unix:{kwargs['path']}/{kwargs.get('db', 0)}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def _redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
