"""A real redis-server for the tests: started on a free loopback port, stopped at the end.

``RedisServer`` runs Debian's ``redis-server`` binary with no persistence, bound to
127.0.0.1 only. :meth:`RedisServer.stop` and :meth:`RedisServer.start` let a test take it
away mid-run and bring it back on the same port. Every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Iterator, List, Optional

#: Seconds to wait for the server to answer PING after it starts.
START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> Optional[str]:
    return shutil.which("redis-server")


class RedisServer:
    """One redis-server process on 127.0.0.1; ``url(db)`` names a database of it."""

    def __init__(self, binary: str, port: Optional[int] = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.directory = tempfile.mkdtemp(prefix="deepseek-pool-redis-")
        self.process: Optional[subprocess.Popen[bytes]] = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def command(self) -> List[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.directory,
            "--protected-mode",
            "yes",
        ]

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode} (port {self.port})")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {START_TIMEOUT} s")
            time.sleep(0.02)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server at once (as a crash would) and wait for it."""
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A started RedisServer, stopped at the end; the test is skipped where there is none."""
    import pytest

    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.close()
