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

* the budget's epoch (:data:`_EPOCH`), a token kept with its state: a process's first
  start learns it (1, once per budget name). A Redis that lost the budget (restarted
  without persistence) has a new one: each sharer's next start or renewal learns it, puts
  back its running calls' leases (1), and its new calls wait a third of ``lease_seconds``,
  until every sharer's renewal has put its own back;
* acquire: 1 when a slot is free; a waiting limiter's head thread polls with 1 every
  :data:`~deepseek_pool.budget.retries.SHARED_POLL_INTERVAL` (the other waiters of a process wait
  locally, without a round-trip);
* release: 1;
* renew: 1 per limiter every ``lease_seconds / 3``, for all the leases it holds;
* a 429 (cool-down), a paid retry, a look at the retry hold, a retry's place in the ``rpm``
  spacing (only with ``rpm``), ``stats``: 1 each.

A process that dies holding slots gives them back when their leases expire, within
``lease_seconds`` of its last renewal (Redis cannot see a process on another machine die):
choose ``lease_seconds`` at least as long as a call may run (``call_timeout``) for DeepSeek
to have stopped counting a killed process's requests by then.

**Redis's clock** is the server's wall clock (``TIME``). NTP slews it, which changes
nothing here; a step of S seconds does, until the budget's times catch up: a step back
holds ``rpm`` spacing and cool-downs up to S seconds longer, and keeps a dead process's
leases S seconds longer; a step forward ends them early, and one of more than two thirds
of ``lease_seconds`` expires the leases of running calls before their renewal, so new
calls may start past the cap until those end. (tests/test_storage_faults.py shows both,
with the script's time source injected.)

When Redis cannot be reached (connection refused, timed out, the server loading), the
storage does what ``on_storage_error`` says, and logs it at WARNING once per outage:

* ``"fail"`` (the default): raise :class:`~deepseek_pool.errors.StorageUnavailable`.
  A call that cannot be admitted fails with it, unsent (at once, without a round-trip,
  for :data:`PROBE_INTERVAL` after a Redis that timed out). A call already sent keeps its
  own outcome: its release, renewal, 429 and the wait before a retry fall back to this process's
  memory, and a retry is refused (:class:`~deepseek_pool.errors.RetryBudgetExceeded`, so
  the call ends with the error it got); each is counted in ``storage_errors``;
* ``"local"``: carry on with a budget in this process's memory with the same limits
  (so N processes may together run N times the cap until Redis is back), and go back
  to Redis, probing it at most every :data:`PROBE_INTERVAL` seconds, as soon as it
  answers. Calls admitted locally are released locally.

Choose it as a URI query parameter (``redis://host/0?on_storage_error=local``, so that a
storage URI alone configures it, as ``deepseek-pool run --limiter-storage`` takes it) or
as ``RedisStorage(client, on_storage_error=...)``. Other query parameters are redis-py's
(``socket_timeout``, ``socket_connect_timeout``, ``health_check_interval`` ...). A client
made from a URI waits at most :data:`SOCKET_CONNECT_TIMEOUT` to connect and
:data:`SOCKET_TIMEOUT` for an answer, and tries a failed command once more (a pooled
connection that a restart closed), so a Redis that drops packets costs an admission
about 2 s, not redis-py's default of minutes (5 s timeouts, 10 retries with backoff).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.exceptions

from ..errors import ConfigurationError, RetryBudgetExceeded, StorageUnavailable
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
#: Seconds a client made from a URI waits to connect, unless the URI says otherwise.
SOCKET_CONNECT_TIMEOUT = 1.0
#: Seconds it waits for an answer (a script here runs in microseconds), unless the URI says otherwise.
SOCKET_TIMEOUT = 1.0
#: Times it tries a command again after a connection error or a timeout, at once.
COMMAND_RETRIES = 1

#: The budget's epoch, run before start and renew (the caller's known epoch is the first of
#: the operation's arguments): a token made with the budget's state. A Redis that lost the
#: budget (restarted without persistence, or its keys expired) makes another, and a caller
#: that knew the old one is told: its running calls' leases are gone from the count.
_EPOCH = """
local known_epoch = ARGV[A]
A = A + 1
local epoch = redis.call('HGET', state_key, 'epoch')
if not epoch then
  local t = redis.call('TIME')
  epoch = t[1] .. '.' .. t[2]
  redis.call('HSET', state_key, 'epoch', epoch)
  redis.call('EXPIRE', state_key, TTL)
end
"""
#: start: a caller that does not know the epoch learns it, and is not admitted this time.
_START_EPOCH = (
    _EPOCH
    + """
if known_epoch ~= epoch then return 'epoch ' .. epoch end
"""
)
#: renew: a caller that knew another epoch puts its leases back (they are its running calls).
_RENEW_EPOCH = (
    _EPOCH
    + """
if known_epoch ~= epoch then
  local expires = now + tonumber(ARGV[A])
  for i = A + 1, #ARGV do redis.call('ZADD', leases_key, expires, ARGV[i]) end
  redis.call('EXPIRE', leases_key, TTL)
  return 'epoch ' .. epoch
end
"""
)
#: Put back leases that Redis no longer has (a new epoch), keeping any it has.
_RESTORE = """
local expires = now + tonumber(ARGV[A])
for i = A + 1, #ARGV do redis.call('ZADD', leases_key, 'NX', expires, ARGV[i]) end
redis.call('EXPIRE', leases_key, TTL)
return 'ok'
"""
#: Seconds added to the hold after a lost budget (a third of ``lease_seconds``), for the
#: sharers' renewals to arrive.
RESTART_HOLD_MARGIN = 0.05


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
        self._scripts["start"] = client.register_script(PRELUDE + _START_EPOCH + SCRIPTS["start"])
        self._scripts["renew"] = client.register_script(PRELUDE + _RENEW_EPOCH + SCRIPTS["renew"])
        self._scripts["restore"] = client.register_script(PRELUDE + _RESTORE)
        self._constants = script_constants()
        self._reset_local()
        reset_after_fork(self)

    def _reset_local(self) -> None:
        self._lock = threading.Lock()
        self._down_since: Optional[float] = None  # monotonic, while Redis is unreachable
        self._next_probe = 0.0
        self._timed_out = False  # the outage is a Redis that does not answer (not one that refuses)
        self._local = MemoryStorage()
        self._local_leases: Set[str] = set()
        #: leases admitted by Redis and not yet finished, by budget name, with their lease_seconds
        self._running: Dict[str, Tuple[float, Set[str]]] = {}
        #: budget name -> monotonic time before which it admits nothing (Redis lost it: see _lost)
        self._hold_until: Dict[str, float] = {}
        #: budget name -> its epoch, as this process last saw it (see _EPOCH)
        self._epochs: Dict[str, str] = {}

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
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:
            # Keyword defaults: the URI's own socket_timeout/socket_connect_timeout win.
            client = redis.Redis.from_url(
                url,
                socket_connect_timeout=SOCKET_CONNECT_TIMEOUT,
                socket_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), COMMAND_RETRIES),
            )
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
        script = self._scripts[op]
        try:
            return script(keys=keys, args=[now, *limits, *self._constants, *args])
        except redis.exceptions.NoScriptError:  # the server restarted between the script's load and its run
            return script(keys=keys, args=[now, *limits, *self._constants, *args])

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
            self._timed_out = isinstance(err, redis.exceptions.TimeoutError)
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
        if self._redis_is_down():
            if self.on_storage_error == "local":
                return False, None
            if self._timed_out:  # a refused connection costs nothing to try again; a silent Redis does
                raise StorageUnavailable(
                    f"the limiter's Redis at {self._where} is unreachable (on_storage_error='fail'; tried again "
                    f"in at most {PROBE_INTERVAL} s)"
                )
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

    def _new_epoch(self, name: str, answer: str, lease_seconds: float) -> bool:
        """A script said the budget's epoch is another: learn it; True when Redis lost the budget.

        Lost, it lost the other sharers' leases too; each puts its own back at its next renewal
        (every third of ``lease_seconds``), so this process puts its own back now and admits
        nothing of the budget until then.
        """
        epoch = answer.split()[1]
        with self._lock:
            known = self._epochs.get(name)
            self._epochs[name] = epoch
            running = list(self._running.get(name, (0.0, set()))[1])
        if known is None or known == epoch:
            return False  # first contact (of this thread, or of another just now)
        if running:
            self._run("restore", name, None, [repr(float(lease_seconds)), *running])
        with self._lock:
            self._hold_until[name] = time.monotonic() + lease_seconds / 3 + RESTART_HOLD_MARGIN
        log.warning(
            "the limiter's Redis at %s lost the budget %r (restarted without persistence?): new calls wait "
            "%.1f s for every sharer's running calls to be counted again",
            self._where,
            name,
            lease_seconds / 3,
        )
        return True

    def _after_send(self, op: str, name: str, config: Optional[BudgetConfig], args: List[Any]) -> Tuple[bool, Any]:
        """:meth:`_shared` for what follows a sent call: an outage in ``"fail"`` mode is counted and
        answered from the local budget, never raised in place of the call's outcome."""
        try:
            return self._shared(op, name, config, args)
        except StorageUnavailable as err:
            self._count_absorbed(op, err)
            return False, None

    def _count_absorbed(self, op: str, err: BaseException) -> None:
        with self._lock:
            self.storage_errors += 1
        log.debug("the limiter's Redis at %s missed a %s (%s): the call keeps its outcome", self._where, op, err)

    def start(
        self,
        name: str,
        config: BudgetConfig,
        tokens: int,
        lease: str,
        lease_seconds: float,
        ends_within: Optional[float] = None,
    ) -> float:
        # ends_within is not used: a lease ends lease_seconds after its last renewal (see above).
        self._check_process()  # before the lock: a fork from C may have copied it held
        if self._hold_until:
            hold = self._hold_until.get(name, 0.0) - time.monotonic()
            if hold > 0.0:
                return hold
        args = [self._epochs.get(name, ""), tokens, lease, repr(float(lease_seconds))]
        shared, answer = self._shared("start", name, config, args)
        if shared:
            text = answer.decode() if isinstance(answer, bytes) else str(answer)
            if text.startswith("epoch"):
                if self._new_epoch(name, text, lease_seconds):
                    return lease_seconds / 3 + RESTART_HOLD_MARGIN
                return self.start(name, config, tokens, lease, lease_seconds, ends_within)
            if text.startswith("cooling"):
                return CoolingDelay(text.split()[1])
            if text.startswith("ceiling"):
                raise budget_conflict(config, int(float(text.split()[1])))
            delay = float(text)
            with self._lock:
                running = self._running.setdefault(name, (lease_seconds, set()))[1]
                if delay == 0.0:
                    running.add(lease)
            return delay
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
            running = self._running.get(name)
            if running is not None:
                running[1].discard(lease)
        if not local:
            args = [lease, reserved, _opt(tokens_used), earned, "1" if ok else "0"]
            shared, _ = self._after_send("finish", name, config, args)
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
        shared, answer = self._after_send("rate_limited", name, config, args)
        local = self._local.rate_limited(name, config, seconds, signal)  # the fallback learns it too
        return float(answer) if shared else local

    def spend_retry(self, name: str, config: BudgetConfig, cost: int) -> Tuple[Optional[int], int]:
        try:
            shared, answer = self._shared("spend_retry", name, config, [cost])
        except StorageUnavailable as err:
            # "fail": nothing is sent without Redis, a retry neither; the call ends with its own error.
            self._count_absorbed("spend_retry", err)
            raise RetryBudgetExceeded(f"not retried: {err}") from err
        if not shared:
            return self._local.spend_retry(name, config, cost)
        paid, left = answer
        return (int(float(paid)) if paid else None), int(float(left))

    def retry_hold(self, name: str) -> float:
        shared, answer = self._after_send("retry_hold", name, None, [])
        return float(answer) if shared else self._local.retry_hold(name)

    def pace(self, name: str, config: BudgetConfig) -> float:
        shared, answer = self._after_send("pace", name, config, [])
        return float(answer) if shared else self._local.pace(name, config)

    def renew(self, name: str, leases: Iterable[str], lease_seconds: float) -> None:
        with self._lock:
            ids = [lease for lease in leases if lease not in self._local_leases]
        if not ids:
            return
        # An outage is logged once; a lease lasts three renewal rounds.
        shared, answer = self._after_send(
            "renew", name, None, [self._epochs.get(name, ""), repr(float(lease_seconds)), *ids]
        )
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        if shared and text.startswith("epoch"):
            self._new_epoch(name, text, lease_seconds)

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
