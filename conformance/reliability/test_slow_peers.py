"""Slow and stalled peers: a 1 GiB response to a client that reads slowly or not at all.

The response is generated block by block (never stored), by a coroutine
handler or by a WSGI application streaming from its worker.  While the
client holds back, the server must hold at most about one high-water mark
of it (the bound below), its process must not grow with the response, the
producer must wait, and other clients must still be served.  When the
client leaves, the connection and its producer must be cleaned up.

Bounds: the server transport's write buffer stays at most ``BUFFER_BOUND``
(the 64 KiB high-water mark plus the 64 KiB block being written, with
room to spare), and the process's RSS grows by at most ``RSS_BOUND``, a
thirty-second of the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import pytest

from protoshim.conformance._helpers import settle, wait, wait_until
from protoshim.conformance.http._support import Client, Environ, StartResponse, request
from protoshim.conformance.plugin import RunCoroutine
from protoshim.conformance.reliability._servers import PATTERN, App, Watched, Watching, watching
from protoshim.conformance.reliability._support import need_proc, rss
from protoshim.protocols.http import Router

from .conftest import Figure

pytestmark = [pytest.mark.slow, pytest.mark.requires("tcp")]

GIB = 1 << 30
BLOCKS = GIB // len(PATTERN)
BUFFER_BOUND = 256 * 1024
RSS_BOUND = 32 * 1024 * 1024
#: how long the client holds back while the server is watched
WINDOW = 1.0
#: other requests served meanwhile
OTHERS = 20


class Reader(asyncio.Protocol):
    """Count the response's bytes without keeping them; stop reading when told."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, slow: bool) -> None:
        self.loop = loop
        self.slow = slow
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.received = 0
        self.started: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[Exception | None] = loop.create_future()
        self._ticker: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A small receive buffer keeps the kernel from absorbing the response.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, len(PATTERN))

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if len(self.head) < 64:
            self.head += data[:64]
        self.received += len(data)
        # One read, then stop; a slow reader reads again 50 ms later.
        self.transport.pause_reading()
        if not self.started.done():
            self.started.set_result(None)
        if self.slow and self._ticker is None:
            self._ticker = self.loop.call_later(0.05, self._sip)

    def _sip(self) -> None:
        """Read once every 50 ms: a reader far slower than the server."""
        assert self.transport is not None
        self._ticker = None
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if not self.lost.done():
            self.lost.set_result(exc)


class Stream:
    """A WSGI application streaming 1 GiB; counts what it produced and whether it was closed."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = False

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        if environ["PATH_INFO"] != "/big":
            start_response("200 OK", [("Content-Length", "2")])
            yield b"ok"
            return
        start_response("200 OK", [("Content-Length", str(BLOCKS * len(PATTERN)))])
        try:
            for _ in range(BLOCKS):
                self.produced += len(PATTERN)
                yield PATTERN
        finally:
            self.closed = True


async def _other_requests(loop: asyncio.AbstractEventLoop, port: int) -> int:
    """Make OTHERS small requests on fresh connections; return how many got 200."""
    answered = 0
    for _ in range(OTHERS):
        _, client = await wait(
            loop.create_connection(functools.partial(Client, loop), "127.0.0.1", port),
            "another client's connection",
        )
        assert isinstance(client, Client)
        client.send(request("GET", "/", [("Connection", "close")]))
        if (await client.response()).status == 200:
            answered += 1
        await client.closed()
        client.tr.close()
        await wait(asyncio.shield(client.lost), "another client to close")
    return answered


@dataclass
class Watch:
    """What was measured while the reader held back."""

    peak_buffer: int = 0
    peak_rss: int = 0
    produced_at_pause: int = 0
    progress: int = 0
    others: int = 0


async def _hold_back(
    loop: asyncio.AbstractEventLoop,
    served: Watching,
    reader: Reader,
    produced: Callable[[], int],
    baseline: int,
) -> Watch:
    """Measure the server while ``reader`` holds back and other clients are served."""
    assert reader.transport is not None
    reader.transport.write(request("GET", f"/big?n={BLOCKS}"))
    await wait(asyncio.shield(reader.started), "the response to start")
    server = served.protocols[-1]
    await wait_until(lambda: server.writing_paused, "the server to pause writing")
    transport = server.transport
    assert transport is not None
    watch = Watch(produced_at_pause=produced())

    async def sample() -> None:
        end = loop.time() + WINDOW
        while loop.time() < end:
            watch.peak_buffer = max(watch.peak_buffer, transport.get_write_buffer_size())
            watch.peak_rss = max(watch.peak_rss, rss() - baseline)
            await asyncio.sleep(0.02)

    sampling = asyncio.ensure_future(sample())
    watch.others = await _other_requests(loop, served.port)
    await wait(sampling, "the sampling window", timeout=WINDOW + 10)
    watch.progress = produced() - watch.produced_at_pause
    return watch


@pytest.mark.parametrize("reader", ["stalled", "slow"])
@pytest.mark.parametrize(
    "producer", ["coroutine", pytest.param("wsgi", marks=pytest.mark.requires("threads"))]
)
def test_server_memory_stays_bounded_for_a_1gib_response(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, figure: Figure, reader: str, producer: str
) -> None:
    need_proc()
    app, stream = App(), Stream()
    handler = Router(wsgi_app=stream) if producer == "wsgi" else app

    def produced() -> int:
        return stream.produced if producer == "wsgi" else app.produced

    async def main() -> tuple[Watch, bytes]:
        async with watching(loop, lambda: Watched(handler)) as served:
            await _other_requests(loop, served.port)  # warm up before the baseline
            baseline = rss()
            _, client = await wait(
                loop.create_connection(
                    functools.partial(Reader, loop, slow=reader == "slow"),
                    "127.0.0.1",
                    served.port,
                ),
                "the reader's connection",
            )
            assert isinstance(client, Reader) and client.transport is not None
            watch = await _hold_back(loop, served, client, produced, baseline)
            # The client leaves; the server must clean up the connection and its producer.
            client.transport.close()
            await wait(asyncio.shield(client.lost), "the reader to close")
            server = served.protocols[-1]
            await wait_until(lambda: server.lost, "the server to see the reader leave")
            await wait(server.wait_closed(), "the handler to end")
            await settle(3)
            return watch, client.head

    watch, head = run(main(), timeout=60)
    figure("peak write buffer", watch.peak_buffer, "B", headline=True)
    figure("RSS growth", round(watch.peak_rss / 2**20, 1), "MiB")
    figure("produced before the first pause", watch.produced_at_pause, "B")
    figure("produced while watched", watch.progress, "B")
    figure("other requests answered", f"{watch.others}/{OTHERS}")
    assert b" 200 " in head, head
    assert watch.peak_buffer <= BUFFER_BOUND
    assert watch.peak_rss <= RSS_BOUND
    assert watch.others == OTHERS
    assert watch.produced_at_pause + watch.progress < GIB // 8
    if reader == "stalled":
        # Paused: at most a block or two beyond what was already in flight.
        assert watch.progress <= 2 * len(PATTERN)
    if producer == "wsgi":
        assert stream.closed, "the WSGI iterable was not closed after the client left"
    else:
        # The big response's handler ended with the connection's error.
        assert [type(exc) for exc in app.failed] == [ConnectionResetError]
