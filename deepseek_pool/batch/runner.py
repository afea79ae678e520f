"""The resumable JSONL batch runner behind ``deepseek-pool run``: requests in, results out, nothing lost.

Input: one request per line -- an OpenAI batch line (``{"custom_id", "method", "url",
"body"}``), a dict of chat params (``messages`` or ``prompt``, optional ``custom_id``), a
JSON string (one user prompt) or a JSON list of messages. A line without a ``custom_id``
gets its 1-based line number, as a string; blank lines are ignored. Duplicate custom_ids
stop the run before anything is sent (:class:`BatchFileError`).

Output: one line per item in OpenAI's batch output shape, in completion order::

    {"id": "batch_req_...", "custom_id": "7",
     "response": {"status_code": 200, "request_id": "...", "body": <the server's JSON>},
     "error": null}

A failed item has ``"error": {"code": <exception class name>, "message": ...}`` and
``response`` holds the error status, request id and body when the server answered (else
null). A line that is not JSON, too long, nested too deep or not a request becomes such
an error line too (code ``JSONDecodeError``, ``LineTooLong``, ``JSONTooDeep``,
``ValueError`` ...; custom_id = its own when it has a usable one, else its line number),
and the rest still run. Every line written is valid UTF-8 JSON that a resume reads back
(:mod:`deepseek_pool.batch.jsonl`). Batch ``url`` values are routed by
:data:`deepseek_pool.pool.items.BATCH_URLS` (chat, beta chat, FIM).

Locking: the output is locked (``flock``) for the whole run, compaction included; the
lock is re-checked to be on the file at the path, so a run that opened the file just
before another run replaced it starts over on the new one. Other programs must not
append while a run owns the file: lines a resume cannot read are skipped with a warning
naming their line numbers, and a compaction drops them.

Durability: each line is written whole with one ``write`` and flushed as it completes,
so a crash (even SIGKILL) loses at most the calls in flight -- flushed lines are in the
operating system's hands. ``fsync`` is called at most every :data:`FSYNC_INTERVAL`
seconds, at the end and on interrupt: an fsync per line would cost more than many
calls' CPU, and only a power cut or kernel crash can lose unsynced lines.

Resume: a rerun with the same output file truncates a half-written last line, skips
items that already have a successful line, and tries earlier failures again unless
``retry_failed=False``. A run that was not interrupted then compacts the file
atomically (temporary file + ``os.replace``) when it holds superseded lines, so it
ends with exactly one line per custom_id: its success, else its latest failure. A
compaction that fails (a full disk) is a warning naming the temporary file; the output
stays complete and valid, and the next run finishes the job. A reader of a file from an
interrupted run should take, per custom_id, the successful line if there is one, else
the last line.

Drain and spend cap: after the first Ctrl-C (:class:`Interrupter`) no request of any
kind is sent; calls refused by the drain are not written, so the rerun sends them. With
a pool's ``max_cost``, calls the cap refuses are not started and not written; the run
stops feeding new requests and its summary says ``capped``.

Example::

    with DeepSeekPool(max_workers=16) as pool:
        summary = run_batch("prompts.jsonl", "results.jsonl", pool)
    print(summary.tally.ok, "answered")
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import logging
import os
import stat
import threading
import time
from typing import Any, BinaryIO, Dict, Generator, Iterable, Iterator, List, Optional, Set, Tuple, Union

from ..errors import APIStatusError, AuthenticationError, DeepSeekError, InsufficientBalanceError, SpendCapReached
from ..pool.pool import DeepSeekPool, Result, Routed, route_request
from ..wire.calls import RetryCancelled
from .jsonl import MAX_LINE_BYTES, LineError, check_bounds, dumps, loads, read_lines
from .progress import BatchProgress, BatchSummary, Tally

try:  # POSIX: one writer per output file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FSYNC_INTERVAL", "BatchFileError", "BatchSummary", "Interrupter", "run_batch", "run_lines"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Longest time, in seconds, flushed result lines may wait for an ``fsync``.
FSYNC_INTERVAL = 5.0
#: Errors that every other item would meet too: the run stops sending at the first one.
FATAL_ERRORS = (AuthenticationError, InsufficientBalanceError)
#: How many duplicate custom_ids the error message lists.
_DUPLICATES_SHOWN = 5
#: How many unreadable output lines the warning names.
_UNREADABLE_SHOWN = 5
#: How often opening the output starts over because another run replaced the file meanwhile.
_LOCK_ATTEMPTS = 20
_READ_BLOCK = 65536


class BatchFileError(DeepSeekError, ValueError):
    """The input or output file cannot be used as given (duplicate custom_ids, output in use)."""


class Interrupter:
    """Two-stage Ctrl-C for :func:`run_batch`; call it from a SIGINT handler.

    The first call sets :attr:`stop`, a drain: no request of any kind is sent any more
    (retries included), answers already on their way are written, and calls that
    would need another attempt are left for the rerun. The second raises ``KeyboardInterrupt``, which
    cancels the calls in flight -- but never while a result line is being written: it
    is then raised as soon as the line is complete.
    """

    __slots__ = ("_pending", "_writing", "presses", "stop")

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.presses = 0
        self._writing = False
        self._pending = False

    def __call__(self, *_signal: Any) -> None:
        self.presses += 1
        if self.presses == 1:
            self.stop.set()
        elif self._writing:
            self._pending = True
        else:
            raise KeyboardInterrupt

    def _begin_write(self) -> None:
        self._writing = True

    def _end_write(self) -> None:
        self._writing = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt


# -- input -------------------------------------------------------------------------------

_Malformed = Tuple[int, str, str, str]  # line number, custom_id, error code, message
_Scanned = Tuple[int, str, Optional[Routed], Optional[Tuple[str, str]]]


def _check_regular(path: PathLike, what: str) -> None:
    """Refuse a path that exists but is no regular file (a device, a FIFO, a directory)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise BatchFileError(f"{os.fspath(path)} is {kind}; the {what} must be a regular file")


