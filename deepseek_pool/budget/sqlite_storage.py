"""``sqlite:////abs/path.db``: one budget for every process on this machine, standard library only.

Each rule of the budget runs in one short ``BEGIN IMMEDIATE`` transaction (SQLite's
write lock, taken at once, so two processes never both decide on a stale count), on a
database in WAL mode so that readers never wait for the writer. The budget's numbers
are one JSON row per name; leases are rows of their own.

**The clock** is the host's monotonic ``CLOCK_BOOTTIME`` on Linux: one clock for every
process and container of the machine (without a time namespace of their own), which a
step of the wall clock (NTP, an operator, a VM resumed) does not move, so ``rpm`` spacing,
cool-downs and lease expiries neither stall nor end early. The database records which
boot its times belong to; after a reboot they are reset (no process of the old boot is
alive). Elsewhere it is the wall clock, with the problem that solves.

**Leases** carry the owner's pid and its :func:`~deepseek_pool.forks.pid_scope` (boot id
and PID namespace), and the call's deadline when the limiter knows it. A lease ends:

* its owner alive (a pid this process can check): when its renewals stop (``expires``);
* its owner dead: at the call's deadline, as DeepSeek may work on, and count, a request
  whose client was killed until then; without a deadline, at ``expires``;
* its owner out of sight (another PID namespace or machine, an older library): at the
  later of the two, as a live owner keeps renewing.

**Faults**: a locked database is waited for (``busy_timeout``, 10 s by default, set as
``sqlite:////path.db?busy_timeout=2``). Past that, admission fails with
:class:`~deepseek_pool.errors.StorageUnavailable` (the call is not sent); what follows a
sent call (its release, a cool-down, a retry's wait, a renewal) is logged, counted in
``storage_errors``, and given up: the call keeps its outcome and the lease expires.

Cost: a start and its end are two transactions, tens of microseconds each on a local
disk (``synchronous=NORMAL``: no fsync per commit; a crash of the machine may forget
the last moments of the budget, never corrupt it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar
from urllib.parse import parse_qsl

from ..errors import ConfigurationError, StorageUnavailable
from ..forks import pid_scope, reset_after_fork
from .rules import BudgetConfig, BudgetState, Lease, RateLimitSignal
from .storage import BudgetSnapshot, TransactionalStorage

__all__ = ["SQLiteStorage", "host_clock"]

#: Seconds a transaction waits for another process's lock before it gives up.
BUSY_TIMEOUT = 10.0
#: The budget's times on the host clock, reset when the database meets another boot.
TIME_SCALARS = ("cap_hold_until", "next_start", "tpm_last", "cool_until", "retry_hold_until")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget (name TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lease (
    name TEXT NOT NULL, id TEXT NOT NULL, expires REAL NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    PRIMARY KEY (name, id)
);
CREATE TABLE IF NOT EXISTS clock (id INTEGER PRIMARY KEY CHECK (id = 0), source TEXT NOT NULL);
"""
#: Columns added since the first schema (a database made by an older version gets them).
_LEASE_COLUMNS = (("scope", "TEXT NOT NULL DEFAULT ''"), ("deadline", "REAL"))

T = TypeVar("T")


