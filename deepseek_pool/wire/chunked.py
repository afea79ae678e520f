"""HTTP/1.1 chunked framing, stripped from bytes fed in any split.

Push-based, so the thread that reads a body and the shared stream reader
(:mod:`deepseek_pool.wire.reader`) strip the framing with one piece of code: feed it what a
read brought, get back the payload in it. Errors are urllib3's own, so they translate
as urllib3's ``read_chunked`` would have raised them.
"""

from __future__ import annotations

from typing import Any, List

from urllib3.exceptions import InvalidChunkLength, ProtocolError

__all__ = ["MAX_CHUNK_LINE", "Dechunker"]

#: a chunk-size line longer than this is not HTTP chunked framing
MAX_CHUNK_LINE = 4096


class Dechunker:
    """The payload of a ``Transfer-Encoding: chunked`` body, fed in pieces split anywhere.

    After the terminating chunk and its trailers, :attr:`done` is set, and :attr:`clean`
    says whether the body ended exactly where the bytes fed did (bytes after it belong to
    no response: the connection must then be closed, not reused).

    :param response: named in :class:`~urllib3.exceptions.InvalidChunkLength` errors.
    """

    __slots__ = ("_left", "_response", "_skip", "_tail", "clean", "done", "trailers")

    def __init__(self, response: Any = None) -> None:
        self._response = response
        self._tail = b""  # an incomplete size or trailer line
        self._left = 0  # payload bytes of the current chunk still to come
        self._skip = 0  # bytes of the CRLF after a chunk's payload still to skip
        #: the last chunk was seen: only trailer lines and the blank line remain
        self.trailers = False
        #: the body is whole
        self.done = False
        #: nothing followed the body in what was fed
        self.clean = True

    def feed(self, data: bytes) -> bytes:
        """The payload bytes in ``data`` (``b""`` when it held only framing).

        :raises urllib3.exceptions.InvalidChunkLength: a size line is not one.
        """
        if self.done:
            self.clean = self.clean and not data
            return b""
        buf = self._tail + data if self._tail else data
        pos = 0
        end = len(buf)
        left = self._left
        skip = self._skip
        out: List[bytes] = []
        while pos < end:
            if left:
                take = left if left <= end - pos else end - pos
                out.append(buf[pos : pos + take] if pos or take != end else buf)
                pos += take
                left -= take
                if left:
                    break
                skip = 2
            if skip:
                take = skip if skip <= end - pos else end - pos
                pos += take
                skip -= take
                if skip:
                    break
            eol = buf.find(b"\n", pos)
            if eol < 0:
                if end - pos > MAX_CHUNK_LINE:
                    raise InvalidChunkLength(self._response, buf[pos : pos + 40])
                break
            line = buf[pos:eol]
            pos = eol + 1
            if self.trailers:
                if line.strip():
                    continue  # a trailer field: ignored, as urllib3 ignores them
                self.done = True
                self.clean = pos == end
                pos = end
                break
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise InvalidChunkLength(self._response, line) from None
            if size < 0:
                raise InvalidChunkLength(self._response, line)
            if size == 0:
                self.trailers = True
            left = size
        self._tail = buf[pos:] if pos < end else b""
        self._left = left
        self._skip = skip
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def end(self) -> bytes:
        """The connection ended: fine after the last chunk, else the body was cut short.

        Returns ``b""`` (no payload), so a reader can write ``feed(data) if data else end()``.

        :raises urllib3.exceptions.ProtocolError: the body ended before its last chunk.
        """
        if not self.trailers:
            raise ProtocolError("Response ended prematurely")
        self.done = True  # no final CRLF after the trailers: urllib3 allows it too
        return b""
