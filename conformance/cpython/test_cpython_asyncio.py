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
import os
import sys
import tempfile
from collections.abc import Iterator

import pytest

import protoshim

pytest.importorskip("test.test_asyncio", reason="this Python has no `test` package")

from test.test_asyncio import (  # after the skip above
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


@pytest.fixture(autouse=True)
def _bind(adapter: protoshim.Adapter) -> Iterator[None]:
    """Make the mixins' loop hooks build the adapter's loop."""
    _bound.append(adapter)
    try:
        yield
    finally:
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
