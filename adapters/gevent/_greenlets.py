"""Wait across the boundary: greenlets for asyncio futures, coroutines for greenlets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from gevent import Greenlet  # type: ignore[import-untyped]
from gevent.event import AsyncResult  # type: ignore[import-untyped]

__all__ = ["wait_future", "wait_greenlet"]

T = TypeVar("T")


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
    :class:`TimeoutError`; on timeout, or when the waiting greenlet is killed
    or interrupted, the future is cancelled.

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
    outcome = AsyncResult()
    holder: list[asyncio.Future[T]] = []

    def done(future: asyncio.Future[T]) -> None:
        if future.cancelled():
            outcome.set_exception(asyncio.CancelledError())
        elif (exc := future.exception()) is not None:
            outcome.set_exception(exc)
        else:
            outcome.set(future.result())

    def start() -> None:
        assert loop is not None
        try:
            future = asyncio.ensure_future(awaitable, loop=loop)
        except BaseException as exc:
            outcome.set_exception(exc)
            return
        holder.append(future)
        future.add_done_callback(done)

    def cancel() -> None:
        if holder:
            holder[0].cancel()

    def abandon() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(cancel)

    loop.call_soon_threadsafe(start)
    try:
        outcome.wait(timeout)
    except BaseException:
        if not outcome.ready():
            abandon()
        raise
    if not outcome.ready():
        abandon()
        raise TimeoutError(f"the future was not done within {timeout:g} s")
    result: T = outcome.get(block=False)
    return result


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
