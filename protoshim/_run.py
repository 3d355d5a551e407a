"""Run a coroutine on a framework's loop, the way :func:`asyncio.run` does."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._registry import get_adapter

__all__ = ["loop_factory", "run"]

T = TypeVar("T")


def loop_factory(framework: str = "asyncio") -> Callable[[], asyncio.AbstractEventLoop]:
    """Return a factory for :class:`asyncio.Runner` ``(loop_factory=...)``.

    The framework name is checked now, so a typo fails here, not later.
    """
    return functools.partial(get_adapter(framework).new_event_loop)


def run(
    coro: Coroutine[Any, Any, T], *, framework: str = "asyncio", debug: bool | None = None
) -> T:
    """Run ``coro`` to completion on a new loop of ``framework`` and close it."""
    with asyncio.Runner(debug=debug, loop_factory=loop_factory(framework)) as runner:
        return runner.run(coro)
