"""Run blocking code (WSGI applications, file reads) in greenlets.

protoshim's HTTP protocol runs blocking code through a "blocking runner"
that a loop may publish as ``loop.protoshim_blocking_runner``; by default it
uses the loop's executor threads and waits for the loop with
``run_coroutine_threadsafe(...).result()``.  Under ``monkey.patch_all()``
that wait is a patched lock shared between two OS threads, which gevent
only supports in recent releases, and the application's blocking I/O is
cooperative anyway: gevent loops created in a patched process publish
:data:`GREENLETS`, which runs the code in greenlets of the loop's thread
(as ``gevent.pywsgi`` does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import gevent  # type: ignore[import-untyped]
from gevent.event import AsyncResult  # type: ignore[import-untyped]

from ._greenlets import wait_greenlet

__all__ = ["GREENLETS", "GreenletRunner"]

T = TypeVar("T")


class GreenletRunner:
    """Run blocking callables in greenlets; let them wait for the loop cooperatively."""

    #: ``wsgi.multithread``: true, because invocations interleave at every
    #: blocking call, and with threading patched each greenlet is a thread
    multithread = True

    #: how often a waiting greenlet checks that the loop still exists
    poll_interval = 1.0

    def run(self, loop: asyncio.AbstractEventLoop, func: Callable[[], T]) -> Awaitable[T]:
        """Start ``func()`` in a new greenlet; the task gives its result."""
        return loop.create_task(wait_greenlet(gevent.spawn(func)))

    def call(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on ``loop`` and wait in this greenlet for its result.

        Raise :class:`ConnectionAbortedError` if the loop is closed first.
        """
        outcome = AsyncResult()
        started: list[asyncio.Task[T]] = []

        def start() -> None:
            task = loop.create_task(coro)
            started.append(task)
            task.add_done_callback(finished)

        def finished(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                outcome.set_exception(asyncio.CancelledError())
            elif (exc := task.exception()) is not None:
                outcome.set_exception(exc)
            else:
                outcome.set(task.result())

        try:
            loop.call_soon_threadsafe(start)
        except RuntimeError as exc:  # the loop is closed
            coro.close()
            raise ConnectionAbortedError("the event loop is closed") from exc
        try:
            while not outcome.ready():
                outcome.wait(self.poll_interval)
                # A loop closed while the coroutine was queued never runs it.
                if not outcome.ready() and loop.is_closed():
                    if not started:
                        coro.close()
                    raise ConnectionAbortedError("the event loop is closed")
        except BaseException:
            if started and not loop.is_closed():
                loop.call_soon_threadsafe(started[0].cancel)
            raise
        result: T = outcome.get(block=False)
        return result


#: The runner that gevent loops publish when threading is monkey-patched.
GREENLETS = GreenletRunner()