def host_clock() -> Tuple[str, Callable[[], float]]:
    """The clock every process of this host reads alike, and a name that changes with each boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
    except OSError:
        boot_id = ""
    if boot_id and hasattr(time, "CLOCK_BOOTTIME"):
        return f"boottime:{boot_id}", lambda: time.clock_gettime(time.CLOCK_BOOTTIME)
    return "wall", time.time


#: Connections a forked child inherited: kept, never used or closed (see _let_go_of_inherited).
_INHERITED: List[sqlite3.Connection] = []


def _let_go_of_inherited(db: sqlite3.Connection) -> None:
    """In a forked child, put down the parent's connection before opening the child's own.

    It is kept referenced, never used nor closed: a close runs SQLite code that may wait
    for a mutex a thread of the parent held at the fork (a fork from C, as uWSGI's, gives no
    moment when none is held), and hangs; busy at the fork, it would also roll back, in the
    WAL index the processes share, the transaction the parent is still writing. Dropping it
    unclosed would close it in its finalizer (and warn, since Python 3.13). One idle
    connection per fork is the price, as for the response cache's store.
    """
    _INHERITED.append(db)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, under another user
        return False
    return False


def _locked(err: sqlite3.Error) -> bool:
    text = str(err).lower()
    return isinstance(err, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class _SQLiteState(BudgetState):
    def __init__(self, connection: sqlite3.Connection, name: str, host: str, scope: str) -> None:
        super().__init__()
        self._db = connection
        self._name = name
        self._host = host
        self._scope = scope

    def alive(self, now: float) -> int:
        db, name = self._db, self._name
        candidates = db.execute(
            "SELECT id, scope, pid, expires, deadline FROM lease WHERE name = ? AND (expires <= ? OR deadline <= ?)",
            (name, now, now),
        ).fetchall()
        ended = [(name, row[0]) for row in candidates if self._ended(now, *row[1:])]
        if ended:
            db.executemany("DELETE FROM lease WHERE name = ? AND id = ?", ended)
        (count,) = db.execute("SELECT COUNT(*) FROM lease WHERE name = ?", (name,)).fetchone()
        return int(count)

    def _ended(self, now: float, scope: str, pid: int, expires: float, deadline: Optional[float]) -> bool:
        """Whether a lease that expired, or whose call's deadline passed, is over (see the module docstring)."""
        if scope and scope == self._scope:
            if pid == os.getpid() or not _process_gone(pid):
                return expires <= now  # alive: its renewals say
            return (expires if deadline is None else deadline) <= now  # dead: DeepSeek may work on until then
        return max(expires, -math.inf if deadline is None else deadline) <= now  # cannot tell: both

    def by_share(self, now: float) -> Dict[str, int]:
        # Called after alive(), which deleted the leases that ended: every lease left counts.
        # A lease's share follows the last '/' of its id (shares.lease_share): rtrim strips
        # every character but '/' from the end, leaving the id up to that slash.
        rows = self._db.execute(
            "SELECT substr(id, length(rtrim(id, replace(id, '/', ''))) + 1), COUNT(*) FROM lease"
            " WHERE name = ? AND instr(id, '/') > 0 GROUP BY 1",
            (self._name,),
        )
        return dict(rows)

    def add(self, lease: Lease) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO lease (name, id, expires, host, pid, scope, deadline) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self._name, lease.id, lease.expires, self._host, lease.pid, self._scope, getattr(lease, "deadline", None)),
        )

    def drop(self, lease_id: str) -> bool:
        cursor = self._db.execute("DELETE FROM lease WHERE name = ? AND id = ?", (self._name, lease_id))
        return cursor.rowcount > 0

    def renew(self, lease_ids: Any, expires: float) -> None:
        self._db.executemany(
            "UPDATE lease SET expires = ? WHERE name = ? AND id = ?", [(expires, self._name, i) for i in lease_ids]
        )