def _scan(path: PathLike) -> Iterator[_Scanned]:
    """Yield ``(line number, custom_id, routed request, None)`` or ``(line number, custom_id, None, (code, message))``.

    Every line is read with bounded effort (:mod:`deepseek_pool.batch.jsonl`): one too long,
    too deep, not UTF-8 or not JSON is an error for that item, never a crash.
    """
    with open(path, "rb") as lines:
        for number, raw in read_lines(lines):
            scanned = _parse_line(number, raw)
            if scanned is not None:
                yield scanned


def _parse_line(number: int, raw: Optional[bytes]) -> Optional[_Scanned]:
    """One input line (None: too long) as :func:`_scan` yields it; None for a blank line."""
    if raw is None:
        return number, str(number), None, ("LineTooLong", f"line {number} is longer than {MAX_LINE_BYTES} bytes")
    if not raw.strip():
        return None
    try:
        data = loads(raw, strip_bom=number == 1)
    except LineError as err:
        return number, str(number), None, (err.code, f"line {number} {err}")
    given = data.get("custom_id") if isinstance(data, dict) else None
    try:
        routed = route_request(data)
        if routed.custom_id == "":
            raise ValueError("custom_id is an empty string")
    except (TypeError, ValueError) as err:
        usable = given if isinstance(given, str) and given else str(number)
        return number, usable, None, (type(err).__name__, f"line {number} is not a request: {err}")
    return number, routed.custom_id or str(number), routed, None


class _InputCheck:
    """What the first pass over the input found: custom_id -> line, the malformed lines, the models named."""

    def __init__(self) -> None:
        self.lines: Dict[str, int] = {}
        self.malformed: List[_Malformed] = []
        self.models: Set[str] = set()


