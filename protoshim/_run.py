"""Run a coroutine on a framework's loop, the way :func:`asyncio.run` does."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._registry import get_adapter

__all__ = ["EventLoopPolicy", "loop_factory", "run"]

T = TypeVar("T")


def loop_factory(framework: str = "asyncio") -> Callable[[], asyncio.AbstractEventLoop]:
    """Return a factory for :class:`asyncio.Runner` ``(loop_factory=...)``.

    The framework name is checked now, so a typo fails here, not later.
    """
    return functools.partial(get_adapter(framework).new_event_loop)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose new loops run on ``framework``.

    For code that asks asyncio for a loop rather than taking a factory:
    :func:`asyncio.run` without ``loop_factory``, ``asyncio.Runner``,
    ``unittest.IsolatedAsyncioTestCase`` on Python 3.11 and test plugins::

        asyncio.set_event_loop_policy(protoshim.EventLoopPolicy("twisted"))
    """

    def __init__(self, framework: str = "asyncio") -> None:
        super().__init__()
        self.framework = framework
        self._factory = loop_factory(framework)

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """Return a new loop of this policy's framework."""
        return self._factory()


def run(
    coro: Coroutine[Any, Any, T], *, framework: str = "asyncio", debug: bool | None = None
) -> T:
    """Run ``coro`` to completion on a new loop of ``framework`` and close it."""
    with asyncio.Runner(debug=debug, loop_factory=loop_factory(framework)) as runner:
        return runner.run(coro)
