"""Fixtures shared by the adapter tests."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator

import pytest

import protoshim


@pytest.fixture
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """A new loop of the module's ``FRAMEWORK``, its executor shut down and closed after."""
    new_loop = protoshim.new_event_loop(request.module.FRAMEWORK)
    try:
        yield new_loop
    finally:
        new_loop.run_until_complete(new_loop.shutdown_default_executor())
        new_loop.close()


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def free_ports() -> Callable[[], int]:
    """Return a function giving a TCP port on 127.0.0.1 that nothing listens on now."""
    return _unused_port
