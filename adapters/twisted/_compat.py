"""Twisted's private state, in one place.

Verified on Twisted 21.2.0 and 26.10.0, the oldest and newest releases the
nox matrix runs.  Private names (5): the epoll reactor's ``_reads``,
``_writes``, ``_selectables`` and ``_poller``, and the reactor's ``waker``
(no interface offers it).
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import error as tw_error
from twisted.python import failure

__all__ = ["close_reactor", "forget_watch"]


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
