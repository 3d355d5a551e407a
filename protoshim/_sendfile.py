"""Sending a file without copying it: ``loop.sendfile`` and ``loop.sock_sendfile``.

The bytes go from the file to the socket through ``os.sendfile``.  The rules
are asyncio's own:

* ``offset`` and ``count`` select the bytes, and the file position is left
  just after the last byte sent, on success and on error alike;
* an ``os.sendfile`` failure before any byte was sent (no such call, not a
  regular file, a socket it cannot write) raises SendfileNotAvailableError,
  so asyncio falls back to reads and writes when ``fallback`` allows it;
* a peer that goes away in the middle raises ConnectionError;
* on a transport, its buffered bytes go first, reading is paused for the
  transfer and resumed after, and ``write()`` raises RuntimeError meanwhile.

A transport's socket belongs to its adapter, whose framework owns the
descriptor's watchers, so core cannot wait for writability with
``add_writer`` there.  When the socket is full, the next few bytes of the
file go through the stream's ordinary write path instead; once the adapter
reports them sent, the socket has room again and ``os.sendfile`` resumes.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import socket
from typing import TYPE_CHECKING, Any

from ._stream import AFTER_EOF

if TYPE_CHECKING:
    from ._loop import EventLoop
    from ._stream import StreamTransport

__all__ = ["sock_sendfile", "transport_sendfile"]

#: Bytes sent through a transport's write path when its socket is full.  The
#: write is only a way to learn when the socket has room again, so it stays
#: small and most of the file still moves without a copy.
PUSH_SIZE = 4096


def _source(file: Any) -> tuple[int, int]:
    """Return the descriptor and size of ``file``, if ``os.sendfile`` can read it."""
    if not hasattr(os, "sendfile"):
        raise asyncio.SendfileNotAvailableError("os.sendfile() is not available")
    try:
        fileno: int = file.fileno()
    except (AttributeError, io.UnsupportedOperation):
        raise asyncio.SendfileNotAvailableError("not a regular file") from None
    try:
        size = os.fstat(fileno).st_size
    except OSError:
        raise asyncio.SendfileNotAvailableError("not a regular file") from None
    return fileno, size


class _Target:
    """Where the bytes go, and how to wait when the socket is full."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def check(self) -> None:
        """Raise if the transfer cannot go on."""

    async def blocked(self, fileno: int, offset: int, limit: int) -> int | None:
        """Wait until the socket has room; return how many bytes were sent
        meanwhile (0 at the end of the file), or None if none were."""
        raise NotImplementedError


class _SocketTarget(_Target):
    """A socket of the application's own: core may watch it."""

    def __init__(self, loop: EventLoop, sock: socket.socket) -> None:
        super().__init__(sock)
        self._loop = loop

    async def blocked(self, fileno: int, offset: int, limit: int) -> int | None:
        await self._loop._wait_fd(self.sock, write=True)
        return None


class _TransportTarget(_Target):
    """A transport's socket: its adapter watches it, so wait through its writes."""

    def __init__(self, transport: StreamTransport, sock: socket.socket) -> None:
        super().__init__(sock)
        self._transport = transport

    def check(self) -> None:
        if self._transport.is_closing():
            raise ConnectionError("Connection is closed by peer")

    async def blocked(self, fileno: int, offset: int, limit: int) -> int | None:
        data = os.pread(fileno, min(limit, PUSH_SIZE), offset)
        if data:
            self._transport._primitive.write(data)
            await self._transport._flushed()
        return len(data)


async def _send(target: _Target, fileno: int, offset: int, count: int | None, size: int) -> int:
    blocksize = count if count else size
    if not blocksize:
        return 0  # an empty file
    total = 0
    try:
        while True:
            if count:
                blocksize = count - total
                if blocksize <= 0:
                    return total
            target.check()
            try:
                sent = os.sendfile(target.sock.fileno(), fileno, offset + total, blocksize)
            except (BlockingIOError, InterruptedError):
                pushed = await target.blocked(fileno, offset + total, blocksize)
                if pushed is None:
                    continue
                if not pushed:
                    return total  # the end of the file
                total += pushed
                continue
            except OSError as exc:
                if total == 0:
                    # Most often the file is not one that sendfile(2) can map;
                    # plain reads and writes still work.
                    raise asyncio.SendfileNotAvailableError("os.sendfile call failed") from exc
                if exc.errno == errno.ENOTCONN and not isinstance(exc, ConnectionError):
                    # The peer left in the middle: the same error on every Unix.
                    raise ConnectionError(errno.ENOTCONN, "socket is not connected") from exc
                raise
            if not sent:
                return total  # the end of the file
            total += sent
            # Let the loop run between calls, as a writer callback would.
            await asyncio.sleep(0)
    finally:
        if total:
            os.lseek(fileno, offset + total, os.SEEK_SET)


async def sock_sendfile(
    loop: EventLoop, sock: socket.socket, file: Any, offset: int, count: int | None
) -> int:
    """Send ``file`` on an application's non-blocking stream socket."""
    fileno, size = _source(file)
    return await _send(_SocketTarget(loop, sock), fileno, offset, count, size)


async def transport_sendfile(
    loop: EventLoop, transport: StreamTransport, file: Any, offset: int, count: int | None
) -> int:
    """Send ``file`` on the socket of a stream transport, after its buffer."""
    sock = transport._direct_socket()
    if sock is None:
        raise asyncio.SendfileNotAvailableError(
            f"the stream of {transport!r} has no socket that core may write to"
        )
    loop._check_sendfile_params(sock, file, offset, count)
    fileno, size = _source(file)
    resume_reading = transport.is_reading()
    transport.pause_reading()
    transport._refusing = "unable to write; sendfile is in progress"
    try:
        await transport._flushed()
        return await _send(_TransportTarget(transport, sock), fileno, offset, count, size)
    finally:
        transport._refusing = AFTER_EOF if transport._eof else None
        if resume_reading:
            transport.resume_reading()
