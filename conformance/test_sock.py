"""The ``sock_*`` coroutines and descriptor watchers, as the stdlib loop behaves."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from protoshim.conformance._helpers import socket_pair, wait
from protoshim.conformance.plugin import RunCoroutine


@pytest.mark.requires("udp")
def test_sock_recvfrom_into_fills_the_buffer_up_to_nbytes(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as left,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as right,
        ):
            for sock in (left, right):
                sock.setblocking(False)
                sock.bind(("127.0.0.1", 0))
            address = left.getsockname()

            buf = bytearray(16)
            receiving = asyncio.ensure_future(loop.sock_recvfrom_into(left, buf))
            await asyncio.sleep(0)
            assert await loop.sock_sendto(right, b"hello", address) == 5
            assert await wait(receiving, "sock_recvfrom_into") == (5, right.getsockname())
            assert buf[:5] == b"hello"

            buf = bytearray(16)
            await loop.sock_sendto(right, b"0123456789", address)
            nbytes, _ = await wait(loop.sock_recvfrom_into(left, buf, 4), "sock_recvfrom_into")
            assert (nbytes, bytes(buf)) == (4, b"0123" + bytes(12))

            await loop.sock_sendto(right, b"again", address)
            data, sender = await wait(loop.sock_recvfrom(left, 100), "sock_recvfrom")
            assert (data, sender) == (b"again", right.getsockname())

    run(main())


@pytest.mark.requires("tcp")
def test_a_cancelled_sock_recv_leaves_the_next_one_waiting(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        with socket_pair() as (left, right):
            cancelled = asyncio.ensure_future(loop.sock_recv(left, 100))
            await asyncio.sleep(0)
            cancelled.cancel()
            loop.call_later(0.05, right.send, b"ping")
            # Awaited at once, so it watches the socket before the cancelled
            # call has cleaned up.
            assert await loop.sock_recv(left, 100) == b"ping"

    run(main())


@pytest.mark.requires("tcp")
def test_a_cancelled_sock_sendall_leaves_the_next_one_waiting(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        with socket_pair() as (left, right):
            with contextlib.suppress(BlockingIOError):
                while True:
                    left.send(b" " * 4096)
            cancelled = asyncio.ensure_future(loop.sock_sendall(left, b"lost"))
            await asyncio.sleep(0)
            cancelled.cancel()

            async def drain() -> bytes:
                received = b""
                while not received.endswith(b"world"):
                    received += (await loop.sock_recv(right, 65536)).strip()
                return received

            draining = asyncio.ensure_future(drain())
            # Awaited at once, so it watches the socket before the cancelled
            # call has cleaned up.
            await loop.sock_sendall(left, b"world")
            assert (await wait(draining, "the bytes of the second sock_sendall")) == b"world"

    run(main())


def test_a_writer_that_stops_the_loop_runs_once(loop: asyncio.AbstractEventLoop) -> None:
    left, right = socket.socketpair()
    with left, right:
        calls: list[None] = []

        def writer() -> None:
            calls.append(None)
            loop.stop()

        loop.add_writer(left.fileno(), writer)
        guard = loop.call_later(5.0, loop.stop)
        try:
            loop.run_forever()
        finally:
            guard.cancel()
        assert len(calls) == 1
        assert loop.remove_writer(left.fileno())
        assert not loop.remove_writer(left.fileno())
