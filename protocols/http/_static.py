"""Serve files from a directory, safely, with conditional and range requests."""

from __future__ import annotations

import email.utils
import functools
import mimetypes
import os
import re
import stat
import urllib.parse
from typing import BinaryIO

from ._server import HTTPExchange

__all__ = ["StaticFiles", "send_file"]

_RANGE = re.compile(rb"bytes=([0-9]*)-([0-9]*)")
# Percent-encoded slash, backslash and NUL would let one segment become several.
_FORBIDDEN_ENCODED = (b"%2f", b"%5c", b"%00")


def _open_regular(path: str) -> tuple[BinaryIO, os.stat_result] | None:
    # O_NONBLOCK: opening a FIFO must not hang; fstat then refuses it anyway.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb"), info


def _read_at(file: BinaryIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    return file.read(size)


async def send_file(exchange: HTTPExchange, file: BinaryIO, start: int, end: int) -> None:
    """Send bytes ``start`` to ``end`` of ``file`` as the rest of the response, and end it.

    Each ``file_chunk_size`` piece is read through the blocking runner and
    waits for the transport, so memory stays flat; HEAD reads nothing.
    """
    offset = start
    while offset < end and exchange.method != "HEAD":
        want = min(exchange.config.file_chunk_size, end - offset)
        read = functools.partial(_read_at, file, offset, want)
        data = await exchange.blocking.run(exchange.loop, read)
        if not data:
            break  # the file shrank: end() reports the short body and closes
        offset += len(data)
        if offset >= end:
            await exchange.end(data)  # the last (often only) piece goes with the head
            return
        await exchange.write(data)
    await exchange.end()


def _etag_matches(header: bytes, etag: bytes) -> bool:
    if header.strip() == b"*":
        return True
    # If-None-Match uses the weak comparison: W/ prefixes do not matter.
    tags = {tag.strip().removeprefix(b"W/") for tag in header.split(b",")}
    return etag in tags


class StaticFiles:
    """Serve the files under ``root`` at the URL prefix ``prefix``.

    Only regular files inside ``root`` (after resolving symlinks) are
    served; dot-files, encoded separators, ``..`` and empty segments get
    404.  GET and HEAD only; ETag, Last-Modified, a single byte range.
    Files are read in ``file_chunk_size`` pieces through the blocking runner
    and each piece waits for the transport, so memory stays flat.
    """

    def __init__(self, root: str | os.PathLike[str], prefix: str = "") -> None:
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise ValueError(f"{root!s} is not a directory")
        self.prefix = prefix.rstrip("/").encode("ascii")

    def resolve(self, path: bytes) -> str | None:
        """Map a percent-encoded URL path below the prefix to a file path, or None."""
        if not path.startswith(self.prefix + b"/"):
            return None
        rest = path[len(self.prefix) + 1 :]
        lowered = rest.lower()
        if any(bad in lowered for bad in _FORBIDDEN_ENCODED):
            return None
        try:
            text = urllib.parse.unquote_to_bytes(rest).decode("utf-8")
        except UnicodeDecodeError:
            return None
        segments = text.split("/")
        # Empty segments ("//", trailing "/"), dot-segments and dot-files are refused.
        if any(
            not segment or segment.startswith(".") or "\\" in segment or "\0" in segment
            for segment in segments
        ):
            return None
        candidate = os.path.realpath(os.path.join(self.root, *segments))
        if os.path.commonpath([candidate, self.root]) != self.root or candidate == self.root:
            return None
        return candidate

    async def __call__(self, exchange: HTTPExchange) -> None:
        """Answer ``exchange`` with a file, a 304, 206, 404, 405 or 416."""
        if exchange.method not in ("GET", "HEAD"):
            await exchange.respond(405, [(b"Allow", b"GET, HEAD")], b"method not allowed\n")
            return
        path = self.resolve(exchange.path)
        runner = exchange.blocking
        opened = (
            None
            if path is None
            else await runner.run(exchange.loop, functools.partial(_open_regular, path))
        )
        if opened is None:
            await exchange.respond(404, [(b"Content-Type", b"text/plain")], b"not found\n")
            return
        file, info = opened
        try:
            assert path is not None
            await self._serve(exchange, path, file, info)
        finally:
            file.close()

    async def _serve(
        self, exchange: HTTPExchange, path: str, file: BinaryIO, info: os.stat_result
    ) -> None:
        size = info.st_size
        etag = f'"{info.st_mtime_ns:x}-{size:x}"'.encode("ascii")
        modified = email.utils.formatdate(info.st_mtime, usegmt=True).encode("ascii")
        validators = [(b"ETag", etag), (b"Last-Modified", modified)]
        if self._not_modified(exchange, etag, info.st_mtime):
            exchange.start_response(304, validators)
            await exchange.end()
            return
        content_type, _ = mimetypes.guess_type(path)
        content_type = content_type or "application/octet-stream"
        if content_type.startswith("text/"):
            content_type += "; charset=utf-8"
        headers = [
            (b"Content-Type", content_type.encode("ascii")),
            (b"Accept-Ranges", b"bytes"),
            *validators,
        ]
        start, end, status = 0, size, 200
        wanted = self._range(exchange, etag, modified, size)
        if wanted == "unsatisfiable":
            await exchange.respond(416, [(b"Content-Range", f"bytes */{size}".encode())])
            return
        if isinstance(wanted, tuple):
            start, end = wanted
            status = 206
            headers.append((b"Content-Range", f"bytes {start}-{end - 1}/{size}".encode()))
        headers.append((b"Content-Length", str(end - start).encode("ascii")))
        exchange.start_response(status, headers)
        await send_file(exchange, file, start, end)

    @staticmethod
    def _not_modified(exchange: HTTPExchange, etag: bytes, mtime: float) -> bool:
        if_none_match = exchange.header(b"if-none-match")
        if if_none_match is not None:
            return _etag_matches(if_none_match, etag)
        since = exchange.header(b"if-modified-since")
        if since is None:
            return False
        try:
            when = email.utils.parsedate_to_datetime(since.decode("latin-1"))
        except (TypeError, ValueError):
            return False  # an unparsable date is ignored (RFC 9110 13.1.3)
        return int(mtime) <= when.timestamp()

    @staticmethod
    def _range(
        exchange: HTTPExchange, etag: bytes, modified: bytes, size: int
    ) -> tuple[int, int] | str | None:
        """Return (start, end) for a satisfiable single range, "unsatisfiable", or None."""
        header = exchange.header(b"range")
        if header is None or exchange.method != "GET":
            return None
        if_range = exchange.header(b"if-range")
        if if_range is not None and if_range.strip() not in (etag, modified):
            return None  # the representation changed: send all of it
        match = _RANGE.fullmatch(header.strip())
        if match is None:
            return None  # several ranges or another unit: ignoring Range is allowed
        return _byte_range(match.group(1), match.group(2), size)


def _byte_range(first: bytes, last: bytes, size: int) -> tuple[int, int] | str | None:
    """Resolve ``bytes=first-last`` against ``size`` (see :meth:`StaticFiles._range`)."""
    start, end = 0, size
    if first:
        start = int(first)
        if last:
            if int(last) < start:
                return None  # an invalid range is ignored
            end = min(int(last) + 1, size)
    elif last:
        start = max(0, size - int(last))  # suffix range: the last N bytes
        if int(last) == 0:
            start = size
    else:
        return None
    return "unsatisfiable" if start >= size else (start, end)
