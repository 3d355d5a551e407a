"""Every use of Twisted's private state, in one place; the rest is public API.

Verified on Twisted 21.2.0 and 26.10.0, the oldest and newest releases the
nox matrix runs.  Private names (7): ``FileDescriptor._tempDataBuffer`` and
``_tempDataLen``, the epoll reactor's ``_reads``, ``_writes``,
``_selectables`` and ``_poller``, and the reactor's ``waker`` (no interface
offers it).  A socket connection is an instance of a subclass of its class
that overrides ``doRead``, ``writeSomeData`` and ``doWrite`` (3 methods), and
``__repr__``.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from twisted.internet import abstract, main, tcp
from twisted.internet import error as tw_error
from twisted.python import failure

__all__ = [
    "buffered",
    "close_reactor",
    "drop_buffer",
    "forget_watch",
    "keeping_errno",
    "take_over_socket",
]

C = TypeVar("C", bound=tcp.Connection)


def buffered(transport: abstract.FileDescriptor) -> int:
    """Return the number of bytes ``transport`` holds and has not sent yet."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def drop_buffer(transport: abstract.FileDescriptor) -> None:
    """Forget what ``transport`` holds for sending, as an abort does."""
    transport.dataBuffer = b""
    transport.offset = 0
    transport._tempDataBuffer = []
    transport._tempDataLen = 0


class _KeepsErrno:
    """A socket connection's reads and writes that keep a failure's ``OSError``.

    Twisted's own fold every error into one ``CONNECTION_LOST``.  ``doWrite``
    also tells the protocol (``bufferShrank``) when the buffer shrank.
    """

    socket: Any
    bufferSize: int
    protocol: Any
    getPeer: Callable[[], object]

    def __repr__(self) -> str:
        # Twisted's Server keeps a repstr only for connections its own Port
        # accepted; for the others it is made when asked, not kept by each.
        repstr: str | None = getattr(self, "repstr", None)
        if repstr is not None:
            return repstr
        sock = getattr(self, "socket", None)  # gone once the connection is lost
        fd = sock.fileno() if sock is not None else -1
        return f"<{type(self).__name__} fd={fd} peer={self.getPeer()}>"

    def doRead(self) -> BaseException | None:
        try:
            data = self.socket.recv(self.bufferSize)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            return exc
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    def writeSomeData(self, data: bytes) -> int | BaseException:
        try:
            sent: int = self.socket.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            return exc
        return sent

    def doWrite(self) -> Any:
        before = buffered(self)  # type: ignore[arg-type]
        result = super().doWrite()  # type: ignore[misc]
        if before and buffered(self) < before:  # type: ignore[arg-type]
            self.protocol.bufferShrank()
        return result


def keeping_errno(cls: type[C]) -> type[C]:
    """Return the subclass of socket connection class ``cls`` with :class:`_KeepsErrno`'s methods.

    Made once per class: replacing the methods on each instance would cost
    every connection about 1 KiB.
    """
    return cast("type[C]", _subclass(cls))  # type: ignore[arg-type]  # classes hash


@functools.cache
def _subclass(cls: type) -> type:
    return type(cls.__name__, (_KeepsErrno, cls), {"__module__": cls.__module__})


def take_over_socket(transport: tcp.Connection) -> None:
    """Give a socket connection that Twisted made :class:`_KeepsErrno`'s methods.

    Its class is swapped for :func:`keeping_errno`'s subclass, which makes
    Python give the instance a dictionary of its own (64 bytes): connections
    that protoshim makes are built as the subclass instead.
    """
    if not isinstance(transport, _KeepsErrno):
        transport.__class__ = keeping_errno(type(transport))


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