def _check_input(path: PathLike) -> _InputCheck:
    """Read the whole input once.

    :raises BatchFileError: when custom_ids repeat, before anything is sent.
    """
    found = _InputCheck()
    lines = found.lines
    duplicates: List[str] = []
    for number, custom_id, routed, error in _scan(path):
        first = lines.get(custom_id)
        if first is not None:
            if len(duplicates) < _DUPLICATES_SHOWN:
                duplicates.append(f"{custom_id!r} (lines {first} and {number})")
            continue
        lines[custom_id] = number
        if error is not None:
            found.malformed.append((number, custom_id, error[0], error[1]))
        elif routed is not None:
            model = routed.params.get("model")
            if isinstance(model, str) and model:
                found.models.add(model)
    if duplicates:
        raise BatchFileError(
            f"{os.fspath(path)}: duplicate custom_id {', '.join(duplicates)}; each custom_id must be unique "
            "(a line without one gets its line number as its custom_id); nothing was sent"
        )
    return found


# -- output ------------------------------------------------------------------------------


def _is_success(line: Any) -> bool:
    if not isinstance(line, dict) or line.get("error") is not None:
        return False
    response = line.get("response")
    return isinstance(response, dict) and response.get("status_code") == 200


def _pause_before_lock(path: str) -> None:
    """A seam for tests: called between opening the output and locking it."""


class _ResultsFile:
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
            _check_regular(self.path, "output")
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
                if not isinstance(custom_id, str):
                    if why:
                        self.unreadable_count += 1
                        if len(self.unreadable) < _UNREADABLE_SHOWN:
                            self.unreadable.append((number, why))
                    self._drop.add(self.count)
                    self.count += 1
                    continue
                self._record(custom_id, _is_success(line))

    def _record(self, custom_id: str, ok: bool) -> None:
        index = self.count
        self.count += 1
        standing = self.keep.get(custom_id)
        if standing is None:
            self.keep[custom_id] = index
        elif custom_id in self.ok_ids:
            self._drop.add(index)  # an answer already stands (two runs on one file?): keep the first
            return
        else:
            self._drop.add(standing)  # the newer outcome of a failed item stands
            self.keep[custom_id] = index
        if ok:
            self.ok_ids.add(custom_id)

    @property
    def superseded(self) -> int:
        return len(self._drop)

    def append(self, custom_id: str, ok: bool, data: bytes) -> None:
        """Write one whole line and hand it to the OS; fsync now and then."""
        file = self._file
        file.write(data)
        file.flush()
        self._record(custom_id, ok)
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


class _LineMaker:
    """Builds output lines; ids are one random prefix per run plus a counter (no syscall per line).

    Every line is valid UTF-8 JSON within the reader's bounds, whatever the answer holds
    (:func:`deepseek_pool.batch.jsonl.dumps`); an answer that could not be read back is written
    as a failure saying why, so the item runs again rather than being lost.
    """

    def __init__(self) -> None:
        self._prefix = "batch_req_" + os.urandom(8).hex()
        self._count = 0

    def _id(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count:08x}"

    def success(self, custom_id: str, completion: Any) -> Tuple[bytes, bool]:
        """The line for an answer, and whether it is a success line."""
        line_id = self._id()
        try:
            data = dumps(
                {
                    "id": line_id,
                    "custom_id": custom_id,
                    "response": {
                        "status_code": 200,
                        "request_id": getattr(completion, "request_id", None),
                        "body": completion.raw,
                    },
                    "error": None,
                }
            )
            problem = check_bounds(data)
        except ValueError as err:
            problem = str(err)
        if problem is None:
            return data, True
        return self.failure(
            custom_id, "UnstorableAnswer", f"the answer cannot be stored as a result line: {problem}"
        ), False

    def failure(self, custom_id: str, code: str, message: str, response: Optional[Dict[str, Any]] = None) -> bytes:
        error = {"code": code, "message": message}
        line = {"id": self._id(), "custom_id": custom_id, "response": response, "error": error}
        try:
            data = dumps(line)
            if check_bounds(data) is None:
                return data
        except ValueError:
            pass
        line["response"] = None  # an error body that cannot be stored: keep the error, drop the body
        return dumps(line)

    def error(self, custom_id: str, error: BaseException) -> bytes:
        response = None
        if isinstance(error, APIStatusError):
            response = {"status_code": error.status_code, "request_id": error.request_id, "body": error.body}
        return self.failure(custom_id, type(error).__name__, str(error) or type(error).__name__, response)


