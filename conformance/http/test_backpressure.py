"""Flow control reaches the producer: a client that stops reading stops the response.

A client pauses reading after the first bytes of a large response.  Once
the server's transport has asked it to pause, the producer (a WSGI
generator in a worker thread, a static file, a coroutine) must stop: the
server's write buffer stays near the high-water mark instead of growing to
the size of the response.  Resuming must then deliver every byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import pathlib
import socket
from collections.abc import Callable, Iterator

import pytest

from protoshim.conformance._helpers import settle, wait_until
from protoshim.conformance.http._support import (
    Client,
    CountingRunner,
    Environ,
    Served,
    StartResponse,
    request,
    serving,
    small_config,
    validated,
)
from protoshim.conformance.plugin import RunCoroutine
from protoshim.protocols.http import HTTPExchange, HTTPServerProtocol, http_server

pytestmark = pytest.mark.requires("tcp")

CHUNK = 64 * 1024
#: beyond what the (shrunken) client receive buffer and the server's send
#: buffer (at most net.ipv4.tcp_wmem's 4 MiB by default) can hold together
TOTAL = 12 * 1024 * 1024
#: what the server may hold while paused: the transport's high-water mark
#: plus a chunk or two in hand
BOUND = 1024 * 1024
PATTERN = bytes(range(256)) * (CHUNK // 256)


class PausingClient(Client):
    """Stop reading as soon as the response starts arriving (once)."""

    paused_once = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A small receive buffer keeps the kernel from absorbing the response.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CHUNK)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.paused_once:
            self.paused_once = True
            self.tr.pause_reading()


async def check_producer_is_held(
    served: Served, produced: Callable[[], int], target: str = "/"
) -> None:
    """Pause the client, check the server holds still, resume, check every byte."""
    client = await served.connect(PausingClient)
    client.send(request(target=target))
    protocol = await served.server_protocol()
    await wait_until(lambda: protocol.writing_paused, "the server transport to pause writing")
    await settle()
    transport = protocol.transport
    assert transport is not None
    assert transport.get_write_buffer_size() <= BOUND
    before = produced()
    assert before < TOTAL
    await settle()
    assert produced() - before <= 2 * CHUNK  # the producer is waiting, not running
    assert transport.get_write_buffer_size() <= BOUND
    client.tr.resume_reading()
    response = await client.response()
    assert len(response.body) == TOTAL
    assert (
        hashlib.sha256(response.body).digest()
        == hashlib.sha256(PATTERN * (TOTAL // CHUNK)).digest()
    )


@pytest.mark.requires("threads")
def test_wsgi_generator_waits_for_a_slow_reader(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    produced = [0]

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response(
            "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(TOTAL))]
        )
        for _ in range(TOTAL // CHUNK):
            produced[0] += CHUNK
            yield PATTERN

    async def main() -> None:
        async with serving(loop, wsgi_app=validated(app)) as served:
            await check_producer_is_held(served, lambda: produced[0])

    run(main(), timeout=30)


@pytest.mark.requires("threads")
def test_static_file_is_read_only_as_fast_as_it_is_sent(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, tmp_path: pathlib.Path
) -> None:
    with (tmp_path / "big.bin").open("wb") as file:
        for _ in range(TOTAL // CHUNK):
            file.write(PATTERN)
    runner = CountingRunner()
    config = small_config(blocking_runner=runner, file_chunk_size=CHUNK)

    async def main() -> None:
        factory = http_server(static={"/files": tmp_path}, config=config)
        async with serving(loop, factory) as served:
            # Each file read is one runner call: count them to see reading stop.
            await check_producer_is_held(served, lambda: runner.runs * CHUNK, "/files/big.bin")

    run(main(), timeout=30)


def test_coroutine_writer_waits_in_write(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    produced = [0]

    async def handler(exchange: HTTPExchange) -> None:
        exchange.start_response(200, [(b"Content-Length", str(TOTAL).encode())])
        for _ in range(TOTAL // CHUNK):
            produced[0] += CHUNK
            await exchange.write(PATTERN)
        await exchange.end()

    async def main() -> None:
        async with serving(loop, lambda: HTTPServerProtocol(handler)) as served:
            await check_producer_is_held(served, lambda: produced[0])

    run(main(), timeout=30)
