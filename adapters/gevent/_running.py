"""Make asyncio's "running loop" follow the greenlet, not the OS thread.

asyncio keeps the running loop in the thread state, which every greenlet of
a thread shares.  Left alone, a loop running in one greenlet would be the
running loop of all of them: ``asyncio.get_running_loop()`` would return it
in unrelated greenlets, and a second loop could not run in another greenlet
("Cannot run the event loop while another loop is running").

While a protoshim loop runs in a thread, a greenlet trace function saves the
running loop of the greenlet being switched out and restores the one of the
greenlet being switched in.  Greenlets that run no loop see none.
"""

from __future__ import annotations

import asyncio
from asyncio import events
from typing import Any

import greenlet  # type: ignore[import-untyped]
from gevent.monkey import get_original  # type: ignore[import-untyped]

__all__ = ["enter", "get_ident", "leave", "running_loop"]

# The real thread id, even when threading is monkey-patched.
get_ident = get_original("_thread", "get_ident")
# The current greenlet's running loop, or None (asyncio's hook for third-party loops).
running_loop = events._get_running_loop


class _Tracer:
    """Save and restore the running loop around every greenlet switch of one thread."""

    def __init__(self) -> None:
        #: loops of switched-out greenlets that were running one
        self.saved: dict[Any, asyncio.AbstractEventLoop] = {}
        self.runners = 0
        self.active = True
        self.previous: Any = None

    def __call__(self, event: str, args: Any) -> None:
        if self.active and event in ("switch", "throw"):
            origin, target = args
            loop = events._get_running_loop()
            if loop is not None:
                self.saved[origin] = loop
            events._set_running_loop(self.saved.pop(target, None))
        if self.previous is not None:
            self.previous(event, args)


_tracers: dict[int, _Tracer] = {}


def enter() -> None:
    """Note that a loop starts running in the current thread."""
    ident = get_ident()
    tracer = _tracers.get(ident)
    if tracer is None:
        tracer = _tracers[ident] = _Tracer()
        tracer.previous = greenlet.settrace(tracer)
    tracer.runners += 1


def leave() -> None:
    """Note that a loop of the current thread stopped running."""
    ident = get_ident()
    tracer = _tracers[ident]
    tracer.runners -= 1
    if tracer.runners or tracer.saved:
        # Another greenlet still runs a loop, or will resume one.
        return
    del _tracers[ident]
    if greenlet.gettrace() is tracer:
        greenlet.settrace(tracer.previous)
    else:
        # A tracer installed after ours calls it; it must now do nothing.
        tracer.active = False
