"""Read request bodies: where a body ends is decided here, and only here.

The framing of a body is where two servers can disagree on where a request
ends, so it is read by this one strict reader whichever parser read the
head.  A chunked body must follow RFC 9112 section 7.1 to the byte: hex
sizes, extensions of tokens and quoted strings, CRLF everywhere, trailer
fields of a field-line's grammar.  Anything else (a bare LF or CR, a space
after the size, a CR inside an extension) is refused rather than read one
way here and another way by a proxy in front.
"""

from __future__ import annotations

import re

__all__ = ["BodyReader", "ChunkedReader", "FramingError", "LengthReader"]


class FramingError(Exception):
    """Signal a body whose framing is malformed (400) or too large (413)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x20-\x7e\x80-\xff])*"'
_EXTENSION = rb"[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?" % (_TOKEN, _TOKEN, _QUOTED)
# 16 hex digits hold any size a 64-bit length can; more is refused outright.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:" + _EXTENSION + rb")*\r\n")
_TRAILER_LINE = re.compile(_TOKEN + rb":[ \t]*[\t \x21-\x7e\x80-\xff]*\r\n")
#: the longest chunk-size line (with extensions) or trailer line read
_LINE_LIMIT = 4096


def _take(buffer: bytearray, size: int) -> bytes:
    """Remove and return the first ``size`` bytes of ``buffer`` (none if ``size`` <= 0)."""
    if size <= 0:
        return b""
    data = bytes(buffer[:size])
    del buffer[:size]
    return data


class BodyReader:
    """Take body bytes from the front of a buffer until the body ends.

    :meth:`read` returns the next piece of the body (at most ``room``
    bytes), or ``b""`` when it needs more input or the body is complete
    (:attr:`done`).  It raises :class:`FramingError` on malformed framing
    or when the body grows past ``limit``.
    """

    done = False

    def read(self, buffer: bytearray, room: int) -> bytes:  # pragma: no cover - abstract
        """Consume framing and data from ``buffer``; return body bytes."""
        raise NotImplementedError


class LengthReader(BodyReader):
    """Read a body of ``Content-Length`` bytes (the head was checked against the limit)."""

    def __init__(self, length: int) -> None:
        self._left = length
        self.done = length == 0

    def read(self, buffer: bytearray, room: int) -> bytes:
        """Consume up to ``room`` bytes of the body."""
        data = _take(buffer, min(self._left, room, len(buffer)))
        self._left -= len(data)
        self.done = self._left == 0
        return data


class ChunkedReader(BodyReader):
    """Read a chunked body strictly; record whether it had trailer fields."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._received = 0
        self._left = 0  # data bytes left in the current chunk
        self._state = "size"  # size, data, data-end, trailer
        self.trailers = False

    def read(self, buffer: bytearray, room: int) -> bytes:
        """Consume chunk framing, and up to ``room`` bytes of chunk data."""
        while not self.done:
            if self._state == "data":
                data = _take(buffer, min(self._left, room, len(buffer)))
                self._left -= len(data)
                if self._left == 0:
                    self._state = "data-end"
                return data
            if self._state == "data-end":
                if len(buffer) < 2:
                    if buffer and buffer[0] != 0x0D:
                        raise FramingError(400, "chunk data longer than its size")
                    return b""
                if buffer[:2] != b"\r\n":
                    raise FramingError(400, "chunk data longer than its size")
                del buffer[:2]
                self._state = "size"
                continue
            line = self._line(buffer)
            if line is None:
                return b""
            if self._state == "size":
                self._size_line(line)
            elif line == b"\r\n":
                self.done = True
            elif _TRAILER_LINE.fullmatch(line):
                self.trailers = True
            else:
                raise FramingError(400, "malformed trailer field")
        return b""

    def _line(self, buffer: bytearray) -> bytes | None:
        """Remove and return one line ending in LF, or None if it is not complete."""
        end = buffer.find(b"\n", 0, _LINE_LIMIT)
        if end < 0:
            if len(buffer) >= _LINE_LIMIT:
                raise FramingError(400, "chunk-size or trailer line too long")
            return None
        # Only CRLF ends a line: a bare LF here is where smuggling starts.
        if end == 0 or buffer[end - 1] != 0x0D:
            raise FramingError(400, "bare LF in chunked framing")
        line = bytes(buffer[: end + 1])
        del buffer[: end + 1]
        return line

    def _size_line(self, line: bytes) -> None:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise FramingError(400, "malformed chunk-size line")
        size = int(match.group(1), 16)
        self._received += size
        if self._received > self._limit:
            raise FramingError(413, "request body too large")
        if size == 0:
            self._state = "trailer"
        else:
            self._left = size
            self._state = "data"
