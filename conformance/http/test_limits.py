"""Configured limits: head size (431), body size (413), timeouts, pipelining depth."""

from __future__ import annotations

import asyncio

import pytest

from protoshim.conformance._helpers import wait, wait_until
from protoshim.conformance.http._support import request, serving, small_config
from protoshim.conformance.plugin import RunCoroutine
from protoshim.protocols.http import HTTPExchange, HTTPServerProtocol

pytestmark = pytest.mark.requires("tcp")


class Counter:
    """Count calls; read the whole body; answer with its length."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, exchange: HTTPExchange) -> None:
        self.calls += 1
        body = await exchange.read_body()
        await exchange.respond(200, [], b"%d" % len(body))


@pytest.mark.parametrize("terminated", [True, False], ids=["complete-head", "endless-head"])
def test_oversized_head_gets_431(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, terminated: bool
) -> None:
    counter = Counter()
    config = small_config(max_header_size=1024)

    async def main() -> None:
        async with serving(loop, lambda: HTTPServerProtocol(counter, config)) as served:
            client = await served.connect()
            data = request(headers=[("X-Big", "a" * 2000)])
            client.send(data if terminated else data[:-4])
            response = await client.response()
            assert response.status == 431
            assert await client.everything() == b""

    run(main())
    assert counter.calls == 0


def test_head_just_under_the_limit_is_served(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    counter = Counter()
    config = small_config(max_header_size=1024)
    base = len(request(headers=[("X-Fill", "")]))
    data = request(headers=[("X-Fill", "a" * (1024 - base))])
    assert len(data) == 1024

    async def main() -> int:
        async with serving(loop, lambda: HTTPServerProtocol(counter, config)) as served:
            return (await served.exchange(data)).status

    assert run(main()) == 200


def test_declared_oversized_body_gets_413_without_reaching_the_app(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    counter = Counter()
    config = small_config(max_body_size=100)

    async def main() -> None:
        async with serving(loop, lambda: HTTPServerProtocol(counter, config)) as served:
            client = await served.connect()
            client.send(request("POST", headers=[("Content-Length", "101")]))
            response = await client.response()
            assert response.status == 413
            await client.closed()

    run(main())
    assert counter.calls == 0


def test_chunked_body_growing_past_the_limit_gets_413(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    config = small_config(max_body_size=100)

    async def main() -> None:
        async with serving(loop, lambda: HTTPServerProtocol(Counter(), config)) as served:
            client = await served.connect()
            client.send(request("POST", headers=[("Transfer-Encoding", "chunked")]))
            client.send(b"40\r\n" + b"x" * 64 + b"\r\n")
            client.send(b"40\r\n" + b"x" * 64 + b"\r\n")
            response = await client.response()
            assert response.status == 413
            await client.closed()

    run(main())


def test_body_exactly_at_the_limit_is_accepted(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    config = small_config(max_body_size=100)

    async def main() -> bytes:
        async with serving(loop, lambda: HTTPServerProtocol(Counter(), config)) as served:
            data = request("POST", headers=[("Content-Length", "100")], body=b"x" * 100)
            return (await served.exchange(data)).body

    assert run(main()) == b"100"


@pytest.mark.parametrize(
    "sent", [b"", b"GET / HTTP/1.1\r\nHost: t\r\n"], ids=["nothing", "partial"]
)
def test_slow_head_is_closed_after_the_header_timeout(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, sent: bytes
) -> None:
    counter = Counter()
    config = small_config(header_timeout=0.2)

    async def main() -> None:
        async with serving(loop, lambda: HTTPServerProtocol(counter, config)) as served:
            client = await served.connect()
            client.send(sent)
            # Trickle bytes (a slowloris): they must not extend the deadline.
            for _ in range(100):
                if client.eof.done() or client.lost.done():
                    break
                if sent:
                    client.send(b"X")
                await asyncio.sleep(0.01)
            await client.closed()
            assert not client.data.startswith(b"HTTP/1.1 2")

    run(main())
    assert counter.calls == 0


def test_idle_keep_alive_connection_is_closed(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    config = small_config(keepalive_timeout=0.2)

    async def main() -> None:
        async with serving(loop, lambda: HTTPServerProtocol(Counter(), config)) as served:
            client = await served.connect()
            client.send(request())
            assert (await client.response()).status == 200
            await client.closed()
            assert await client.everything() == b""

    run(main())


def test_a_request_before_the_idle_timeout_keeps_the_connection(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    config = small_config(keepalive_timeout=5.0)

    async def main() -> None:
        async with serving(loop, lambda: HTTPServerProtocol(Counter(), config)) as served:
            client = await served.connect()
            for _ in range(3):
                client.send(request())
                assert (await client.response()).status == 200
            assert not client.eof.done()

    run(main())


def test_pipelining_depth_is_bounded_by_pausing_reading(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    release = asyncio.Event()
    order: list[bytes] = []

    async def handler(exchange: HTTPExchange) -> None:
        await release.wait()
        order.append(exchange.path)
        await exchange.respond(200, [], exchange.path)

    config = small_config(max_pipelined=2)

    async def main() -> None:
        async with serving(loop, lambda: HTTPServerProtocol(handler, config)) as served:
            client = await served.connect()
            paths = [f"/{i}" for i in range(8)]
            client.send(b"".join(request(target=path) for path in paths))
            protocol = await served.server_protocol()
            assert protocol.transport is not None
            transport = protocol.transport
            await wait_until(
                lambda: protocol.requests_in_flight == 2 and not transport.is_reading(),
                "the server to stop reading at two requests in flight",
            )
            assert protocol.requests_served == 2  # the others wait unparsed
            release.set()
            bodies = [(await client.response()).body for _ in paths]
            assert bodies == [path.encode() for path in paths]
            assert protocol.requests_served == 8

    run(main())
    assert order == [f"/{i}".encode() for i in range(8)]


def test_unread_body_pauses_reading_until_the_app_reads(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    release = asyncio.Event()

    async def handler(exchange: HTTPExchange) -> None:
        await release.wait()
        body = await exchange.read_body()
        await exchange.respond(200, [], b"%d" % len(body))

    config = small_config(body_buffer_size=16 * 1024, max_body_size=64 * 1024 * 1024)
    size = 8 * 1024 * 1024

    async def main() -> None:
        async with serving(loop, lambda: HTTPServerProtocol(handler, config)) as served:
            client = await served.connect()
            client.send(request("POST", headers=[("Content-Length", str(size))]))
            protocol = await served.server_protocol()
            assert protocol.transport is not None
            transport = protocol.transport
            chunk = b"x" * 65536
            for _ in range(size // len(chunk)):
                client.send(chunk)
            await wait_until(lambda: not transport.is_reading(), "the server to pause reading")
            release.set()
            response = await wait(client.response(), "the response")
            assert response.body == str(size).encode()

    run(main(), timeout=20)
