"""``sqlite:////abs/path.db``: one budget for every process on this machine, standard library only.

Each rule of the budget runs in one short ``BEGIN IMMEDIATE`` transaction (SQLite's
write lock, taken at once, so two processes never both decide on a stale count), on a
database in WAL mode so that readers never wait for the writer. The budget's numbers
are one JSON row per name; leases are rows of their own, with an expiry on the wall
clock (every process on a machine reads the same one) and the owner's host and pid:
a lease whose process is gone is dropped at once, without waiting for it to expire.

Cost: a start and its end are two transactions, tens of microseconds each on a local
disk (``synchronous=NORMAL``: no fsync per commit; a crash of the machine may forget
the last moments of the budget, never corrupt it).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

from ..errors import ConfigurationError
from ..forks import reset_after_fork
from .rules import BudgetState, Lease
from .storage import TransactionalStorage

__all__ = ["SQLiteStorage"]

#: Milliseconds a transaction waits for another process's lock before failing.
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget (name TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lease (
    name TEXT NOT NULL, id TEXT NOT NULL, expires REAL NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL,
    PRIMARY KEY (name, id)
);
"""


#: Connections a forked child inherited in the middle of a transaction: kept, never closed.
_INHERITED_BUSY: List[sqlite3.Connection] = []


def _let_go_of_inherited(db: sqlite3.Connection, *, busy: bool) -> None:
    """In a forked child, put down the parent's connection before opening the child's own.

    Idle at the fork (the storage's lock was free: no thread of the parent was inside a
    transaction), it is closed. That frees only the child's copies of its file descriptors:
    POSIX locks belong to the process that took them, and the parent still holds its
    shared lock, so the close neither checkpoints nor removes the WAL. Dropping it unclosed
    did the same close in its finalizer, with a ResourceWarning since Python 3.13.
    Busy at the fork, closing would roll back, in the WAL index the processes share, the
    transaction that the parent is still writing: it is kept open and referenced instead.
    """
    if busy:
        _INHERITED_BUSY.append(db)
    else:
        db.close()


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, under another user
        return False
    return False


class _SQLiteState(BudgetState):
    def __init__(self, connection: sqlite3.Connection, name: str, host: str) -> None:
        super().__init__()
        self._db = connection
        self._name = name
        self._host = host

    def alive(self, now: float) -> int:
        db, name = self._db, self._name
        db.execute("DELETE FROM lease WHERE name = ? AND expires <= ?", (name, now))
        pids = [
            row[0]
            for row in db.execute("SELECT DISTINCT pid FROM lease WHERE name = ? AND host = ?", (name, self._host))
        ]
        gone = [pid for pid in pids if pid != os.getpid() and _process_gone(pid)]
        if gone:
            db.executemany(
                "DELETE FROM lease WHERE name = ? AND host = ? AND pid = ?", [(name, self._host, p) for p in gone]
            )
        (count,) = db.execute("SELECT COUNT(*) FROM lease WHERE name = ?", (name,)).fetchone()
        return int(count)

    def by_share(self, now: float) -> Dict[str, int]:
        # A lease's share follows the last '/' of its id (shares.lease_share): rtrim strips
        # every character but '/' from the end, leaving the id up to that slash.
        rows = self._db.execute(
            "SELECT substr(id, length(rtrim(id, replace(id, '/', ''))) + 1), COUNT(*) FROM lease"
            " WHERE name = ? AND expires > ? AND instr(id, '/') > 0 GROUP BY 1",
            (self._name, now),
        )
        return dict(rows)

    def add(self, lease: Lease) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO lease (name, id, expires, host, pid) VALUES (?, ?, ?, ?, ?)",
            (self._name, lease.id, lease.expires, self._host, lease.pid),
        )

    def drop(self, lease_id: str) -> bool:
        cursor = self._db.execute("DELETE FROM lease WHERE name = ? AND id = ?", (self._name, lease_id))
        return cursor.rowcount > 0

    def renew(self, lease_ids: Any, expires: float) -> None:
        self._db.executemany(
            "UPDATE lease SET expires = ? WHERE name = ? AND id = ?", [(expires, self._name, i) for i in lease_ids]
        )


class SQLiteStorage(TransactionalStorage):
    """Budgets in an SQLite database file shared by the processes of one machine."""

    shared = True
    leases_expire = True

    def __init__(self, path: str) -> None:
        if not path:
            raise ConfigurationError("sqlite storage needs a file path: sqlite:////var/tmp/deepseek-budget.db")
        self.path = path
        self._host = socket.gethostname()
        self._lock = threading.Lock()
        self._db: Optional[sqlite3.Connection] = None
        self._pid = os.getpid()
        self._closed = False
        reset_after_fork(self)
        self._connect()  # fail now, with a clear error, if the file cannot be used

    @classmethod
    def from_uri(cls, uri: str) -> SQLiteStorage:
        """``sqlite:////abs/path.db`` (four slashes: an absolute path) or ``sqlite:///rel/path.db``."""
        path = uri.split("://", 1)[1]
        if path.startswith("/"):
            path = path[1:]  # sqlite:///x -> x (relative), sqlite:////x -> /x (absolute)
        return cls(path)

    def _connect(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._disconnect()  # forked without after_fork(): the parent's connection
        if self._db is None:
            deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
            while True:
                try:
                    db = self._open()
                    break
                except sqlite3.OperationalError as err:
                    # Switching to WAL, or creating the tables, while another process does the
                    # same can answer "locked" at once, without waiting: try again shortly.
                    if "locked" not in str(err) or time.monotonic() > deadline:
                        raise ConfigurationError(f"cannot use {self.path!r} as a limiter storage: {err}") from None
                    time.sleep(0.01)
                except sqlite3.Error as err:
                    raise ConfigurationError(f"cannot use {self.path!r} as a limiter storage: {err}") from None
            self._db = db
            self._pid = os.getpid()
        return self._db

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def clock(self) -> float:
        return time.time()

    @contextlib.contextmanager
    def transaction(self, name: str) -> Iterator[BudgetState]:
        self._check_process()  # before the lock: a fork from C may have copied it held
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    state = _SQLiteState(db, name, self._host)
                    row = db.execute("SELECT state FROM budget WHERE name = ?", (name,)).fetchone()
                    if row is not None:
                        state.load_scalars(json.loads(row[0]))
                    yield state
                    db.execute(
                        "INSERT OR REPLACE INTO budget (name, state) VALUES (?, ?)",
                        (name, json.dumps(state.scalars())),
                    )
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                if self._closed:
                    # Used after close() (a lease renewer that woke as its limiter closed):
                    # no connection outlives the call, so none is left for the finalizer.
                    self._disconnect()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._disconnect()

    def _disconnect(self) -> None:
        # In a forked child that never called after_fork(), the parent's connection: that this
        # lock was free to take means no transaction was open on it, so it is closed too.
        if self._db is not None:
            self._db.close()
        self._db = None

    def after_fork(self) -> None:
        # A connection must not cross a fork: the child opens its own.
        busy = self._lock.locked()  # a thread of the parent was inside a transaction
        self._lock = threading.Lock()
        if self._db is not None and self._pid != os.getpid():
            _let_go_of_inherited(self._db, busy=busy)
        self._db = None

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"
