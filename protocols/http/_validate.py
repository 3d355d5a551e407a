"""Reject request heads that h11 would accept but that make framing ambiguous.

h11 parses the request; these checks run first on the raw bytes and refuse
what h11 tolerates on purpose (bare LF line ends, obs-fold, control bytes) or
resolves by a rule another server might not share (a duplicated
Content-Length, Content-Length next to Transfer-Encoding).  Two servers that
disagree on where a request ends are how requests get smuggled, so anything
ambiguous is refused rather than interpreted.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["Rejection", "check_fields", "scan_head"]


class Rejection(NamedTuple):
    """Say which status a refused request gets, and why."""

    status: int
    reason: str


_BARE_LF = re.compile(rb"(?<!\r)\n")
# A CR at the very end of a partial head may still be followed by its LF.
_BARE_CR = re.compile(rb"\r(?=[^\n])")
# Tab is allowed inside field values; every other control byte is not.
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_OBS_FOLD = re.compile(rb"\r\n[ \t]")
_DIGITS = re.compile(rb"[0-9]+")
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")


def scan_head(data: bytes | bytearray) -> Rejection | None:
    """Check the bytes of a (possibly partial) request head.

    ``data`` starts at the request line and ends at or before the blank line
    that closes the head; a problem in a prefix is a problem in the whole, so
    this can refuse a head before it is complete.
    """
    if _BARE_LF.search(data):
        return Rejection(400, "bare LF in request head")
    if _BARE_CR.search(data):
        return Rejection(400, "bare CR in request head")
    if _CONTROL.search(data):
        return Rejection(400, "control character in request head")
    # The blank line ending the head is "\r\n\r\n"; only a field line may follow
    # a CRLF, and one that starts with whitespace is an obs-fold continuation.
    if _OBS_FOLD.search(data):
        return Rejection(400, "obsolete line folding in request head")
    return None


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    fields = []
    for line in head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            fields.append((name.lower(), value.strip(b" \t")))
    return fields


def _check_framing(lengths: list[bytes], codings: list[bytes]) -> Rejection | None:
    reason = None
    if len(lengths) > 1:
        reason = "more than one Content-Length"
    elif lengths and not _DIGITS.fullmatch(lengths[0]):
        reason = "malformed Content-Length"
    elif codings and lengths:
        reason = "both Content-Length and Transfer-Encoding"
    elif b"" in codings:
        reason = "empty transfer coding"
    elif any(c != b"chunked" for c in codings):
        return Rejection(501, "unsupported transfer coding")
    elif len(codings) > 1:
        reason = "chunked applied more than once"
    return None if reason is None else Rejection(400, reason)


def check_fields(head: bytes, max_body_size: int | None = None) -> Rejection | None:
    """Check the framing fields of a complete head that passed :func:`scan_head`.

    A ``Content-Length`` over ``max_body_size`` is a 413 here, before any
    parser sees it: llhttp refuses one past 2**64 as malformed.
    """
    lengths: list[bytes] = []
    codings: list[bytes] = []
    hosts: list[bytes] = []
    for name, value in _fields(head):
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.extend(c.strip(b" \t").lower() for c in value.split(b","))
        elif name == b"host":
            hosts.append(value)
    rejection = _check_framing(lengths, codings)
    if rejection is not None:
        return rejection
    if lengths and max_body_size is not None and int(lengths[0]) > max_body_size:
        return Rejection(413, "request body too large")
    if any(not _HOST.fullmatch(host) for host in hosts):
        return Rejection(400, "malformed Host")
    return None