class SQLiteStorage(TransactionalStorage):
    """Budgets in an SQLite database file shared by the processes of one machine.

    :param path: the database file (made if missing).
    :param busy_timeout: most seconds an operation waits for another process's lock.
    :param clock: for tests only: the clock to use instead of the host's (see the module docstring).
    """

    shared = True
    leases_expire = True

    def __init__(
        self, path: str, *, busy_timeout: float = BUSY_TIMEOUT, clock: Optional[Callable[[], float]] = None
    ) -> None:
        if not path:
            raise ConfigurationError("sqlite storage needs a file path: sqlite:////var/tmp/deepseek-budget.db")
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)) or not busy_timeout >= 0:
            raise ConfigurationError(f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}")
        self.path = path
        self.busy_timeout = float(busy_timeout)
        self._host = socket.gethostname()
        self._clock_source, self._clock = host_clock() if clock is None else ("injected", clock)
        self._lock = threading.Lock()
        self._db: Optional[sqlite3.Connection] = None
        self._pid = os.getpid()
        self._scope = ""
        self._closed = False
        reset_after_fork(self)
        self._connect()  # fail now, with a clear error, if the file cannot be used

    @classmethod
    def from_uri(cls, uri: str) -> SQLiteStorage:
        """``sqlite:////abs/path.db`` (four slashes: an absolute path) or ``sqlite:///rel/path.db``,
        with an optional ``?busy_timeout=SECONDS``."""
        path, _, query = uri.split("://", 1)[1].partition("?")
        if path.startswith("/"):
            path = path[1:]  # sqlite:///x -> x (relative), sqlite:////x -> /x (absolute)
        options = dict(parse_qsl(query, keep_blank_values=True))
        busy_timeout = options.pop("busy_timeout", None)
        if options:
            raise ConfigurationError(f"unknown sqlite storage options {sorted(options)} in {uri!r}")
        if busy_timeout is None:
            return cls(path)
        try:
            seconds = float(busy_timeout)
        except ValueError:
            raise ConfigurationError(f"busy_timeout must be seconds, got {busy_timeout!r} in {uri!r}") from None
        return cls(path, busy_timeout=seconds)

    def _connect(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._disconnect()  # forked without after_fork(): the parent's connection
        if self._db is None:
            deadline = time.monotonic() + max(self.busy_timeout, 1.0)
            while True:
                try:
                    db = self._open()
                    break
                except sqlite3.OperationalError as err:
                    # Switching to WAL, or creating the tables, while another process does the
                    # same can answer "locked" at once, without waiting: try again shortly.
                    if not _locked(err) or time.monotonic() > deadline:
                        raise ConfigurationError(f"cannot use {self.path!r} as a limiter storage: {err}") from None
                    time.sleep(0.01)
                except sqlite3.Error as err:
                    raise ConfigurationError(f"cannot use {self.path!r} as a limiter storage: {err}") from None
            self._db = db
            self._pid = os.getpid()
            self._scope = pid_scope() or f"unchecked:{os.urandom(8).hex()}"  # a scope nobody else has
        return self._db

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.execute("BEGIN IMMEDIATE")
            try:
                self._upgrade(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """Add the lease columns an older database lacks; reset times kept on another boot's clock."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(lease)")}
        for column, kind in _LEASE_COLUMNS:
            if column not in columns:
                db.execute(f"ALTER TABLE lease ADD COLUMN {column} {kind}")
        if self._clock_source == "injected":
            return
        row = db.execute("SELECT source FROM clock WHERE id = 0").fetchone()
        if row is not None and row[0] == self._clock_source:
            return
        # Another boot (or the wall clock of an older version): its processes are gone and
        # its times mean nothing on this clock.
        db.execute("DELETE FROM lease")
        for name, text in db.execute("SELECT name, state FROM budget").fetchall():
            values = json.loads(text)
            values.update({key: repr(-math.inf) for key in TIME_SCALARS if key in values})
            db.execute("UPDATE budget SET state = ? WHERE name = ?", (json.dumps(values), name))
        db.execute("INSERT OR REPLACE INTO clock (id, source) VALUES (0, ?)", (self._clock_source,))

    def clock(self) -> float:
        return self._clock()

    @contextlib.contextmanager
    def transaction(self, name: str) -> Iterator[BudgetState]:
        self._check_process()  # before the lock: a fork from C may have copied it held
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    state = _SQLiteState(db, name, self._host, self._scope)
                    row = db.execute("SELECT state FROM budget WHERE name = ?", (name,)).fetchone()
                    if row is not None:
                        state.load_scalars(json.loads(row[0]))
                    yield state
                    db.execute(
                        "INSERT OR REPLACE INTO budget (name, state) VALUES (?, ?)",
                        (name, json.dumps(state.scalars())),
                    )
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # a failed COMMIT leaves it open: the next BEGIN would fail
                        db.execute("ROLLBACK")
                    raise
            finally:
                if self._closed:
                    # Used after close() (a lease renewer that woke as its limiter closed):
                    # no connection outlives the call, so none is left for the finalizer.
                    self._disconnect()

    # -- faults: retried within busy_timeout; then admission fails, the rest is absorbed ----

    def _retrying(self, operation: Callable[[], T]) -> T:
        """Run ``operation``, again while the database answers "locked", for ``busy_timeout`` in all."""
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.005
        while True:
            try:
                return operation()
            except sqlite3.Error as err:
                if self._closed or not _locked(err) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)  # "locked" at once, without SQLite's own wait (WAL recovery, a checkpoint)
            pause = min(pause * 2, 0.1)

    def _after_send(self, what: str, operation: Callable[[], T], fallback: T) -> T:
        try:
            return self._retrying(operation)
        except (sqlite3.Error, ConfigurationError) as err:  # ConfigurationError: the file cannot be opened again
            self._absorbed(what, err)
            return fallback

    def start(
        self,
        name: str,
        config: BudgetConfig,
        tokens: int,
        lease: str,
        lease_seconds: float,
        ends_within: Optional[float] = None,
    ) -> float:
        try:
            return self._retrying(
                lambda: TransactionalStorage.start(self, name, config, tokens, lease, lease_seconds, ends_within)
            )
        except sqlite3.Error as err:
            raise StorageUnavailable(f"the limiter's database {self.path!r} cannot be used: {err} (not sent)") from err

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
        def release() -> None:
            TransactionalStorage.finish(
                self, name, config, lease, reserved=reserved, tokens_used=tokens_used, earned=earned, ok=ok
            )

        self._after_send("release a slot", release, None)

    def rate_limited(self, name: str, config: BudgetConfig, seconds: float, signal: RateLimitSignal) -> float:
        return self._after_send(
            "record a 429",
            lambda: TransactionalStorage.rate_limited(self, name, config, seconds, signal),
            config.ceiling,
        )

    def spend_retry(self, name: str, config: BudgetConfig, cost: int) -> Tuple[Optional[int], int]:
        allowed: Tuple[Optional[int], int] = (0, 0)  # unpaid: a locked database refuses no retry
        return self._after_send(
            "pay for a retry", lambda: TransactionalStorage.spend_retry(self, name, config, cost), allowed
        )

    def retry_hold(self, name: str) -> float:
        return self._after_send("read the retry hold", lambda: TransactionalStorage.retry_hold(self, name), 0.0)

    def pace(self, name: str, config: BudgetConfig) -> float:
        return self._after_send("space a retry", lambda: TransactionalStorage.pace(self, name, config), 0.0)

    def renew(self, name: str, leases: Iterable[str], lease_seconds: float) -> None:
        ids = list(leases)
        self._after_send("renew leases", lambda: TransactionalStorage.renew(self, name, ids, lease_seconds), None)

    def snapshot(self, name: str, config: BudgetConfig) -> BudgetSnapshot:
        try:
            return self._retrying(lambda: TransactionalStorage.snapshot(self, name, config))
        except sqlite3.Error as err:
            raise StorageUnavailable(f"the limiter's database {self.path!r} cannot be used: {err}") from err

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._disconnect()

    def _disconnect(self) -> None:
        if self._db is not None:
            if self._pid != os.getpid():  # a forked child that never called after_fork()
                _let_go_of_inherited(self._db)
            else:
                self._db.close()
        self._db = None

    def after_fork(self) -> None:
        # A connection must not cross a fork: the child opens its own.
        self._lock = threading.Lock()
        if self._db is not None and self._pid != os.getpid():
            _let_go_of_inherited(self._db)
        self._db = None

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"
