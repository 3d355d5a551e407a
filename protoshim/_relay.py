"""Carry a future's outcome across loops and frameworks, written once.

Adapters hand results between a protoshim loop and their framework's own
waiting (another asyncio loop in the same thread, a gevent ``AsyncResult``):
:func:`on_settled` says which of the three outcomes happened, and
:func:`relay` copies one asyncio future into another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

__all__ = ["on_settled", "relay"]

T = TypeVar("T")


def on_settled(
    source: asyncio.Future[T],
    result: Callable[[T], object],
    error: Callable[[BaseException], object],
    cancelled: Callable[[], object],
) -> None:
    """Call exactly one of ``result``, ``error`` or ``cancelled`` once ``source`` settles."""

    def settled(future: asyncio.Future[T]) -> None:
        if future.cancelled():
            cancelled()
        elif (exc := future.exception()) is not None:
            error(exc)
        else:
            result(future.result())

    source.add_done_callback(settled)


def relay(source: asyncio.Future[T], target: asyncio.Future[T]) -> None:
    """Settle ``target`` as ``source`` settles; cancelling ``target`` cancels ``source``.

    ``target`` may belong to another loop of the same thread; once it is
    done (cancelled, say) it is left alone.
    """

    def result(value: T) -> None:
        if not target.done():
            target.set_result(value)

    def error(exc: BaseException) -> None:
        if not target.done():
            target.set_exception(exc)

    def cancelled() -> None:
        target.cancel()

    def target_done(future: asyncio.Future[T]) -> None:
        if future.cancelled():
            source.cancel()

    on_settled(source, result, error, cancelled)
    target.add_done_callback(target_done)
