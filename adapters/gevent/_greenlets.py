"""Wait across the boundary: greenlets for asyncio futures, coroutines for greenlets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any, Generic, TypeVar

from gevent import Greenlet  # type: ignore[import-untyped]
from gevent.event import AsyncResult  # type: ignore[import-untyped]

from ...core import on_settled

__all__ = ["POLL_INTERVAL", "Crossing", "wait_future", "wait_greenlet"]

T = TypeVar("T")

#: How often a waiting greenlet checks that the loop it waits for still exists.
POLL_INTERVAL = 1.0


class Crossing(Generic[T]):
    """An awaitable started on its loop from a greenlet, which then waits for it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T]) -> None:
        self._loop = loop
        self._awaitable = awaitable
        self._future: asyncio.Future[T] | None = None
        self._outcome = AsyncResult()

    def start(self) -> None:
        """Schedule the awaitable on its loop; raise :class:`RuntimeError` if it is closed."""
        try:
            self._loop.call_soon_threadsafe(self._start)
        except RuntimeError:
            self._drop()
            raise

    def _start(self) -> None:
        # In the loop's runner greenlet.
        outcome = self._outcome
        try:
            self._future = asyncio.ensure_future(self._awaitable, loop=self._loop)
        except BaseException as exc:
            outcome.set_exception(exc)
            return
        on_settled(self._future, outcome.set, outcome.set_exception, self._cancelled)

    def _cancelled(self) -> None:
        self._outcome.set_exception(asyncio.CancelledError())

    def _cancel(self) -> None:
        # In the loop's runner greenlet, after _start.
        if self._future is not None:
            self._future.cancel()

    def _drop(self) -> None:
        # A coroutine that never ran is closed, so nobody warns it was never awaited.
        if self._future is None and asyncio.iscoroutine(self._awaitable):
            self._awaitable.close()

    def wait(self, timeout: float | None = None) -> T:
        """Block this greenlet until the awaitable is done; return its result or raise.

        Raise :class:`TimeoutError` after ``timeout`` seconds, and
        :class:`ConnectionAbortedError` if the loop is closed first; then, or
        when the waiting greenlet is killed or interrupted, cancel the future.
        """
        outcome = self._outcome
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not outcome.ready():
                wait = POLL_INTERVAL
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                outcome.wait(wait)
                if outcome.ready():
                    break
                if self._loop.is_closed():
                    # A loop closed while the awaitable was queued never runs it.
                    self._drop()
                    raise ConnectionAbortedError("the event loop is closed")
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"the future was not done within {timeout:g} s")
        except BaseException:
            if not outcome.ready():
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    self._loop.call_soon_threadsafe(self._cancel)
            raise
        result: T = outcome.get(block=False)
        return result


def wait_future(
    awaitable: Awaitable[T],
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    timeout: float | None = None,
) -> T:
    """Block the calling greenlet until an asyncio future or coroutine is done.

    Return its result or raise its exception.  ``loop`` is required for a
    coroutine (a future knows its loop); the loop must run, in another
    greenlet, for the wait to end.  On ``timeout`` (seconds) raise
    :class:`TimeoutError`, and if the loop is closed first,
    :class:`ConnectionAbortedError`; then, or when the waiting greenlet is
    killed or interrupted, the future is cancelled.

    Calling it from the greenlet that runs ``loop`` would wait forever, so it
    raises :class:`RuntimeError` there: ``await`` the future instead.
    """
    if asyncio.isfuture(awaitable):
        loop = awaitable.get_loop()
    elif loop is None:
        raise ValueError("wait_future() needs loop= for a coroutine or other awaitable")
    if asyncio._get_running_loop() is loop:
        raise RuntimeError(
            "wait_future() called from the greenlet that runs the loop; await the future"
        )
    crossing = Crossing(loop, awaitable)
    crossing.start()
    return crossing.wait(timeout)


async def wait_greenlet(glet: Greenlet, *, kill_on_cancel: bool = True) -> Any:
    """Wait, in a coroutine, for a gevent :class:`~gevent.Greenlet` to finish.

    Return its value or raise its exception, as ``glet.get()`` would.  If
    the waiting task is cancelled, the greenlet is killed (without waiting)
    unless ``kill_on_cancel`` is false.
    """
    if not glet.ready():
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not finished.done():
                finished.set_result(None)

        def linked(_glet: Greenlet) -> None:
            # In the hub: hand over to the loop's own greenlet.
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(settle)

        glet.rawlink(linked)
        try:
            await finished
        except asyncio.CancelledError:
            glet.unlink(linked)
            if kill_on_cancel:
                glet.kill(block=False)
            raise
    return glet.get(block=False)
