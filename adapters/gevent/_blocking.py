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

from ._greenlets import cross, wait_greenlet

__all__ = ["GREENLETS", "GreenletRunner"]

T = TypeVar("T")


class GreenletRunner:
    """Run blocking callables in greenlets; let them wait for the loop cooperatively."""

    #: ``wsgi.multithread``: true, because invocations interleave at every
    #: blocking call, and with threading patched each greenlet is a thread
    multithread = True

    def run(self, loop: asyncio.AbstractEventLoop, func: Callable[[], T]) -> Awaitable[T]:
        """Start ``func()`` in a new greenlet; the task gives its result."""
        return loop.create_task(wait_greenlet(gevent.spawn(func)))

    def call(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on ``loop`` and wait in this greenlet for its result.

        Raise :class:`ConnectionAbortedError` if the loop is closed first.
        """
        if loop.is_closed():
            coro.close()
            raise ConnectionAbortedError("the event loop is closed")
        return cross(loop, coro, None)


#: The runner that gevent loops publish when threading is monkey-patched.
GREENLETS = GreenletRunner()