# -- the run -----------------------------------------------------------------------------

#: The url a non-chat endpoint is written back as, for the pool to route.
_URL_OF = {"beta": "/beta/chat/completions", "fim": "/beta/completions"}


class _Feed:
    """Second pass over the input: the requests this run sends, read lazily, until told to stop."""

    def __init__(self, path: PathLike, should_run: Any, model: Optional[str]) -> None:
        self.path = path
        self.should_run = should_run
        self.model = model
        self.stopped = False  # set when the spend cap refuses a call: nothing more is fed

    def __iter__(self) -> Generator[Dict[str, Any], None, None]:
        for _number, custom_id, routed, _error in _scan(self.path):
            if self.stopped:
                return
            if routed is None or not self.should_run(custom_id):
                continue
            yield _request_of(custom_id, routed, self.model)


def _request_of(custom_id: str, routed: Routed, model: Optional[str]) -> Dict[str, Any]:
    """The pool request for one routed input line."""
    params = routed.params
    if model is not None:
        params["model"] = model
    if routed.endpoint == "chat":
        params["messages"] = routed.messages
        params["custom_id"] = custom_id
        return params
    params["prompt" if routed.endpoint == "fim" else "messages"] = routed.messages
    return {"custom_id": custom_id, "method": "POST", "url": _URL_OF[routed.endpoint], "body": params}


def run_lines(
    lines: Iterable[Union[str, bytes]],
    pool: DeepSeekPool,
    *,
    first_line: int = 1,
    model: Optional[str] = None,
) -> List[str]:
    """Run a chunk of batch input lines through ``pool``; return their batch-output lines, in input order.

    The chunk runner behind :mod:`deepseek_pool.contrib.celery`: the lines are those of a
    batch input file and the answers are the lines :func:`run_batch` would write (see the
    module docstring), one per non-blank input line, each without its newline. A line
    without a ``custom_id`` gets its line number, counted from ``first_line``. It never
    raises for one item: a malformed line, a failed or cancelled call, each becomes an
    error line. Nothing is written to disk and nothing is resumed: the caller collects
    the lines (custom_ids are not checked for duplicates).

    :param first_line: the number of the chunk's first line in the whole input.
    :param model: a model for every request, replacing the one a line names.
    """
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError(f"model must be a non-empty model id, got {model!r}")
    maker = _LineMaker()
    answers: List[Optional[bytes]] = []
    requests: List[Dict[str, Any]] = []
    slots: List[Tuple[int, str]] = []  # (answer slot, custom_id) of each request sent
    for number, line in enumerate(lines, first_line):
        raw = (line.encode("utf-8", "surrogatepass") if isinstance(line, str) else line).rstrip(b"\r\n")
        scanned = _parse_line(number, raw if len(raw) <= MAX_LINE_BYTES else None)
        if scanned is None:
            continue
        _number, custom_id, routed, bad = scanned
        if routed is None:
            assert bad is not None
            answers.append(maker.failure(custom_id, bad[0], bad[1]))
            continue
        slots.append((len(answers), custom_id))
        answers.append(None)
        requests.append(_request_of(custom_id, routed, model))
    for (slot, custom_id), result in zip(slots, pool.map(requests)):
        if result.error is None and result.completion is not None:
            answers[slot] = maker.success(custom_id, result.completion)[0]
        else:
            answers[slot] = maker.error(custom_id, result.error or RuntimeError("no answer"))
    return [answer.decode("utf-8").rstrip("\n") for answer in answers if answer is not None]


