"""Closing, aborting and fatal errors: the end of a transport's life.

Streams and datagram endpoints end the same way, so the rules live here once:

* ``close()`` stops reading and waits for the buffer to drain;
* ``abort()`` and fatal errors release the primitive at once;
* ``connection_lost`` is called exactly once, from the loop, and the
  primitive is released after it, so the socket is still open inside it;
* an OSError is the peer's doing and goes to ``connection_lost`` only; any
  other fatal error is also reported to the loop's exception handler;
* writes after ``close()`` are still sent while the buffer drains, as in
  asyncio; once ``connection_lost`` is on its way they are dropped, with a
  warning from the fifth on.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any, Protocol, cast

from ._flow import FlowControl

if TYPE_CHECKING:
    from ._loop import EventLoop

__all__ = ["LIFECYCLE_SLOTS", "Lifecycle"]

#: The instance state Lifecycle keeps, for a transport class's ``__slots__``.
LIFECYCLE_SLOTS = ("_closing", "_lost_scheduled", "_released", "_lost_writes")

logger = logging.getLogger("protoshim")

#: As in asyncio: warn about writes to a lost connection from this many on.
WARN_AFTER_LOST_WRITES = 5


class _Primitive(Protocol):
    def socket(self) -> socket.socket | None: ...
    def stop_reading(self) -> None: ...
    def queued(self) -> int: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class Lifecycle(FlowControl):
    """Own the closing states of a transport over one adapter primitive.

    A subclass sets ``_primitive``, ``_loop`` and ``_protocol``, and calls
    :meth:`_drained` whenever the primitive's queue shrinks.
    """

    # Empty, so that a transport can also inherit asyncio's slotted classes;
    # the transport class declares the slots (see LIFECYCLE_SLOTS).  Hidden
    # from mypy, as in FlowControl.
    if not TYPE_CHECKING:
        __slots__ = ()

    _primitive: _Primitive
    _protocol: Any
    _closing: bool
    _lost_scheduled: bool
    _released: bool
    _lost_writes: int

    def __init__(self) -> None:
        super().__init__()
        self._closing = False  # close(), abort() or a fatal error happened
        self._lost_scheduled = False  # connection_lost is on its way
        self._released = False  # the primitive was closed or aborted
        self._lost_writes = 0

    def _event_loop(self) -> EventLoop:
        # The subclass's ``_loop`` (typed by asyncio's mixins as any loop) is
        # always ours; no second slot for it.
        return cast("EventLoop", self._loop)

    def get_protocol(self) -> Any:
        return self._protocol

    def get_write_buffer_size(self) -> int:
        return 0 if self._released else self._primitive.queued()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._primitive.stop_reading()
        if not self._primitive.queued():
            self._schedule_connection_lost(None)

    def abort(self) -> None:
        self._force_close(None)

    def _dropped_write(self, what: str) -> bool:
        """Count a write that arrives while closing; return True if it is dropped.

        A closing transport whose buffer has not drained yet still sends: only
        once ``connection_lost`` is scheduled is the connection gone.
        """
        if not self._lost_scheduled:
            return False
        self._lost_writes += 1
        if self._lost_writes >= WARN_AFTER_LOST_WRITES:
            logger.warning("socket.%s() raised exception.", what)
        return True

    def _drained(self) -> bool:
        """Apply a shrink of the queue; return True if the queue is now empty."""
        if self._released:
            return False
        self._maybe_resume_protocol()
        if self._primitive.queued():
            return False
        if self._closing:
            self._schedule_connection_lost(None)
        return True

    def _protocol_failed(self, exc: BaseException, callback: str) -> None:
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            self._event_loop()._exit_with(exc)
        else:
            self._fatal_error(exc, f"Fatal error: protocol.{callback}() call failed.")

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if not isinstance(exc, OSError):
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost_scheduled:
            return
        self._closing = True
        self._release(abort=True)
        self._schedule_connection_lost(exc)

    def _schedule_connection_lost(self, exc: BaseException | None) -> None:
        if self._lost_scheduled:
            return
        self._lost_scheduled = True
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._release(abort=False)
            self._connection_lost_done()

    def _connection_lost_done(self) -> None:
        """Run after ``connection_lost``; override to detach from a server."""

    def _release(self, *, abort: bool) -> None:
        if self._released:
            return
        self._released = True
        self._event_loop()._disown(self._primitive.socket(), self)  # type: ignore[arg-type]
        if abort:
            self._primitive.abort()
        else:
            self._primitive.close()
