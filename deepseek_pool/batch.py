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
null). A line that is not JSON or not a request becomes such an error line too (code
``JSONDecodeError``, ``ValueError`` ...; custom_id = its own when it has a usable one,
else its line number), and the rest still run.

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
reader of a file from an interrupted run should take, per custom_id, the successful
line if there is one, else the last line.

Example::

    with DeepSeekPool(max_workers=16) as pool:
        summary = run_batch("prompts.jsonl", "results.jsonl", pool)
    print(summary.tally.ok, "answered")
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Generator, Iterator, List, Optional, Set, Tuple, Union

from .calls import RetryCancelled
from .errors import APIStatusError, AuthenticationError, DeepSeekError, InsufficientBalanceError
from .pool import DeepSeekPool, Result, parse_request
from .progress import BatchProgress, Tally
from .types import ChatCompletion

try:  # POSIX: one writer per output file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FSYNC_INTERVAL", "BatchFileError", "BatchSummary", "Interrupter", "run_batch"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Longest time, in seconds, flushed result lines may wait for an ``fsync``.
FSYNC_INTERVAL = 5.0
#: Errors that every other item would meet too: the run stops sending at the first one.
FATAL_ERRORS = (AuthenticationError, InsufficientBalanceError)
#: How many duplicate custom_ids the error message lists.
_DUPLICATES_SHOWN = 5
_READ_BLOCK = 65536


class BatchFileError(DeepSeekError, ValueError):
    """The input or output file cannot be used as given (duplicate custom_ids, output in use)."""