def run_batch(
    input_path: PathLike,
    output_path: PathLike,
    pool: DeepSeekPool,
    *,
    retry_failed: bool = True,
    model: Optional[str] = None,
    interrupter: Optional[Interrupter] = None,
    progress: Optional[BatchProgress] = None,
) -> BatchSummary:
    """Run every request of ``input_path`` not yet answered in ``output_path`` through ``pool``.

    See the module docstring for the file formats, durability and resume rules. Nothing
    is sent when the input has duplicate custom_ids, when a path cannot be used, or when
    the pool has a spend cap and a model of the input has no known price.

    :param pool: the pool to run on (its workers, limits, spend cap and client apply); not closed here.
    :param retry_failed: try again items whose last line in the output is a failure.
    :param model: a model for every request, replacing the one a line names.
    :param interrupter: the Ctrl-C handling (see :class:`Interrupter`); the CLI installs it.
    :param progress: where the progress bar and notices go (default: nowhere).
    :returns: the :class:`BatchSummary`; after a second Ctrl-C (``KeyboardInterrupt``) the
        run ends early and its summary says ``interrupted="cancelled"``.
    :raises BatchFileError: duplicate custom_ids, input and output being one file, an
        input or output that is not a regular file, or an output another run is writing.
    :raises ConfigurationError: a spend cap with a model whose price is unknown.
    :raises ValueError: an empty ``model``.
    :raises OSError: the input cannot be read or the output cannot be written.
    """
    started = time.monotonic()
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError(f"model must be a non-empty model id, got {model!r}")
    _check_regular(input_path, "input (it is read twice: save a pipe to a file first)")
    if not os.path.exists(input_path):
        raise FileNotFoundError(errno.ENOENT, "no such file", os.fspath(input_path))
    _check_regular(output_path, "output")
    if os.path.exists(output_path) and os.path.samefile(input_path, output_path):
        raise BatchFileError("the output file must not be the input file")
    found = _check_input(input_path)
    spend = pool.spend
    if spend is not None:
        spend.check_models({model} if model is not None else found.models | {pool.client.model})
    ids = found.lines
    interrupter = interrupter or Interrupter()
    progress = progress or BatchProgress()
    tally = Tally(prices=spend.prices if spend is not None else None)
    summary = BatchSummary(items=len(ids), tally=tally, max_cost=spend.max_cost if spend is not None else None)
    out = _ResultsFile(output_path)
    try:
        summary.repaired = out.repaired
        if out.repaired:
            progress.warn(
                f"repaired {out.path}: removed a half-written last line ({out.repaired} bytes) left by an "
                "interrupted run; that item runs again"
            )
        summary.unreadable = out.unreadable_count
        if out.unreadable:
            shown = "; ".join(f"line {number}: {why}" for number, why in out.unreadable)
            more = out.unreadable_count - len(out.unreadable)
            progress.warn(
                f"{out.path}: skipped {out.unreadable_count} lines that are not readable result lines ({shown}"
                + (f"; and {more} more" if more else "")
                + "); their items, if any, run again"
            )
        ok_ids = out.ok_ids
        seen = out.keep

        def should_run(custom_id: str) -> bool:
            return custom_id not in ok_ids and (retry_failed or custom_id not in seen)

        to_run = 0
        for custom_id in ids:
            if should_run(custom_id):
                to_run += 1
            elif custom_id not in ok_ids:
                summary.skipped_failed += 1
        summary.skipped = len(ids) - to_run
        if summary.skipped:
            text = f"resuming {out.path}: {summary.skipped - summary.skipped_failed} items already answered"
            if summary.skipped_failed:
                text += f", {summary.skipped_failed} failed ones skipped (--no-retry-failed)"
            progress.info(text + f"; {to_run} to run")
        progress.start(to_run)
        feed = _Feed(input_path, should_run, model)
        interrupted = _run(pool, out, feed, found.malformed, should_run, model, interrupter, progress, summary)
        summary.not_run = to_run - tally.ok - tally.failed
        if interrupted == "stopped" and (summary.aborted is not None or not summary.not_run):
            interrupted = None  # stopped by a fatal error, or Ctrl-C after the last request: not an interrupt
        summary.interrupted = interrupted
        if summary.interrupted is None:
            out.sync()
            try:
                summary.compacted = out.compact()
            except OSError as err:
                summary.compaction_error = f"writing {out.temporary} failed: {err.strerror or err}"
                progress.warn(
                    f"could not compact {out.path}: {summary.compaction_error}. The output is complete and valid "
                    "(it still holds superseded lines: per custom_id its success stands, else its last line); "
                    "a rerun with nothing left to do finishes the compaction"
                )
    finally:
        progress.close()
        out.close()
        summary.elapsed = time.monotonic() - started
    return summary


