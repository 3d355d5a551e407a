"""Connection storms: thousands of concurrent connections, opened and closed repeatedly.

Each round opens ``CONCURRENCY`` connections at once and, once all are
open, sends a request on each (a tenth of the clients then reset their
connection without waiting), and waits for every outcome.  Rounds repeat
for ``DURATION`` seconds.  Every request must be answered in full or
refused cleanly (a connection refused or reset before any byte of a
response); none may get a truncated or garbled answer or hang.
Afterwards the process has as many descriptors open as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from protoshim.conformance._helpers import wait
from protoshim.conformance.plugin import RunCoroutine
from protoshim.conformance.reliability._servers import App, Watched, no_tracebacks, watching
from protoshim.conformance.reliability._support import fd_count, fds_left_open, need_proc, reset

from .conftest import Figure

pytestmark = [pytest.mark.slow, pytest.mark.requires("tcp")]

#: concurrent connections per round (fewer if the descriptor limit is lower)
CONCURRENCY = 2000
#: how long rounds keep starting
DURATION = 4.0
MIN_ROUNDS = 2
#: every n-th client resets its connection right after sending its request
RESET_EVERY = 10
REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


class Quick(asyncio.Protocol):
    """Send one request; classify the outcome as answered, refused or broken."""

    def __init__(self, loop: asyncio.AbstractEventLoop, impatient: bool) -> None:
        self.impatient = impatient
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.outcome: asyncio.Future[str] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self) -> None:
        """Send the request (and reset at once if impatient)."""
        assert self.transport is not None
        self.transport.write(REQUEST)
        if self.impatient:
            reset(self.transport)

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> None:
        self._settle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle()

    def _settle(self) -> None:
        if self.outcome.done():
            return
        data = bytes(self.data)
        if self.impatient:
            self.outcome.set_result("reset by the client")
        elif data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nok"):
            self.outcome.set_result("answered")
        elif not data:
            self.outcome.set_result("refused")
        else:
            self.outcome.set_result("broken")


def _somaxconn() -> int:
    """Return the kernel's cap on a listen backlog (4096 if unknown)."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return 4096


@contextlib.contextmanager
def descriptor_room(wanted: int) -> Iterator[int]:
    """Raise the soft descriptor limit towards ``wanted`` for a while; yield the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    target = max(target, soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    try:
        yield target
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _round(loop: asyncio.AbstractEventLoop, port: int, clients: int) -> Counter[str]:
    """Open ``clients`` connections, then request on all; count the outcomes."""

    async def connect(index: int) -> Quick | None:
        try:
            _, protocol = await loop.create_connection(
                lambda: Quick(loop, impatient=index % RESET_EVERY == 0), "127.0.0.1", port
            )
        except (ConnectionRefusedError, ConnectionResetError):
            return None
        return protocol

    opened = await wait(
        asyncio.gather(*(connect(i) for i in range(clients))), "the storm's connections", 60
    )
    protocols = [protocol for protocol in opened if protocol is not None]
    for protocol in protocols:
        protocol.send()
    outcomes = await wait(
        asyncio.gather(*(protocol.outcome for protocol in protocols)), "the storm's answers", 60
    )
    for protocol in protocols:
        assert protocol.transport is not None
        protocol.transport.close()
    return Counter(outcomes) + Counter(refused=len(opened) - len(protocols))


def test_storm_of_connections_is_answered_or_refused_cleanly(
    loop: asyncio.AbstractEventLoop,
    run: RunCoroutine,
    caplog: pytest.LogCaptureFixture,
    figure: Figure,
) -> None:
    need_proc()
    app = App()
    with descriptor_room(4 * CONCURRENCY + 1024) as limit:
        # Both ends of every connection are in this process: two descriptors
        # each.  A listen backlog the kernel caps lower would drop SYNs and
        # turn the storm into a test of TCP retransmission.
        clients = min(CONCURRENCY, (limit - fd_count() - 256) // 2, _somaxconn())
        if clients < 100:
            pytest.skip(f"descriptor limit {limit} leaves room for only {clients} connections")

        async def main() -> tuple[Counter[str], int, float, int]:
            totals: Counter[str] = Counter()
            rounds = 0
            async with watching(loop, lambda: Watched(app), backlog=clients) as served:
                # Counted once listening: a loop may reserve a descriptor on its
                # first listen (libuv keeps one for running out of descriptors).
                before = fd_count()
                start = loop.time()
                while rounds < MIN_ROUNDS or loop.time() - start < DURATION:
                    totals += await _round(loop, served.port, clients)
                    rounds += 1
                elapsed = loop.time() - start
                await served.all_closed()
                leaked = await fds_left_open(before)
            return totals, rounds, elapsed, leaked

        totals, rounds, elapsed, leaked = run(main(), timeout=DURATION + 120)
    connections = sum(totals.values())
    figure("concurrent connections", clients)
    figure("rounds", rounds)
    figure("connections", connections, headline=True)
    figure("answered", totals["answered"])
    figure("refused", totals["refused"])
    figure("reset by the client", totals["reset by the client"])
    figure("broken", totals["broken"])
    figure("connections per second", round(connections / elapsed))
    figure("descriptors left open", leaked)
    assert totals["broken"] == 0, totals
    assert totals["answered"] > 0, totals
    assert connections == rounds * clients
    assert leaked <= 0
    no_tracebacks(caplog)
