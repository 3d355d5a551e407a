"""The flow gate: writers wait here while the transport is paused.

HTTP responses and WebSocket messages both write to a transport that may
call ``pause_writing``; each connection has one gate, and every coroutine
that writes awaits :meth:`FlowGate.wait` after writing, so none of them
buffers more than the transport's high-water mark.
"""

from __future__ import annotations

import asyncio

__all__ = ["FlowGate"]


class FlowGate:
    """Hold writers while paused; let them go on resume; fail them once the connection is lost."""

    __slots__ = ("_failure", "_released", "_waiters", "paused")

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []
        #: the transport asked us to stop writing
        self.paused = False
        self._released = False
        self._failure = ""

    def pause(self) -> None:
        """Make writers wait (``pause_writing``)."""
        self.paused = True

    def resume(self) -> None:
        """Let the waiting writers go on (``resume_writing``)."""
        self.paused = False
        self._wake()

    def release(self) -> None:
        """Let every writer through from now on: the connection is over and they will find out."""
        self._released = True
        self._wake()

    def fail(self, reason: str) -> None:
        """Raise ``ConnectionResetError(reason)`` in every writer, waiting now or later."""
        self._failure = reason
        self._wake()

    async def wait(self) -> None:
        """Return once writing may go on; raise if the connection was lost.

        Callers on a hot path check :attr:`paused` first and skip the call.
        """
        if self._failure:
            raise ConnectionResetError(self._failure)
        if self.paused and not self._released:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _wake(self) -> None:
        for waiter in self._waiters:
            if waiter.done():
                continue
            if self._failure:
                waiter.set_exception(ConnectionResetError(self._failure))
                waiter.exception()  # retrieved: nobody may be left to await it
            else:
                waiter.set_result(None)
        self._waiters.clear()
