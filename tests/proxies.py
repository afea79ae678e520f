"""Proxies for the route tests, all on 127.0.0.1: real forward proxies nobody here wrote, and a faulty one.

* :func:`tinyproxy`, :func:`squid`, :func:`proxy_py` -- Debian's tinyproxy and squid, PyPI's proxy.py,
  each started on a free port with a throwaway config in a temporary directory, waited for until it
  listens, and always stopped (a missing binary skips the test, naming what to install);
* :class:`FaultProxy` -- a TCP proxy in the spirit of Toxiproxy (not installable here) that forwards
  to an upstream and spoils the answer on its way back (:class:`Toxic`: latency, bandwidth, slicer,
  slow close, blackhole, stall after the head, cut or reset after N bytes); it can also terminate
  TLS, so it stands in front of FakeDeepSeek as an HTTPS server with a private CA, or behind a
  real proxy as its upstream.

Every thread and process these start is stopped when their ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
#: SO_LINGER on with a zero timeout: close() then sends RST instead of FIN.
LINGER_RST = struct.pack("ii", 1, 0)
_HEAD_END = b"\r\n\r\n"
_POLL = 0.05


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick, released at once)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: Optional[subprocess.Popen] = None, timeout: float = START_TIMEOUT) -> None:
    """Return once something accepts on ``port``; fail if ``process`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on {HOST}:{port} within {timeout} s")


def require(binary: str, package: str) -> str:
    """The path of ``binary``, or skip the test saying which package brings it."""
    path = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        pytest.skip(f"{binary} is not installed (apt-get install {package}; .ci/run does)")
    return path


@dataclass(frozen=True)
class RunningProxy:
    """A forward proxy that listens on ``port``; ``url`` carries its credentials when it has some."""

    name: str
    port: int
    auth: Optional[Tuple[str, str]] = None

    @property
    def url(self) -> str:
        return self.url_with(*self.auth) if self.auth else f"http://{HOST}:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@{HOST}:{self.port}"


@contextlib.contextmanager
def _running(
    name: str, argv: List[str], port: int, workdir: str, auth: Optional[Tuple[str, str]], env: Optional[Dict[str, str]]
) -> Iterator[RunningProxy]:
    log = open(os.path.join(workdir, "output.log"), "wb")  # noqa: SIM115 -- closed below, after the process
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        try:
            wait_listening(port, process)
        except RuntimeError as err:
            log.flush()
            with open(os.path.join(workdir, "output.log"), "rb") as output:
                raise RuntimeError(f"{name}: {err}\n{output.read()[-2000:].decode(errors='replace')}") from None
        yield RunningProxy(name, port, auth)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        log.close()


def _workdir() -> tempfile.TemporaryDirectory[str]:
    directory = tempfile.TemporaryDirectory(prefix="deepseek-proxy-")
    os.chmod(directory.name, 0o777)  # run as root, squid writes its logs as the 'proxy' user
    return directory


@contextlib.contextmanager
def tinyproxy(auth: Optional[Tuple[str, str]] = None) -> Iterator[RunningProxy]:
    """Debian's tinyproxy in the foreground (``-d``); ``auth`` turns on its Basic proxy authentication."""
    binary = require("tinyproxy", "tinyproxy")
    port = free_port()
    with _workdir() as workdir:
        lines = [
            f"Port {port}",
            f"Listen {HOST}",
            "Timeout 600",
            "MaxClients 200",
            "LogLevel Error",
            f"Allow {HOST}",
            "DisableViaHeader Yes",
        ]  # no ConnectPort line: CONNECT to any port
        if auth:
            lines.append(f"BasicAuth {auth[0]} {auth[1]}")
        config = os.path.join(workdir, "tinyproxy.conf")
        with open(config, "w") as out:
            out.write("\n".join(lines) + "\n")
        with _running("tinyproxy", [binary, "-d", "-c", config], port, workdir, auth, None) as proxy:
            yield proxy


@contextlib.contextmanager
def squid() -> Iterator[RunningProxy]:
    """Debian's squid in the foreground (``-N``), caching nothing, every client and port allowed."""
    binary = require("squid", "squid")
    port = free_port()
    with _workdir() as workdir:
        config = os.path.join(workdir, "squid.conf")
        with open(config, "w") as out:
            out.write(
                f"http_port {HOST}:{port}\nhttp_access allow all\ncache deny all\naccess_log none\n"
                f"cache_log {workdir}/cache.log\npid_filename {workdir}/squid.pid\ncoredump_dir {workdir}\n"
                "shutdown_lifetime 0 seconds\npinger_enable off\nnetdb_filename none\nlogfile_rotate 0\n"
            )
        with _running("squid", [binary, "-N", "-f", config], port, workdir, None, None) as proxy:
            yield proxy


@contextlib.contextmanager
def proxy_py(auth: Optional[Tuple[str, str]] = None) -> Iterator[RunningProxy]:
    """PyPI's proxy.py (``python -m proxy``), one acceptor and one worker, HOME in its temporary directory."""
    try:
        import proxy  # noqa: F401 -- only to know it is installed
    except ImportError:
        pytest.skip("proxy.py is not installed (pip install proxy.py; the test extra has it)")
    port = free_port()
    with _workdir() as workdir:
        argv = [sys.executable, "-m", "proxy", "--hostname", HOST, "--port", str(port)]
        argv += ["--num-acceptors", "1", "--num-workers", "1", "--log-level", "ERROR"]
        if auth:
            argv += ["--basic-auth", f"{auth[0]}:{auth[1]}"]
        env = dict(os.environ, HOME=workdir)  # it keeps a cache under ~/.proxy
        with _running("proxy.py", argv, port, workdir, auth, env) as running:
            yield running


#: name -> context manager starting that proxy (no authentication)
PROXIES: Dict[str, Callable[[], contextlib.AbstractContextManager[RunningProxy]]] = {
    "tinyproxy": tinyproxy,
    "squid": squid,
    "proxy.py": proxy_py,
}


# --- the fault-injecting TCP proxy ----------------------------------------------------------------------


@dataclass(frozen=True)
class Toxic:
    """What :class:`FaultProxy` does to the bytes coming back from the upstream (the response side).

    ``kind``: ``"none"``; ``"latency"`` (``seconds`` before each piece); ``"bandwidth"`` (``rate``
    bytes a second); ``"slicer"`` (pieces of ``size`` bytes, ``seconds`` apart); ``"slow_close"``
    (``seconds`` before passing on the upstream's close); ``"blackhole"`` (read the request, never
    answer); ``"stall_after_head"`` (the response head, then nothing, the connection kept open);
    ``"cut"`` (``limit`` bytes, then a clean close); ``"reset"`` (``limit`` bytes, then RST).
    ``"cut"`` and ``"reset"`` count ``limit`` from the end of the head when ``after_head``.
    """

    kind: str = "none"
    seconds: float = 0.0
    rate: int = 0
    size: int = 0
    limit: int = 0
    after_head: bool = False


class _Connection:
    """One client connection and its upstream, pumped by one thread."""

    def __init__(self, owner: FaultProxy, client: socket.socket) -> None:
        self.owner = owner
        self.client = client
        self.upstream: Optional[socket.socket] = None
        self.sent = 0  # response bytes passed on so far
        self.head_seen = False
        self.buffer = b""  # response bytes held until the head is complete
        self.reset_due = False  # the toxic ends this connection with an RST

    def close(self, rst: bool = False) -> None:
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if rst and sock is self.client:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            with contextlib.suppress(OSError):
                sock.close()

    def run(self) -> None:
        stop = self.owner.stopping
        toxic = self.owner.toxic
        try:
            if isinstance(self.client, ssl.SSLSocket):
                self.client.settimeout(5.0)
                self.client.do_handshake()
                self.client.settimeout(None)
            self.upstream = socket.create_connection(self.owner.upstream, timeout=5.0)
            self.upstream.settimeout(None)
            client, upstream = self.client, self.upstream
            watched = [client, upstream]
            while not stop.is_set():
                pending = isinstance(client, ssl.SSLSocket) and client.pending() > 0
                readable = [client] if pending else select.select(watched, [], [], _POLL)[0]
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        return
                    self.owner.seen_upstream(data)
                    upstream.sendall(data)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        if toxic.kind in ("stall_after_head", "blackhole"):
                            watched = [client]  # the client must not learn of it: silence until it gives up
                            continue
                        if toxic.kind == "slow_close":
                            stop.wait(toxic.seconds)
                        return
                    if not self.deliver(data, toxic):
                        return
        except (OSError, ValueError):
            return  # either side went away, or stop() closed the sockets under us
        finally:
            self.close(rst=self.reset_due)
            self.owner.forget(self)

    def deliver(self, data: bytes, toxic: Toxic) -> bool:
        """Pass ``data`` on as the toxic says; False ends the connection."""
        kind = toxic.kind
        stop = self.owner.stopping
        if kind == "blackhole":
            return True
        if kind in ("stall_after_head", "cut", "reset") and (kind == "stall_after_head" or toxic.after_head):
            if not self.head_seen:
                self.buffer += data
                end = self.buffer.find(_HEAD_END)
                if end < 0:
                    return True
                self.head_seen = True
                head, data = self.buffer[: end + 4], self.buffer[end + 4 :]
                self.buffer = b""
                self.client.sendall(head)
                if kind == "stall_after_head":
                    return True
            elif kind == "stall_after_head":
                return True
        if kind in ("cut", "reset"):
            room = toxic.limit - self.sent
            self.client.sendall(data[: max(room, 0)])
            self.sent += min(len(data), max(room, 0))
            if self.sent >= toxic.limit:
                self.reset_due = kind == "reset"
                return False
            return True
        if kind == "latency" and stop.wait(toxic.seconds):
            return False
        if kind in ("slicer", "bandwidth"):
            size = toxic.size if kind == "slicer" else max(1, toxic.rate // 20)
            delay = toxic.seconds if kind == "slicer" else size / toxic.rate
            for start in range(0, len(data), size):
                if start and stop.wait(delay):
                    return False
                self.client.sendall(data[start : start + size])
            self.sent += len(data)
            return True
        self.client.sendall(data)
        self.sent += len(data)
        return True


class FaultProxy:
    """A TCP proxy on 127.0.0.1 that forwards to ``upstream`` and applies ``toxic`` to what comes back.

    With ``tls`` (a server-side :class:`ssl.SSLContext`) it terminates TLS for its clients and speaks
    plain TCP to the upstream. ``connections`` counts accepted connections; ``upstream_bytes`` holds
    every byte clients sent (to count requests or look for a header).

    Usage::

        with FakeDeepSeek() as fake, FaultProxy(fake_address, Toxic("stall_after_head")) as proxy:
            DeepSeekClient(base_url=proxy.url).chat("hi")  # the head arrives, the body never does
    """

    def __init__(
        self, upstream: Tuple[str, int], toxic: Optional[Toxic] = None, *, tls: Optional[ssl.SSLContext] = None
    ) -> None:
        if upstream[0] not in (HOST, "localhost"):
            raise ValueError("FaultProxy only forwards to 127.0.0.1")
        self.upstream = upstream
        self.toxic = toxic or Toxic()
        self.tls = tls
        self.stopping = threading.Event()
        self.connections = 0
        self._upstream_bytes: List[bytes] = []
        self._lock = threading.Lock()
        self._open: Dict[_Connection, threading.Thread] = {}
        self._listener: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def upstream_bytes(self) -> bytes:
        with self._lock:
            return b"".join(self._upstream_bytes)

    def seen_upstream(self, data: bytes) -> None:
        with self._lock:
            self._upstream_bytes.append(data)

    def forget(self, connection: _Connection) -> None:
        with self._lock:
            self._open.pop(connection, None)

    def start(self) -> FaultProxy:
        listener = socket.create_server((HOST, 0), backlog=128)
        listener.settimeout(_POLL)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name=f"FaultProxy:{self.port}", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            connection = _Connection(self, sock)
            thread = threading.Thread(target=connection.run, name=f"FaultProxy:{self.port}:conn", daemon=True)
            with self._lock:
                if self.stopping.is_set():
                    sock.close()
                    return
                self.connections += 1
                self._open[connection] = thread
            thread.start()

    def stop(self) -> None:
        """Stop accepting, close every connection (so a client waiting on one wakes), join the threads."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            open_now = list(self._open.items())
        for connection, _ in open_now:
            for sock in (connection.client, connection.upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        for _, thread in open_now:
            thread.join(STOP_TIMEOUT)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def address_of(base_url: str) -> Tuple[str, int]:
    """``(host, port)`` of an ``http://127.0.0.1:PORT`` URL."""
    host, _, port = base_url.split("://", 1)[1].partition(":")
    return host, int(port.rstrip("/"))


# --- the client's entry points, driven alike by every route and tool test ----------------------------------

#: chat, iterating chat_stream, chat(stream=True) without and with on_chunk, a pool's map
ENTRIES = ("chat", "chat_stream", "chat_stream_true", "chat_on_chunk", "pool_map")


def streams(entry: str) -> bool:
    """Whether ``entry`` asks the server for an SSE stream."""
    return entry in ("chat_stream", "chat_stream_true", "chat_on_chunk")


def drive(client: Any, entry: str, prompt: str) -> str:
    """Make one call through ``entry`` and return the answer's content (errors propagate)."""
    import deepseek_pool as dp

    if entry == "chat":
        return str(client.chat(prompt).content)
    if entry == "chat_stream":
        with client.chat_stream(prompt) as stream:
            return "".join(chunk.content or "" for chunk in stream)
    if entry == "chat_stream_true":
        return str(client.chat(prompt, stream=True).content)
    if entry == "chat_on_chunk":
        seen: List[Any] = []
        completion = client.chat(prompt, stream=True, on_chunk=seen.append)
        assert "".join(chunk.content or "" for chunk in seen) == completion.content
        return str(completion.content)
    if entry == "pool_map":
        with dp.DeepSeekPool(client, max_workers=1) as pool:
            (result,) = pool.map([prompt])
        if result.error is not None:
            raise result.error
        return str(result.completion.content)
    raise ValueError(f"unknown entry point {entry!r}")
