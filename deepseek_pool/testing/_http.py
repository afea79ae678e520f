"""Just enough HTTP/1.1 for the fake: read a request, frame a response.

Hand-written rather than :mod:`http.server` so a request costs a few ``readline`` calls and one
``sendall``, with no :mod:`email` header parsing and no per-request logging.
"""

from __future__ import annotations

import socket
import struct
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import BinaryIO, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

MAX_LINE = 65_536
MAX_HEADERS = 100
MAX_BODY = 64 * 1024 * 1024

STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
CHUNK_END = b"0\r\n\r\n"
BLANK_CHUNK = b"1\r\n\n\r\n"
KEEPALIVE_CHUNK = b"e\r\n: keep-alive\n\n\r\n"
#: SO_LINGER on with a zero timeout: close() then sends RST instead of FIN.
LINGER_RST = struct.pack("ii", 1, 0)

#: (method, target, version, lower-cased headers, body)
Request = Tuple[str, str, str, Dict[str, str], bytes]


_date_cache: Tuple[int, str] = (0, "")


def http_date() -> str:
    """Now as an RFC 9110 IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``), for the ``Date`` header.

    An origin server with a clock must send ``Date`` (RFC 9110, section 6.6.1); the text is
    rebuilt once a second, not once per answer.
    """
    global _date_cache
    now = int(time.time())
    second, text = _date_cache
    if second != now:
        text = formatdate(now, usegmt=True)
        _date_cache = (now, text)
    return text


def origin_form(target: str) -> str:
    """The ``/path?query`` of a request target, whether origin-form or absolute-form.

    A server must accept the absolute form (``GET http://host/models``, RFC 9112, section 3.2.2),
    which clients send to a proxy and some send everywhere.
    """
    if target.startswith("/") or "://" not in target:
        return target
    parts = urlsplit(target)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


class BadRequest(Exception):
    """Input that is not HTTP/1.x; carries the 4xx status to answer before closing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_request(rfile: BinaryIO, sock: socket.socket) -> Optional[Request]:
    """Read one HTTP/1.x request; None on a clean EOF between requests.

    :raises BadRequest: on malformed input, answered with a 4xx and a close.
    """
    line = rfile.readline(MAX_LINE + 1)
    while line in (b"\r\n", b"\n"):  # RFC 9112 lets a server skip empty lines before a request
        line = rfile.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE:
        raise BadRequest(414, "Request line too long")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest(400, f"Malformed request line {line[:100]!r}")
    method, target, version = (p.decode("latin-1") for p in parts)
    headers: Dict[str, str] = {}
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            return None
        name, sep, value = line.partition(b":")
        if not sep or len(line) > MAX_LINE or len(headers) >= MAX_HEADERS:
            raise BadRequest(431 if sep else 400, "Malformed or too many header lines")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if headers.get("expect", "").lower() == "100-continue":
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = read_chunked(rfile)
    else:
        length = headers.get("content-length")
        if not length:
            return method, target, version, headers, b""
        if not length.isdigit() or int(length) > MAX_BODY:
            raise BadRequest(400 if not length.isdigit() else 413, "Bad Content-Length")
        body = rfile.read(int(length))
        if len(body) < int(length):
            return None
    return method, target, version, headers, body


def read_chunked(rfile: BinaryIO) -> bytes:
    parts: List[bytes] = []
    size_total = 0
    while True:
        line = rfile.readline(MAX_LINE + 1)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest(400, "Bad chunk size") from None
        if size == 0:
            while rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        size_total += size
        if size_total > MAX_BODY:
            raise BadRequest(413, "Request body too large")
        parts.append(rfile.read(size))
        rfile.readline(MAX_LINE + 1)
