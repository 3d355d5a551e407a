"""``loop.sendfile()`` and ``loop.sock_sendfile()``, as the stdlib loop behaves."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import IO

import pytest

from protoshim.conformance._helpers import Pair, Recorder, socket_pair, tcp_pair, wait
from protoshim.conformance.plugin import RunCoroutine

pytestmark = pytest.mark.requires("tcp")

#: Larger than any socket buffer the tests leave, so the transfer has to wait.
DATA = bytes(range(256)) * 4096 + b"tail"
SMALL_BUFFER = 4096


class SlowStart(Recorder):
    """Leave the bytes unread for a moment, so the sender's socket fills up."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.tr.pause_reading()
        self.loop.call_later(0.2, self._resume)

    def _resume(self) -> None:
        if not self.tr.is_closing():
            self.tr.resume_reading()


class CloseEarly(Recorder):
    """Close the connection after the first kilobyte."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if len(self.data) >= 1024 and not self.tr.is_closing():
            self.tr.close()


@pytest.fixture
def data_file() -> Iterator[IO[bytes]]:
    with tempfile.TemporaryFile() as file:
        file.write(DATA)
        file.seek(0)
        yield file


def _shrink_send_buffer(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)


@contextlib.asynccontextmanager
async def _slow_pair(loop: asyncio.AbstractEventLoop) -> AsyncIterator[Pair]:
    """A pair whose client sends into a small buffer that the server drains late."""
    async with tcp_pair(loop, server_protocol=SlowStart) as pair:
        _shrink_send_buffer(pair.client.tr)
        yield pair


def test_sendfile_sends_after_buffered_data_and_before_later_writes(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, data_file: IO[bytes]
) -> None:
    async def main() -> None:
        async with _slow_pair(loop) as pair:
            transport = pair.client.tr
            transport.write(b"head" * 8192)  # more than the socket takes at once
            sent = await wait(loop.sendfile(transport, data_file), "sendfile")
            transport.write(b"end")
            expected = b"head" * 8192 + DATA + b"end"
            assert sent == len(DATA)
            assert data_file.tell() == len(DATA)
            assert await pair.peer.received(len(expected)) == expected

    run(main())


def test_sendfile_offset_and_count_select_the_bytes_and_move_the_position(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, data_file: IO[bytes]
) -> None:
    async def main() -> None:
        async with _slow_pair(loop) as pair:
            transport = pair.client.tr
            count = len(DATA) // 2
            sent = await wait(loop.sendfile(transport, data_file, 1000, count), "sendfile")
            assert sent == count
            assert data_file.tell() == 1000 + count
            assert await pair.peer.received(count) == DATA[1000 : 1000 + count]

    run(main())


def test_sendfile_pauses_reading_and_refuses_writes_until_done(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, data_file: IO[bytes]
) -> None:
    async def main() -> None:
        async with _slow_pair(loop) as pair:
            transport = pair.client.tr
            task = asyncio.ensure_future(loop.sendfile(transport, data_file))
            await asyncio.sleep(0)
            assert not task.done()
            assert not transport.is_reading()
            with pytest.raises(RuntimeError, match="sendfile is in progress"):
                transport.write(b"x")
            assert await wait(task, "sendfile") == len(DATA)
            assert transport.is_reading()
            transport.write(b"after")
            await pair.peer.received(len(DATA) + 5)

    run(main())


def test_sendfile_raises_connection_error_when_the_peer_leaves(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, data_file: IO[bytes]
) -> None:
    async def main() -> None:
        async with tcp_pair(loop, server_protocol=CloseEarly) as pair:
            transport = pair.client.tr
            _shrink_send_buffer(transport)
            with pytest.raises(ConnectionError):
                await wait(loop.sendfile(transport, data_file), "sendfile")
            assert 1024 <= data_file.tell() < len(DATA)
            await wait(asyncio.shield(pair.client.lost), "the client's connection_lost")

    run(main())


def test_sendfile_falls_back_for_a_file_without_descriptor(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            transport = pair.client.tr
            memory = io.BytesIO(DATA)
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sendfile(transport, memory, fallback=False)
            assert memory.tell() == 0
            sent = await wait(loop.sendfile(transport, memory, 10), "sendfile")
            assert sent == len(DATA) - 10
            assert memory.tell() == len(DATA)
            assert await pair.peer.received(sent) == DATA[10:]

    run(main())


def test_sendfile_refuses_a_closing_transport(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, data_file: IO[bytes]
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            pair.client.tr.close()
            with pytest.raises(RuntimeError, match="is closing"):
                await loop.sendfile(pair.client.tr, data_file)
            assert data_file.tell() == 0

    run(main())


def test_sock_sendfile_sends_a_range_of_the_file(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, data_file: IO[bytes]
) -> None:
    async def main() -> None:
        with socket_pair() as (left, right):
            left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
            count = len(DATA) - 5000
            task = asyncio.ensure_future(loop.sock_sendfile(left, data_file, 5000, count))
            received = bytearray()
            while len(received) < count:
                received += await wait(loop.sock_recv(right, 65536), "sock_recv")
            assert await wait(task, "sock_sendfile") == count
            assert bytes(received) == DATA[5000:]
            assert data_file.tell() == len(DATA)

    run(main())


def test_sendfile_on_an_empty_file_sends_nothing(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            with tempfile.TemporaryFile() as empty:
                assert await loop.sendfile(pair.client.tr, empty) == 0
                assert empty.tell() == 0
            pair.client.tr.write(b"still open")
            assert await pair.peer.received(10) == b"still open"

    run(main())
