"""Run blocking code off the event loop, and let it wait on the loop.

WSGI applications and file reads block.  By default they run in the loop's
default executor (``loop.run_in_executor(None, ...)``) and reach back into the
loop with :func:`asyncio.run_coroutine_threadsafe`.  A loop that has a better
way (a gevent loop can run them in greenlets) publishes an object with the
:class:`BlockingRunner` interface as ``loop.protoshim_blocking_runner``; the
HTTP protocol uses it without knowing which framework the loop runs on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

__all__ = ["LOOP_ATTRIBUTE", "BlockingRunner", "ThreadRunner", "blocking_runner_for"]

T = TypeVar("T")

#: the attribute a loop sets to offer its own runner
LOOP_ATTRIBUTE = "protoshim_blocking_runner"


class BlockingRunner(Protocol):
    """Run blocking callables away from the loop and let them call back into it."""

    #: whether two callables may run at the same time in different OS threads
    #: (it becomes ``wsgi.multithread``)
    multithread: bool

    def run(self, loop: asyncio.AbstractEventLoop, func: Callable[[], T]) -> Awaitable[T]:
        """Start ``func()`` off the loop; the awaitable gives its result."""
        ...

    def call(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on ``loop`` from inside ``func`` and block until it is done.

        Raise :class:`ConnectionAbortedError` if the loop is closed before
        the coroutine finishes, so that blocking code never waits forever.
        """
        ...


class ThreadRunner:
    """Run blocking code in the loop's default executor (the default runner)."""

    multithread = True

    #: how often a waiting thread checks that the loop still exists
    poll_interval = 1.0

    def run(self, loop: asyncio.AbstractEventLoop, func: Callable[[], T]) -> Awaitable[T]:
        """Start ``func()`` in the default executor."""
        return loop.run_in_executor(None, func)

    def call(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on ``loop`` and wait in this thread for its result."""
        try:
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError as exc:  # the loop is closed
            coro.close()
            raise ConnectionAbortedError("the event loop is closed") from exc
        while True:
            # wait() rather than result(timeout): the coroutine may itself raise TimeoutError.
            done, _ = concurrent.futures.wait([future], self.poll_interval)
            if done:
                return future.result()
            # A loop closed while the coroutine was queued never runs it.
            if loop.is_closed():
                future.cancel()
                raise ConnectionAbortedError("the event loop is closed")


THREADS = ThreadRunner()


def blocking_runner_for(
    loop: asyncio.AbstractEventLoop, configured: BlockingRunner | None = None
) -> BlockingRunner:
    """Return ``configured``, else the loop's own runner, else :class:`ThreadRunner`."""
    if configured is not None:
        return configured
    offered: BlockingRunner | None = getattr(loop, LOOP_ATTRIBUTE, None)
    return offered if offered is not None else THREADS
