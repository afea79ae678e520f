"""The batch's output file: locked for the whole run, repaired, indexed by custom_id, appended
to line by line, synced now and then, and compacted atomically at the end (see
:mod:`deepseek_pool.batch.runner` for the rules).

It is also the record of what the runs on it spent, so that a spend cap covers them all
and the record survives whatever the results survive: each result line carries
``cost_usd``, what the spend cap counted for its item over every run (so the line that
stands after a compaction still holds what the superseded ones counted), and a call that
was billed but left no result (refused a retry by the cap, stopped by a drain) leaves a
spend record, ``{"custom_id": null, "spend": {"for": ID, "cost_usd": X}}``, which no
reader takes for a result and a compaction keeps."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from typing import Any, BinaryIO, Dict, List, Optional, Set, Tuple

from .jsonl import MAX_LINE_BYTES, LineError, loads, read_lines
from .paths import BatchFileError, PathLike, check_regular

try:  # POSIX: one writer per output file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FSYNC_INTERVAL", "ResultsFile"]

log = logging.getLogger(__name__)

#: Longest time, in seconds, flushed result lines may wait for an ``fsync``.
FSYNC_INTERVAL = 5.0
#: How many unreadable output lines the warning names.
_UNREADABLE_SHOWN = 5
#: How often opening the output starts over because another run replaced the file meanwhile.
_LOCK_ATTEMPTS = 20
_READ_BLOCK = 65536


def _cost_of(line: Dict[str, Any]) -> Optional[float]:
    cost = line.get("cost_usd")
    if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost >= 0:
        return float(cost)
    return None


def _is_success(line: Any) -> bool:
    if not isinstance(line, dict) or line.get("error") is not None:
        return False
    response = line.get("response")
    return isinstance(response, dict) and response.get("status_code") == 200


def _pause_before_lock(path: str) -> None:
    """A seam for tests: called between opening the output and locking it."""


class ResultsFile:
    """The output file: locked, repaired, indexed by custom_id, appended to line by line.

    The lock (``flock``) is held on the file that is at the path for the whole run: after
    taking it, the file held is checked to be the one at the path (another run may have
    compacted, that is replaced, it in between), and if not the open starts over. The
    compaction locks its new file before it replaces the old one, so the path is never
    unlocked while the run lasts.

    For compaction it remembers which lines a later line superseded (a failure
    followed by a retry) instead of the whole file, so memory stays at one dict
    entry per custom_id.
    """

    def __init__(self, path: PathLike, clock: Any = time.monotonic) -> None:
        self.path = os.fspath(path)
        self.temporary = self.path + ".compacting"
        self._clock = clock
        self.keep: Dict[str, int] = {}  # custom_id -> index of the line that stands
        self.ok_ids: Set[str] = set()
        self._drop: Set[int] = set()  # indexes of superseded or unreadable lines
        self.count = 0
        self.repaired = 0
        self.unreadable: List[Tuple[int, str]] = []  # (line number, why), the first few
        self.unreadable_count = 0
        #: custom_id -> ``cost_usd`` of its standing line (what its runs counted)
        self.costs: Dict[str, float] = {}
        #: custom_id -> (model, usage) of a standing answer written without ``cost_usd``
        self.unpriced: Dict[str, Tuple[Any, Any]] = {}
        #: USD of the spend records: calls billed that left no result
        self.unanswered_spend = 0.0
        self._file = self._open_locked()
        try:
            self._repair()
            self._load()
        except BaseException:
            self._file.close()
            raise
        self._synced_at = clock()
        self._dirty = False

    def _open_locked(self) -> BinaryIO:
        for _ in range(_LOCK_ATTEMPTS):
            check_regular(self.path, "output")
            # O_NONBLOCK: opening a FIFO that slipped in must fail, not wait for a reader.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0), 0o666)
            file = os.fdopen(fd, "ab")
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise BatchFileError(f"{self.path} is not a regular file; the output must be one")
                _pause_before_lock(self.path)
                if not self._lock(file):
                    return file  # no locks on this filesystem
                if _same_file(file, self.path):
                    self._remove_stale_temporary()
                    return file
            except BaseException:
                file.close()
                raise
            file.close()  # another run replaced the file while we waited: lock the new one
        raise BatchFileError(f"{self.path} keeps being replaced by another process; nothing was sent")

    def _lock(self, file: BinaryIO) -> bool:
        """Take the lock; False when the filesystem has none."""
        if fcntl is None:  # pragma: no cover - Windows
            return False
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchFileError(
                f"{self.path} is being written by another deepseek-pool run; wait for it or choose another output"
            ) from None
        except OSError as err:  # a filesystem without locks: go on without
            log.debug("cannot lock %s: %s", self.path, err)
            return False
        return True

    def _remove_stale_temporary(self) -> None:
        # Left by a run killed while compacting: we hold the lock on the file at the path,
        # so no live run is compacting it.
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.temporary)

    def _repair(self) -> None:
        """Make the file end with a newline: keep a complete last line, drop a torn one."""
        size = os.fstat(self._file.fileno()).st_size
        if not size:
            return
        with open(self.path, "rb") as reader:
            reader.seek(size - 1)
            if reader.read(1) == b"\n":
                return
            end = size
            start = 0
            while end > 0:
                begin = max(0, end - _READ_BLOCK)
                reader.seek(begin)
                newline = reader.read(end - begin).rfind(b"\n")
                if newline >= 0:
                    start = begin + newline + 1
                    break
                end = begin
            whole = False
            if size - start <= MAX_LINE_BYTES:
                reader.seek(start)
                try:
                    whole = isinstance(loads(reader.read()), dict)
                except LineError:
                    whole = False
        if whole:  # killed between the line and its newline: keep the result
            self._file.write(b"\n")
            self._file.flush()
        else:
            self._file.truncate(start)
            self.repaired = size - start
        os.fsync(self._file.fileno())

    def _load(self) -> None:
        with open(self.path, "rb") as reader:
            for number, raw in read_lines(reader):
                custom_id: Any = None
                why = "it is longer than the longest line read"
                if raw is not None and not raw.strip():
                    why = ""
                elif raw is not None:
                    try:
                        line = loads(raw)
                    except LineError as err:
                        why = str(err)
                    else:
                        custom_id = line.get("custom_id") if isinstance(line, dict) else None
                        why = "it is not a result line (no str custom_id)"
                        if custom_id is None and isinstance(line, dict) and isinstance(line.get("spend"), dict):
                            self.unanswered_spend += _cost_of(line["spend"]) or 0.0
                            self.count += 1  # a spend record: never a result, kept by a compaction
                            continue
                if not isinstance(custom_id, str):
                    if why:
                        self.unreadable_count += 1
                        if len(self.unreadable) < _UNREADABLE_SHOWN:
                            self.unreadable.append((number, why))
                    self._drop.add(self.count)
                    self.count += 1
                    continue
                ok = _is_success(line)
                cost = _cost_of(line)
                if self._record(custom_id, ok, cost) and ok and cost is None:
                    body = line["response"].get("body")
                    if isinstance(body, dict):
                        self.unpriced[custom_id] = (body.get("model"), body.get("usage"))

    def _record(self, custom_id: str, ok: bool, cost: Optional[float] = None) -> bool:
        """Index a line; False when it is dropped at once (an answer already stands)."""
        index = self.count
        self.count += 1
        standing = self.keep.get(custom_id)
        if standing is None:
            self.keep[custom_id] = index
        elif custom_id in self.ok_ids:
            self._drop.add(index)  # an answer already stands (two runs on one file?): keep the first
            return False
        else:
            self._drop.add(standing)  # the newer outcome of a failed item stands
            self.keep[custom_id] = index
            self.unpriced.pop(custom_id, None)
        if cost is not None:
            self.costs[custom_id] = cost
        if ok:
            self.ok_ids.add(custom_id)
        return True

    @property
    def spent(self) -> float:
        """USD the lines record as spent (cost_usd of the standing lines, and the spend records)."""
        return sum(self.costs.values()) + self.unanswered_spend

    @property
    def superseded(self) -> int:
        return len(self._drop)

    def append(self, custom_id: Optional[str], ok: bool, data: bytes, cost: Optional[float] = None) -> None:
        """Write one whole line and hand it to the OS; fsync now and then.

        ``custom_id`` None: a spend record of ``cost`` USD (a call billed that left no result).
        """
        file = self._file
        file.write(data)
        file.flush()
        if custom_id is None:
            self.unanswered_spend += cost or 0.0
            self.count += 1
        else:
            self._record(custom_id, ok, cost)
        self._dirty = True
        now = self._clock()
        if now - self._synced_at >= FSYNC_INTERVAL:
            self.sync(now)

    def sync(self, now: Optional[float] = None) -> None:
        if self._dirty:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._dirty = False
        self._synced_at = self._clock() if now is None else now

    def compact(self) -> int:
        """Rewrite the file without superseded lines, atomically; return how many went.

        The new file is written beside the old one (:attr:`temporary`), locked, synced,
        then renamed over it. If any of that fails the old file stays as it was, complete
        and valid, and the :class:`OSError` is raised.
        """
        dropped = len(self._drop)
        if not dropped:
            return 0
        self.sync()
        temporary = self.temporary
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        writer = os.fdopen(fd, "ab")
        try:
            os.chmod(temporary, stat.S_IMODE(os.fstat(self._file.fileno()).st_mode))
            self._lock(writer)  # locked before it takes the path: the path is never unlocked
            with open(self.path, "rb") as reader:
                _copy_lines(reader, writer, self._drop)
            writer.flush()
            os.fsync(writer.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            writer.close()
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise
        old, self._file = self._file, writer
        old.close()
        _fsync_directory(os.path.dirname(os.path.abspath(self.path)))
        self._drop = set()
        return dropped

    def close(self) -> None:
        if not self._file.closed:
            try:
                self.sync()
            finally:
                self._file.close()


def _same_file(file: BinaryIO, path: str) -> bool:
    """Whether the open ``file`` is still the file at ``path`` (not replaced or removed)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(file.fileno())
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def _copy_lines(reader: BinaryIO, writer: BinaryIO, drop: Set[int]) -> None:
    """Copy the lines of ``reader`` whose 0-based index is not in ``drop``."""
    for number, raw in read_lines(reader):
        if raw is not None and number - 1 not in drop:
            writer.write(raw)


def _fsync_directory(path: str) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
