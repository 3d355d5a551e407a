"""Wait across the boundary: greenlets for asyncio futures, coroutines for greenlets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from gevent import Greenlet  # type: ignore[import-untyped]
from gevent.event import AsyncResult  # type: ignore[import-untyped]

from ...core import on_settled
from ._running import running_loop

__all__ = ["POLL_INTERVAL", "cross", "wait_future", "wait_greenlet"]

T = TypeVar("T")

#: How often a waiting greenlet checks that the loop it waits for still exists.
POLL_INTERVAL = 1.0


def cross(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T], timeout: float | None) -> T:
    """Start ``awaitable`` on ``loop`` from this greenlet and block until it is done.

    Return its result or raise its exception.  Raise :class:`RuntimeError` if
    the loop is closed already, :class:`ConnectionAbortedError` if it is
    closed first and :class:`TimeoutError` after ``timeout`` seconds; then,
    or when the greenlet is killed or interrupted, cancel the future.
    """
    outcome = AsyncResult()
    started: list[asyncio.Future[T]] = []

    def start() -> None:
        try:
            future = asyncio.ensure_future(awaitable, loop=loop)
        except BaseException as exc:
            outcome.set_exception(exc)
            return
        started.append(future)
        on_settled(future, outcome.set, outcome.set_exception, cancelled)

    def cancelled() -> None:
        outcome.set_exception(asyncio.CancelledError())

    def cancel() -> None:
        if started:
            started[0].cancel()

    def drop() -> None:
        # A coroutine that never ran is closed, so nobody warns it was never awaited.
        if not started and asyncio.iscoroutine(awaitable):
            awaitable.close()

    try:
        loop.call_soon_threadsafe(start)
    except RuntimeError:
        drop()
        raise
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not outcome.ready():
            if loop.is_closed():  # then what was queued never runs
                drop()
                raise ConnectionAbortedError("the event loop is closed")
            left = POLL_INTERVAL if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the future was not done within {timeout:g} s")
            outcome.wait(min(left, POLL_INTERVAL))
    except BaseException:
        if not outcome.ready():
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(cancel)
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
    if running_loop() is loop:
        raise RuntimeError(
            "wait_future() called from the greenlet that runs the loop; await the future"
        )
    return cross(loop, awaitable, timeout)


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
