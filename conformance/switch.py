"""Run a project's own, unchanged asyncio tests on the loop of ``--framework``.

``pytest --framework NAME`` on any test directory other than protoshim's
own suite switches every way a test can get an event loop to that
framework's protoshim loop, for the whole session:

* the event loop policy (:class:`protoshim.EventLoopPolicy`): ``asyncio.run``,
  ``asyncio.Runner``, ``asyncio.new_event_loop()``, anyio's ``"asyncio"``
  backend (its runner asks the policy unless given a ``loop_factory``),
  pytest-asyncio before 1.3, and ``unittest.IsolatedAsyncioTestCase`` on
  Python 3.11 and 3.12;
* ``IsolatedAsyncioTestCase.loop_factory`` on Python 3.13 and later, for
  test cases that do not set their own;
* pytest-asyncio's ``pytest_asyncio_loop_factories`` hook (1.3 and later),
  unless the project's conftest implements it too.

A test that picks its own loop (anyio's trio backend or ``use_uvloop``, a
``loop_factory`` of its own) keeps it.

Every loop the switch creates is noted against the test that was running,
so the terminal summary, and ``--conformance-report`` for each test, say
which loop the test ran on.
"""

from __future__ import annotations

import asyncio
import sys
import unittest
from collections.abc import Callable, Generator, Mapping
from typing import Any

import pytest

import protoshim

__all__ = ["LoopSwitch", "describe_loop"]


def describe_loop(loop: asyncio.AbstractEventLoop) -> str:
    """Name a loop's class and, for protoshim's shared loop, the framework driving it."""
    name = f"{type(loop).__module__}.{type(loop).__qualname__}"
    driver = getattr(loop, "_driver", None)
    return name if driver is None else f"{name} on {type(driver).__qualname__}"


class _NotingPolicy(protoshim.EventLoopPolicy):
    """The framework's policy, its loops noted by the switch."""

    def __init__(self, switch: LoopSwitch) -> None:
        super().__init__(switch.adapter.name)
        self._switch = switch

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return self._switch.new_event_loop()


class LoopSwitch:
    """A pytest plugin object: route every new event loop to one framework."""

    def __init__(self, adapter: protoshim.Adapter) -> None:
        self.adapter = adapter
        #: node id -> names of the loop classes created while it ran
        self.loops: dict[str, list[str]] = {}
        self._current: str | None = None
        self._ran = 0
        self._previous_policy: asyncio.AbstractEventLoopPolicy | None = None
        self._previous_factory: Any = None
        self._policy = _NotingPolicy(self)

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """Create a loop of the framework and note it against the running test."""
        loop = self.adapter.new_event_loop()
        if self._current is not None:
            names = self.loops.setdefault(self._current, [])
            name = describe_loop(loop)
            if name not in names:
                names.append(name)
        return loop

    # -- installing --------------------------------------------------------

    def install(self) -> None:
        """Make the framework's loop the one every test gets."""
        self._previous_policy = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(self._policy)
        if sys.version_info >= (3, 13):
            self._previous_factory = unittest.IsolatedAsyncioTestCase.loop_factory
            if self._previous_factory is None:
                unittest.IsolatedAsyncioTestCase.loop_factory = staticmethod(  # type: ignore[assignment]
                    self.new_event_loop
                )

    def uninstall(self) -> None:
        """Put back what :meth:`install` replaced."""
        if self._previous_policy is not None:
            asyncio.set_event_loop_policy(self._previous_policy)
            self._previous_policy = None
        if sys.version_info >= (3, 13) and self._previous_factory is None:
            unittest.IsolatedAsyncioTestCase.loop_factory = None

    # -- hooks ---------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_asyncio_loop_factories(
        self, config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        """Give pytest-asyncio (1.3 and later) the framework's loop factory."""
        return {self.adapter.name: self.new_event_loop}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        """Note which test is running, for the loops it creates."""
        self._current = item.nodeid
        self._ran += 1
        try:
            return (yield)
        finally:
            self._current = None

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Say how many tests ran on the framework's loop."""
        kinds = sorted({name for names in self.loops.values() for name in names})
        terminalreporter.write_line(
            f"protoshim: {len(self.loops)} of {self._ran} tests created a {self.adapter.name} "
            f"loop ({', '.join(kinds) or 'none'}); the others made no loop or used one "
            "made before them"
        )
