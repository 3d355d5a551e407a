"""Every private name of Tornado that the adapter uses, and nothing else.

Verified on Tornado 6.0 and 6.6.1, the oldest and newest releases the nox
matrix runs (``protoshim/conformance/releases.py``).  One private name:

* ``IOLoop._ioloop_for_asyncio``, the map from asyncio loops to the IOLoops
  that wrap them, which ``IOLoop.current()`` reads.  Tornado has no public
  way to say that a second asyncio loop (protoshim's) belongs to an
  existing IOLoop; without the entry, ``IOLoop.current()`` in protocol code
  would wrap the protoshim loop in a new IOLoop instead of returning the one
  it runs on.
"""

from __future__ import annotations

import asyncio

from tornado.ioloop import IOLoop

__all__ = ["alias_ioloop", "unalias_ioloop"]


def alias_ioloop(loop: asyncio.AbstractEventLoop, io_loop: IOLoop) -> None:
    """Make ``IOLoop.current()`` return ``io_loop`` while ``loop`` is running."""
    IOLoop._ioloop_for_asyncio[loop] = io_loop


def unalias_ioloop(loop: asyncio.AbstractEventLoop, io_loop: IOLoop) -> None:
    """Undo :func:`alias_ioloop`, if ``loop`` still maps to ``io_loop``."""
    if IOLoop._ioloop_for_asyncio.get(loop) is io_loop:
        del IOLoop._ioloop_for_asyncio[loop]
