"""Fixtures shared by the adapter tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

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
