"""Parse a request head: the one place that knows which parser runs.

The protocol finds a complete head (up to its blank line), refuses what
``_validate`` refuses, and hands the bytes to the parser named by
``HTTPConfig.parser``; it gets back a :class:`RequestHead` or a
:class:`~._validate.Rejection`.  Bodies are not the parsers' business
(``_body`` reads them), so both parsers see heads only and the rest of the
server never asks which one ran.

* ``h11``: pure Python; its grammar is the reference.
* ``httptools`` (llhttp, in C): about ten times faster on a head.  It is
  stricter than h11 about methods (only those llhttp knows; any other is
  answered 501) and more lenient about syntax, so the head must first match
  h11's grammar, checked here by one regular expression.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal, NamedTuple

import h11

from ._validate import Rejection

__all__ = ["PARSERS", "HeadParser", "ParserName", "RequestHead", "head_parser"]

ParserName = Literal["h11", "httptools"]
#: every parser ``HTTPConfig.parser`` may name
PARSERS: tuple[ParserName, ...] = ("h11", "httptools")


class RequestHead(NamedTuple):
    """Describe a parsed request head; header names are lower-case, values stripped."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]


#: ``parse(head, max_size)``: ``head`` ends with its blank line
HeadParser = Callable[[bytes, int], "RequestHead | Rejection"]


def _parse_h11(head: bytes, max_size: int) -> RequestHead | Rejection:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_size)
    conn.receive_data(head)
    try:
        request = conn.next_event()
    except h11.RemoteProtocolError as exc:
        return Rejection(exc.error_status_hint, str(exc))
    assert isinstance(request, h11.Request)
    return RequestHead(
        bytes(request.method),
        bytes(request.target),
        bytes(request.http_version),
        [(bytes(name), bytes(value)) for name, value in request.headers],
    )


# h11's grammar (h11/_abnf.py): a token method, a target of visible ASCII,
# single spaces, HTTP/d.d; field names are tokens, values have no leading or
# trailing whitespace inside and no CR, LF or NUL.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_HEAD = re.compile(
    rb"(%s) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])\r\n"
    rb"(?:%s:[ \t]*(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?[ \t]*\r\n)*\r\n" % (_TOKEN, _TOKEN)
)


class _Fields:
    """Collect httptools' header callbacks."""

    __slots__ = ("headers",)

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.strip(b" \t")))


def _parse_httptools(head: bytes, max_size: int) -> RequestHead | Rejection:
    import httptools  # optional; HTTPConfig checked that it is installed

    match = _HEAD.fullmatch(head)
    if match is None:
        return Rejection(400, "malformed request head")
    fields = _Fields()
    parser = httptools.HttpRequestParser(fields)
    # The version's syntax was checked above; which versions are served is
    # decided by the protocol (a 2.0 request gets 505, not 400).
    parser.set_dangerous_leniencies(lenient_version=True)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # the head is complete; what follows is not parsed here
    except httptools.HttpParserInvalidMethodError:
        return Rejection(501, "unknown method")
    except httptools.HttpParserError as exc:
        return Rejection(400, f"malformed request head: {exc}")
    version = match.group(3)
    hosts = sum(1 for name, _ in fields.headers if name == b"host")
    # h11's rules: exactly one Host in HTTP/1.1, at most one in 1.0.
    if hosts > 1 or (hosts == 0 and version >= b"1.1"):
        return Rejection(400, "missing or repeated Host")
    return RequestHead(match.group(1), match.group(2), version, fields.headers)


_PARSE: dict[str, HeadParser] = {"h11": _parse_h11, "httptools": _parse_httptools}


def head_parser(name: str) -> HeadParser:
    """Return the head parser ``name`` (one of :data:`PARSERS`)."""
    return _PARSE[name]