class Interrupter:
    """Two-stage Ctrl-C for :func:`run_batch`; call it from a SIGINT handler.

    The first call sets :attr:`stop`: no new requests are sent and calls already
    started finish and are written. The second raises ``KeyboardInterrupt``, which
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


@dataclass
class BatchSummary:
    """What a run did; :func:`~deepseek_pool.progress.format_summary` prints it.

    :ivar items: items in the input (malformed lines included).
    :ivar tally: this run's answered/failed counts, tokens and estimated cost.
    :ivar skipped: items not tried because the output already had them.
    :ivar skipped_failed: of those, items whose earlier attempt had failed.
    :ivar not_run: items left for a later run by an interrupt.
    :ivar interrupted: None, ``"stopped"`` (first Ctrl-C) or ``"cancelled"`` (second).
    :ivar aborted: why the run stopped sending by itself (a wrong key, no balance), else None.
    :ivar elapsed: wall-clock seconds.
    :ivar repaired: bytes of a half-written last line removed from the output.
    :ivar compacted: superseded lines removed from the output at the end.
    """

    items: int
    tally: Tally
    skipped: int = 0
    skipped_failed: int = 0
    not_run: int = 0
    interrupted: Optional[str] = None
    aborted: Optional[str] = None
    elapsed: float = 0.0
    repaired: int = 0
    compacted: int = 0

    @property
    def complete(self) -> bool:
        """True when every item of the input now has a successful line."""
        return self.interrupted is None and not self.not_run and not self.tally.failed and not self.skipped_failed


# -- input -------------------------------------------------------------------------------

_Malformed = Tuple[int, str, str, str]  # line number, custom_id, error code, message


def _scan(path: PathLike) -> Iterator[Tuple[int, str, Optional[Dict[str, Any]], Optional[Tuple[str, str]]]]:
    """Yield ``(line number, custom_id, request, None)`` or ``(line number, custom_id, None, (code, message))``."""
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield number, str(number), None, ("UnicodeDecodeError", f"line {number} is not UTF-8: {err}")
                continue
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            try:
                data = json.loads(text)
            except ValueError as err:
                yield number, str(number), None, ("JSONDecodeError", f"line {number} is not valid JSON: {err}")
                continue
            given = data.get("custom_id") if isinstance(data, dict) else None
            try:
                custom_id, messages, params = parse_request(data)
                if custom_id == "":
                    raise ValueError("custom_id is an empty string")
            except (TypeError, ValueError) as err:
                usable = given if isinstance(given, str) and given else str(number)
                yield number, usable, None, (type(err).__name__, f"line {number} is not a chat request: {err}")
                continue
            params["messages"] = messages
            yield number, custom_id or str(number), params, None


def _check_input(path: PathLike) -> Tuple[Dict[str, int], List[_Malformed]]:
    """Read the whole input once: custom_id -> line number, and the malformed lines.

    :raises BatchFileError: when custom_ids repeat, before anything is sent.
    """
    lines: Dict[str, int] = {}
    malformed: List[_Malformed] = []
    duplicates: List[str] = []
    for number, custom_id, _request, error in _scan(path):
        first = lines.get(custom_id)
        if first is not None:
            if len(duplicates) < _DUPLICATES_SHOWN:
                duplicates.append(f"{custom_id!r} (lines {first} and {number})")
            continue
        lines[custom_id] = number
        if error is not None:
            malformed.append((number, custom_id, error[0], error[1]))
    if duplicates:
        raise BatchFileError(
            f"{os.fspath(path)}: duplicate custom_id {', '.join(duplicates)}; each custom_id must be unique "
            "(a line without one gets its line number as its custom_id); nothing was sent"
        )
    return lines, malformed


# -- output ------------------------------------------------------------------------------


def _dumps(line: Dict[str, Any]) -> bytes:
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _is_success(line: Any) -> bool:
    if not isinstance(line, dict) or line.get("error") is not None:
        return False
    response = line.get("response")
    return isinstance(response, dict) and response.get("status_code") == 200


class _ResultsFile:
    """The output file: locked, repaired, indexed by custom_id, appended to line by line.

    For compaction it remembers which lines a later line superseded (a failure
    followed by a retry) instead of the whole file, so memory stays at one dict
    entry per custom_id.
    """

    def __init__(self, path: PathLike, clock: Any = time.monotonic) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self.keep: Dict[str, int] = {}  # custom_id -> index of the line that stands
        self.ok_ids: Set[str] = set()
        self._drop: Set[int] = set()  # indexes of superseded or unreadable lines
        self.count = 0
        self.repaired = 0
        self.unreadable = 0
        self._file = open(self.path, "ab")  # noqa: SIM115 - held for the whole run, closed by close()
        try:
            self._lock()
            self._repair()
            self._load()
        except BaseException:
            self._file.close()
            raise
        self._synced_at = clock()
        self._dirty = False

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchFileError(
                f"{self.path} is being written by another deepseek-pool run; wait for it or choose another output"
            ) from None
        except OSError as err:  # a filesystem without locks: go on without
            log.debug("cannot lock %s: %s", self.path, err)
        stale = self.path + ".compacting"
        if os.path.exists(stale):  # left by a run killed while compacting; the lock says it is dead
            os.remove(stale)

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
            reader.seek(start)
            tail = reader.read()
        try:
            whole = isinstance(json.loads(tail), dict)
        except ValueError:
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
            for raw in reader:
                try:
                    line = json.loads(raw)
                    custom_id = line.get("custom_id")
                except (ValueError, AttributeError):
                    custom_id = None
                if not isinstance(custom_id, str):
                    if raw.strip():
                        self.unreadable += 1
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
        """Rewrite the file without superseded lines, atomically; return how many went."""
        dropped = len(self._drop)
        if not dropped:
            return 0
        self.sync()
        temporary = self.path + ".compacting"
        try:
            with open(self.path, "rb") as reader, open(temporary, "wb") as writer:
                drop = self._drop
                for index, raw in enumerate(reader):
                    if index not in drop:
                        writer.write(raw)
                writer.flush()
                os.fsync(writer.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
        _fsync_directory(os.path.dirname(os.path.abspath(self.path)))
        self._drop = set()
        return dropped

    def close(self) -> None:
        if not self._file.closed:
            try:
                self.sync()
            finally:
                self._file.close()


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
    """Builds output lines; ids are one random prefix per run plus a counter (no syscall per line)."""

    def __init__(self) -> None:
        self._prefix = "batch_req_" + os.urandom(8).hex()
        self._count = 0

    def _id(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count:08x}"

    def success(self, custom_id: str, completion: ChatCompletion) -> bytes:
        return _dumps(
            {
                "id": self._id(),
                "custom_id": custom_id,
                "response": {"status_code": 200, "request_id": completion.request_id, "body": completion.raw},
                "error": None,
            }
        )

    def failure(self, custom_id: str, code: str, message: str, response: Optional[Dict[str, Any]] = None) -> bytes:
        error = {"code": code, "message": message}
        return _dumps({"id": self._id(), "custom_id": custom_id, "response": response, "error": error})

    def error(self, custom_id: str, error: BaseException) -> bytes:
        response = None
        if isinstance(error, APIStatusError):
            response = {"status_code": error.status_code, "request_id": error.request_id, "body": error.body}
        return self.failure(custom_id, type(error).__name__, str(error) or type(error).__name__, response)


# -- the run -----------------------------------------------------------------------------


def _requests(path: PathLike, should_run: Any, model: Optional[str]) -> Generator[Dict[str, Any], None, None]:
    """Second pass over the input: the valid requests this run sends, read lazily."""
    for _number, custom_id, request, _error in _scan(path):
        if request is None or not should_run(custom_id):
            continue
        if model is not None:
            request["model"] = model
        request["custom_id"] = custom_id
        yield request


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
    is sent when the input has duplicate custom_ids.

    :param pool: the pool to run on (its workers, limits and client apply); not closed here.
    :param retry_failed: try again items whose last line in the output is a failure.
    :param model: a model for every request, replacing the one a line names.
    :param interrupter: the Ctrl-C handling (see :class:`Interrupter`); the CLI installs it.
    :param progress: where the progress bar and notices go (default: nowhere).
    :returns: the :class:`BatchSummary`; after a second Ctrl-C (``KeyboardInterrupt``) the
        run ends early and its summary says ``interrupted="cancelled"``.
    :raises BatchFileError: duplicate custom_ids, input and output being one file, or
        an output file another run is writing.
    :raises OSError: the input cannot be read or the output cannot be written.
    """
    started = time.monotonic()
    if os.path.exists(output_path) and os.path.samefile(input_path, output_path):
        raise BatchFileError("the output file must not be the input file")
    ids, malformed = _check_input(input_path)
    interrupter = interrupter or Interrupter()
    progress = progress or BatchProgress()
    tally = Tally()
    summary = BatchSummary(items=len(ids), tally=tally)
    out = _ResultsFile(output_path)
    try:
        summary.repaired = out.repaired
        if out.repaired:
            progress.warn(
                f"repaired {out.path}: removed a half-written last line ({out.repaired} bytes) left by an "
                "interrupted run; that item runs again"
            )
        if out.unreadable:
            progress.warn(f"{out.path}: ignoring {out.unreadable} lines that are not result lines")
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
        interrupted = _run(pool, out, input_path, malformed, should_run, model, interrupter, progress, summary)
        summary.not_run = to_run - tally.ok - tally.failed
        if interrupted == "stopped" and (summary.aborted is not None or not summary.not_run):
            interrupted = None  # stopped by a fatal error, or Ctrl-C after the last request: not an interrupt
        summary.interrupted = interrupted
        if summary.interrupted is None:
            out.sync()
            summary.compacted = out.compact()
    finally:
        progress.close()
        out.close()
        summary.elapsed = time.monotonic() - started
    return summary


def _run(
    pool: DeepSeekPool,
    out: _ResultsFile,
    input_path: PathLike,
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
    requests = _requests(input_path, should_run, model)
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
                data = lines.success(custom_id, completion)
                ok = True
            elif _is_cancellation(error):
                continue  # never answered: not written, so the next run sends it
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
                assert completion is not None
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
        requests.close()
    return "stopped" if interrupter.stop.is_set() else None


def _requested_model(result: Result, default: str) -> str:
    request = result.request
    model = request.get("model") if isinstance(request, dict) else None
    return model if isinstance(model, str) else default


def _is_cancellation(error: Optional[BaseException]) -> bool:
    return isinstance(error, (cf.CancelledError, RetryCancelled))
