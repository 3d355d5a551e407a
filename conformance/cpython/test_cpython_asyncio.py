"""CPython's own asyncio tests, bound to the adapter under test.

``Lib/test/test_asyncio`` writes most of its loop tests as mixins that ask a
hook (``create_event_loop`` or ``new_loop``) for the loop; the stdlib binds
them to its selector and proactor loops.  Here the same mixins, from the
running Python's own ``test`` package and unchanged, are bound to the loop of
``--framework``.  They are a yardstick nobody in this project wrote: a test
that passes on the stdlib loop must pass on every adapter.

Tests that read the stdlib loop's private attributes cannot mean anything on
another loop.  They ask for the ``stdlib_internals`` capability, so they skip
with that reason everywhere but on the stdlib loop.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import sys
import tempfile
from collections.abc import Iterator

import pytest

import protoshim

pytest.importorskip("test.test_asyncio", reason="this Python has no `test` package")

from test.test_asyncio import (
    test_buffered_proto,
    test_events,
    test_sendfile,
    test_server,
    test_sock_lowlevel,
    test_sslproto,
    test_subprocess,
)
from test.test_asyncio import utils as test_utils

_bound: list[protoshim.Adapter] = []

#: Seconds after which a stuck test ends the process (the slowest takes ~10).
HANG_SECONDS = 180.0

#: Tests that read the stdlib selector loop's private state; they mean
#: nothing on another loop.
SELECTOR_INTERNALS = {
    "test_timeout_rounding": (
        "counts BaseSelectorEventLoop._run_once calls and reads loop._selector"
    ),
}


def _loop_kind(adapter: protoshim.Adapter) -> tuple[bool, bool]:
    """Return whether the adapter's loops are BaseEventLoops and selector loops."""
    loop = adapter.new_event_loop()
    try:
        return (
            isinstance(loop, asyncio.BaseEventLoop),
            isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop),
        )
    finally:
        loop.close()


@pytest.fixture(autouse=True)
def _bind(adapter: protoshim.Adapter, request: pytest.FixtureRequest) -> Iterator[None]:
    """Make the mixins' loop hooks build the adapter's loop."""
    base, selector = _loop_kind(adapter)
    if not base:
        # test_utils.TestCase.close_loop() reads loop._default_executor.
        pytest.skip(
            f"CPython's asyncio test harness reads BaseEventLoop's private state, "
            f"and {adapter.name}'s loop is not a BaseEventLoop"
        )
    name = request.node.name
    if name in SELECTOR_INTERNALS and not selector:
        pytest.skip(f"reads the stdlib selector loop's private state: {SELECTOR_INTERNALS[name]}")
    _bound.append(adapter)
    # These tests run loops without the suite's ``run()`` timeout: a hang
    # must end the process with its tracebacks, not stall a CI run.
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        _bound.pop()


@pytest.fixture(autouse=True, scope="module")
def _scratch_directory() -> Iterator[None]:
    """Run in a temporary directory: the mixins write files (``TESTFN``) in the cwd."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="protoshim-cpython-") as directory:
        os.chdir(directory)
        try:
            yield
        finally:
            os.chdir(previous)


def _new_loop(*_: object) -> asyncio.AbstractEventLoop:
    return _bound[-1].new_event_loop()


class EventLoopTests(
    test_events.EventLoopTestsMixin, test_events.SubprocessTestsMixin, test_utils.TestCase
):
    create_event_loop = _new_loop


class SockLowlevelTests(test_sock_lowlevel.BaseSockTestsMixin, test_utils.TestCase):
    create_event_loop = _new_loop


class SendfileTests(test_sendfile.SendfileTestsBase, test_utils.TestCase):
    create_event_loop = _new_loop


class BufferedProtocolTests(test_buffered_proto.BaseTestBufferedProtocol, test_utils.TestCase):
    new_loop = _new_loop


class StartServerTests(test_server.BaseStartServer, test_utils.TestCase):
    new_loop = _new_loop


class StartTLSTests(test_sslproto.BaseStartTLS, test_utils.TestCase):
    new_loop = _new_loop


class SubprocessTests(test_subprocess.SubprocessMixin, test_utils.TestCase):
    """The subprocess mixin, with the loop built here instead of by the policy."""

    def setUp(self) -> None:
        super().setUp()
        self.loop = _new_loop()
        self.set_event_loop(self.loop)


if sys.platform == "win32":  # pragma: no cover
    pytestmark = pytest.mark.skip(reason="protoshim's adapters run on Unix")