def _run(
    pool: DeepSeekPool,
    out: _ResultsFile,
    feed: _Feed,
    malformed: List[_Malformed],
    should_run: Any,
    model: Optional[str],
    interrupter: Interrupter,
    progress: BatchProgress,
    summary: BatchSummary,
) -> Optional[str]:
    """Write error lines for malformed input, then run the rest; return how it was interrupted."""
    tally = summary.tally
    lines = _LineMaker()
    begin, end = interrupter._begin_write, interrupter._end_write
    default_model = model or pool.client.model
    requests = iter(feed)
    results = pool.as_completed(requests, stop=interrupter.stop)
    try:
        for _number, custom_id, code, message in malformed:
            if interrupter.stop.is_set():
                return "stopped"
            if should_run(custom_id):
                begin()
                try:
                    out.append(custom_id, False, lines.failure(custom_id, code, message))
                finally:
                    end()
                tally.add_failed()
                progress.update(tally)
        for result in results:
            error = result.error
            custom_id = result.custom_id or str(result.index + 1)
            completion = result.completion
            if error is None and completion is not None:
                data, ok = lines.success(custom_id, completion)
            elif isinstance(error, SpendCapReached):
                summary.capped = True
                feed.stopped = True  # not started: left for a rerun, and nothing more is fed
                continue
            elif _is_cancellation(error):
                continue  # never answered (cancelled, or refused by the drain): not written, so a rerun sends it
            else:
                assert error is not None
                data = lines.error(custom_id, error)
                ok = False
                if summary.aborted is None and isinstance(error, FATAL_ERRORS):
                    summary.aborted = f"{error}; no new requests were sent"
                    interrupter.stop.set()
            begin()
            try:
                out.append(custom_id, ok, data)
            finally:
                end()
            if ok:
                tally.add_ok(completion, _requested_model(result, default_model))
            else:
                tally.add_failed()
            progress.update(tally)
    except KeyboardInterrupt:
        return "cancelled"
    finally:
        # Closing the iteration cancels what it queued and aborts what it runs; this is
        # needed when the interrupt hit this loop rather than the pool's generator.
        close = getattr(results, "close", None)
        if close is not None:
            close()
        close = getattr(requests, "close", None)
        if close is not None:
            close()
    return "stopped" if interrupter.stop.is_set() else None


def _requested_model(result: Result, default: str) -> str:
    request = result.request
    if isinstance(request, dict) and isinstance(request.get("body"), dict):
        request = request["body"]
    model = request.get("model") if isinstance(request, dict) else None
    return model if isinstance(model, str) else default


def _is_cancellation(error: Optional[BaseException]) -> bool:
    return isinstance(error, (cf.CancelledError, RetryCancelled))
