"""Every use of Twisted's private state, in one place; the rest is public API.

Verified on Twisted 21.2.0 and 26.10.0, the oldest and newest releases the
nox matrix runs.  Private names (7): ``FileDescriptor._tempDataBuffer`` and
``_tempDataLen``, the epoll reactor's ``_reads``, ``_writes``,
``_selectables`` and ``_poller``, and the reactor's ``waker`` (no interface
offers it).  Methods replaced on single connections (3), as Twisted's own
``abortConnection`` does: ``doRead``, ``writeSomeData`` and ``doWrite``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from twisted.internet import abstract, main, tcp
from twisted.internet import error as tw_error
from twisted.python import failure

__all__ = ["buffered", "close_reactor", "drop_buffer", "forget_watch", "take_over_socket"]


def buffered(transport: abstract.FileDescriptor) -> int:
    """Return the number of bytes ``transport`` holds and has not sent yet."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def drop_buffer(transport: abstract.FileDescriptor) -> None:
    """Forget what ``transport`` holds for sending, as an abort does."""
    transport.dataBuffer = b""
    transport.offset = 0
    transport._tempDataBuffer = []
    transport._tempDataLen = 0


def take_over_socket(
    transport: tcp.Connection,
    received: Callable[[bytes], object],
    wrote: Callable[[], object],
) -> None:
    """Move ``transport``'s bytes with calls that keep the errno of a failure.

    Twisted's ``doRead`` and ``writeSomeData`` turn every socket error into
    one shared ``CONNECTION_LOST``; these return the ``OSError`` itself, which
    the reactor passes to ``connectionLost``, as asyncio passes it to
    ``connection_lost``.  What is read goes to ``received``; ``wrote`` follows
    each ``doWrite`` that shrank the buffer.
    """
    sock = transport.socket
    size = transport.bufferSize
    do_write: Callable[[], Any] = transport.doWrite

    def doRead() -> BaseException | None:
        try:
            data = sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return exc
        if not data:
            return main.CONNECTION_DONE
        received(data)
        return None

    def writeSomeData(data: bytes) -> int | BaseException:
        try:
            return sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            return exc

    def doWrite() -> Any:
        before = buffered(transport)
        result = do_write()
        if before and buffered(transport) < before:
            wrote()
        return result

    patched: Any = transport
    patched.doRead = doRead
    patched.writeSomeData = writeSomeData
    patched.doWrite = doWrite


def forget_watch(reactor: Any, selectable: Any, *, read: bool) -> None:
    """Stop watching ``selectable``, even if its descriptor was closed.

    epoll forgets a closed descriptor by itself, but Twisted's epoll reactor
    still asks it to, and the EBADF would leave the descriptor in its tables
    for ever.  asyncio's selectors ignore that error, and so does this.
    """
    try:
        if read:
            reactor.removeReader(selectable)
        else:
            reactor.removeWriter(selectable)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        fd = selectable.fileno()
        primary, other = (reactor._reads, reactor._writes)
        if not read:
            primary, other = other, primary
        primary.discard(fd)
        if fd not in other:
            reactor._selectables.pop(fd, None)


def close_reactor(reactor: Any) -> None:
    """Close the descriptors of a reactor that has shut down: its waker and poller."""
    waker = getattr(reactor, "waker", None)
    if waker is not None:
        reactor.removeReader(waker)
        waker.connectionLost(failure.Failure(tw_error.ConnectionDone()))  # type: ignore[no-untyped-call]
        reactor.waker = None
    close = getattr(getattr(reactor, "_poller", None), "close", None)
    if close is not None:
        close()
