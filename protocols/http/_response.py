"""Frame responses: every rule about how a response body is delimited lives here.

The rules are h11's (RFC 9112 section 6): a response to HEAD, and a 204 or
304, has no body whatever its headers say; ``Transfer-Encoding: chunked``
beats ``Content-Length``; a body of unknown length is chunked for an
HTTP/1.1 client and delimited by closing the connection for an HTTP/1.0
one.  They are written out here, rather than run through h11's state
machine, because building and checking h11 events cost more than parsing
the request did; the header checks are h11's own regular expressions.
"""

from __future__ import annotations

import re

__all__ = ["CONTINUE", "FramingMisuse", "ResponseFramer"]

#: the interim response to ``Expect: 100-continue``
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# h11's field-value: no leading or trailing whitespace, no CR, LF or NUL.
_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_REASON = re.compile(rb"(?:[ \t]|[^\x00\s])*")
_DIGITS = re.compile(rb"[0-9]{1,20}")


#: fields already found valid: an application sends the same few on every
#: response, and the same bytes always get the same verdict
_VALID: set[tuple[bytes, bytes]] = set()
_VALID_LIMIT = 1024


class FramingMisuse(Exception):
    """Signal a body that does not match the framing its head declared."""


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip(b" \t").lower() for token in value.split(b",")]


def _checked(
    fields: list[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], bytes | None, bool, bool]:
    """Validate ``fields``; return them (one Content-Length), the length, chunked, close."""
    length: bytes | None = None
    chunked = False
    close = False
    out: list[tuple[bytes, bytes]] = []
    for field in fields:
        name, value = field
        if field not in _VALID:
            if not _NAME.fullmatch(name):
                raise ValueError(f"illegal header name {name!r}")
            if not _VALUE.fullmatch(value):
                raise ValueError(f"illegal header value {value!r}")
            if len(_VALID) >= _VALID_LIMIT:
                _VALID.clear()  # e.g. one Date a second: start over, never grow
            _VALID.add(field)
        lower = name.lower()
        if lower == b"content-length":
            values = {token.strip() for token in value.split(b",")}
            single = values.pop()
            if values or not _DIGITS.fullmatch(single) or length not in (None, single):
                raise ValueError(f"bad or conflicting Content-Length {value!r}")
            if length is None:
                length = single
                out.append((name, single))
            continue
        if lower == b"transfer-encoding":
            if chunked or value.lower() != b"chunked":
                raise ValueError("only one Transfer-Encoding: chunked is supported")
            chunked = True
        elif lower == b"connection":
            close = close or b"close" in _tokens(value)
        out.append((name, value))
    return out, length, chunked, close


class ResponseFramer:
    """Turn one response (head, body pieces, end) into bytes for one request.

    ``method`` and ``http_version`` are the request's; ``keep_alive`` says
    whether the request allows the connection to be reused.  After
    :meth:`head`, :attr:`keep_alive` says whether the response does too.
    """

    def __init__(self, method: str, http_version: str, keep_alive: bool) -> None:
        self._head_only = method == "HEAD"
        self._old_client = http_version < "1.1"
        self.keep_alive = keep_alive
        self._chunked = False
        self._left: int | None = None  # bytes the declared length still expects

    def head(self, status: int, fields: list[tuple[bytes, bytes]], reason: bytes) -> bytes:
        """Check the status line and fields; return the head with its framing fields.

        Raise :class:`ValueError` for a response h11 would refuse to send.
        """
        if not isinstance(status, int) or not 200 <= status <= 999:
            raise ValueError(f"status code must be an integer from 200 to 999, not {status!r}")
        if not _REASON.fullmatch(reason):
            raise ValueError(f"illegal reason phrase {reason!r}")
        out, length, chunked, close = _checked(fields)
        # HEAD gets the headers a GET would: the framing is chosen as for GET.
        if status in (204, 304):
            self._left = 0
        elif not chunked and length is not None:
            self._left = int(length)
        else:
            # Unknown length: chunked for HTTP/1.1, the end of the connection for 1.0.
            framing = (b"content-length", b"transfer-encoding")
            out = [(n, v) for n, v in out if n.lower() not in framing]
            if self._old_client:
                close = close or not self._head_only
                self._left = None
            else:
                out.append((b"Transfer-Encoding", b"chunked"))
                self._chunked = True
        if self._head_only:
            self._left, self._chunked = 0, False
        if close or not self.keep_alive:
            self.keep_alive = False
            out = self._with_close(out)
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        lines += [b"%s: %s\r\n" % field for field in out]
        lines.append(b"\r\n")
        return b"".join(lines)

    @staticmethod
    def _with_close(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        tokens: set[bytes] = set()
        kept = []
        for name, value in fields:
            if name.lower() == b"connection":
                tokens.update(t for t in _tokens(value) if t)
            else:
                kept.append((name, value))
        tokens.discard(b"keep-alive")
        tokens.add(b"close")
        kept.append((b"Connection", b", ".join(sorted(tokens))))
        return kept

    def data(self, data: bytes) -> list[bytes]:
        """Return ``data`` framed, as pieces with ``data`` itself uncopied."""
        if self._chunked:
            return [b"%x\r\n" % len(data), data, b"\r\n"]
        if self._left is not None:
            if len(data) > self._left:
                raise FramingMisuse("too much data for declared Content-Length")
            self._left -= len(data)
        return [data]

    def end(self) -> bytes:
        """Return what ends the body."""
        if self._chunked:
            return b"0\r\n\r\n"
        if self._left:
            raise FramingMisuse("too little data for declared Content-Length")
        if self._left is None:
            self.keep_alive = False  # the body ends when the connection does
        return b""
