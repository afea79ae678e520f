"""Where cached answers live, chosen by URI as the limiter's storages are.

``memory://`` (this process, until it ends), ``sqlite:////abs/path.db`` (processes on one
machine; ``sqlite:///rel/path.db`` is relative), ``redis://`` and ``rediss://`` (many
machines; :mod:`deepseek_pool.cache.redis_store`, imported only when used, extra
``deepseek-pool[redis]``). A store keeps bytes under a key and knows nothing of what they
mean (:mod:`~deepseek_pool.cache.entries` does). A store is opened and checked when the
cache is made (:mod:`~deepseek_pool.cache.store_uri`, the one module that knows them all),
so an unknown scheme or a store that cannot be read or written is refused before any
request is sent, with a message naming it.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..errors import ConfigurationError
from ..forks import ProcessBound, reset_after_fork

__all__ = ["CacheStore", "MemoryStore", "SQLiteStore", "redact", "split_options"]

#: Milliseconds a SQLite write waits for another process's lock.
BUSY_TIMEOUT_MS = 10_000

#: Connections a forked child inherited: kept, never used or closed (see SQLiteStore._after_fork).
_INHERITED: List[sqlite3.Connection] = []

_SCHEMA = "CREATE TABLE IF NOT EXISTS deepseek_response (key TEXT PRIMARY KEY, value BLOB NOT NULL)"


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***``, for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def split_options(uri: str, names: Tuple[str, ...]) -> Tuple[str, Dict[str, str]]:
    """Take the query parameters ``names`` (the cache's own, such as ``ttl``) out of ``uri``."""
    base, _, query = uri.partition("?")  # not urlsplit().geturl(): it turns memory:// into memory:
    ours: Dict[str, str] = {}
    rest: List[str] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in names:
            ours[key] = value
        else:
            rest.append(urlencode({key: value}))
    return (f"{base}?{'&'.join(rest)}" if rest else base), ours


class CacheStore:
    """Bytes under keys. Every method may raise; the cache turns a failure into a miss and a warning."""

    #: the store's URI, without a password: for messages
    name = "store"

    def check(self) -> None:
        """Read and write once, or raise :class:`~deepseek_pool.errors.ConfigurationError` saying why."""

    def get(self, key: str) -> Optional[bytes]:
        raise NotImplementedError

    def put(self, key: str, value: bytes, ttl: Optional[float]) -> None:
        """Keep ``value`` under ``key``, replacing what was there in one step; ``ttl``: seconds, a hint."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def clear(self) -> int:
        """Remove every entry; return how many there were."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of connections (the entries stay)."""


class MemoryStore(CacheStore):
    """``memory://``: a dict of this process (for tests and notebooks)."""

    name = "memory://"

    def __init__(self) -> None:
        self._entries: Dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[bytes]:
        return self._entries.get(key)

    def put(self, key: str, value: bytes, ttl: Optional[float]) -> None:
        self._entries[key] = value

    def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
        return count


class SQLiteStore(CacheStore, ProcessBound):
    """``sqlite:////abs/path.db``: one file that every process on the machine shares.

    WAL mode, so readers never wait for a writer; an entry is one row, replaced in one
    statement, so a reader sees a whole entry or none. One connection per process, used
    under a lock (a read or write takes tens of microseconds, against seconds for a call).
    """

    def __init__(self, path: str, *, name: Optional[str] = None) -> None:
        self.path = path
        self.name = name or f"sqlite:///{path}"
        self._lock = threading.Lock()
        self._db: Optional[sqlite3.Connection] = None
        reset_after_fork(self)

    @classmethod
    def from_uri(cls, uri: str) -> SQLiteStore:
        """``sqlite:////abs/path.db`` (four slashes: an absolute path) or ``sqlite:///rel/path.db``."""
        path = uri.split("://", 1)[1].split("?", 1)[0]
        if path.startswith("/"):
            path = path[1:]  # sqlite:///x -> x (relative), sqlite:////x -> /x (absolute)
        if not path:
            raise ConfigurationError(f"a sqlite cache needs a file: sqlite:////abs/path.db, got {uri!r}")
        return cls(path, name=uri)

    def _connect(self) -> sqlite3.Connection:
        db = self._db
        if db is None:
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            try:
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(_SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
        return db

    def check(self) -> None:
        try:
            with self._lock:
                db = self._connect()
                db.execute("SELECT value FROM deepseek_response LIMIT 1").fetchall()
                db.execute("BEGIN IMMEDIATE")  # the write lock: a read-only file fails here
                db.execute("ROLLBACK")
        except (sqlite3.Error, OSError) as err:
            raise ConfigurationError(f"cannot use {self.name!r} as a response cache: {err}") from None

    def get(self, key: str) -> Optional[bytes]:
        self._check_process()
        with self._lock:
            row = self._connect().execute("SELECT value FROM deepseek_response WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, value: bytes, ttl: Optional[float]) -> None:
        self._check_process()
        with self._lock:
            self._connect().execute(
                "INSERT OR REPLACE INTO deepseek_response (key, value) VALUES (?, ?)", (key, sqlite3.Binary(value))
            )

    def delete(self, key: str) -> None:
        self._check_process()
        with self._lock:
            self._connect().execute("DELETE FROM deepseek_response WHERE key = ?", (key,))

    def clear(self) -> int:
        self._check_process()
        with self._lock:
            return self._connect().execute("DELETE FROM deepseek_response").rowcount

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    def _after_fork(self) -> None:
        """In a forked child: the parent's connection is not ours to use; open our own at the next use.

        The parent's is kept referenced, never closed: a close could wait forever on a lock
        of SQLite's that a thread of the parent held at the fork, and a finalizer's close
        warns (Python 3.13). One idle connection per fork is the price.
        """
        if self._db is not None:
            _INHERITED.append(self._db)
        self._db = None
        self._lock = threading.Lock()
