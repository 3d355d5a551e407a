"""Write flow control (buffer limits, pause/resume_writing) and read pausing."""

from __future__ import annotations

import asyncio

import pytest

from protoshim.conformance._helpers import (
    Recorder,
    fill_write_buffer,
    settle,
    tcp_pair,
    wait,
    wait_until,
)
from protoshim.conformance.plugin import RunCoroutine

pytestmark = pytest.mark.requires("tcp")

HIGH = 64 * 1024
LOW = 16 * 1024


class WriteWatcher(Recorder):
    """Tell whether pause_writing ran inside a write() call."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.in_write = False
        self.paused_inside_write: list[bool] = []

    def pause_writing(self) -> None:
        super().pause_writing()
        self.paused_inside_write.append(self.in_write)


# -- limits ------------------------------------------------------------------


def test_default_write_buffer_limits(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            for transport in (pair.client.tr, pair.peer.tr):
                assert transport.get_write_buffer_limits() == (16384, 65536)

    run(main())


def test_write_buffer_limits_high_below_low_raise(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            with pytest.raises(ValueError):
                pair.client.tr.set_write_buffer_limits(high=10, low=20)

    run(main())


def test_write_buffer_limits_high_only_sets_low_to_a_quarter(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            pair.client.tr.set_write_buffer_limits(high=1000)
            assert pair.client.tr.get_write_buffer_limits() == (250, 1000)

    run(main())


# -- buffering and pause/resume_writing ---------------------------------------


def test_write_buffer_size_grows_when_peer_does_not_read(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            pair.peer.tr.pause_reading()
            fill_write_buffer(pair.client.tr)
            before = pair.client.tr.get_write_buffer_size()
            pair.client.tr.write(b"z" * 100_000)
            assert pair.client.tr.get_write_buffer_size() > before
            pair.peer.tr.resume_reading()
            await wait_until(
                lambda: pair.client.tr.get_write_buffer_size() == 0, "the buffer to drain"
            )

    run(main(), timeout=20)


def test_pause_writing_inside_the_write_that_crosses_high(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop, client_protocol=WriteWatcher) as pair:
            client = pair.client
            assert isinstance(client, WriteWatcher)
            client.tr.set_write_buffer_limits(high=HIGH, low=LOW)
            pair.peer.tr.pause_reading()
            chunk = b"p" * (LOW // 2)
            size_before_crossing = -1
            for _ in range(20_000):  # bounded; the kernel holds a few MiB at most
                size_before_crossing = client.tr.get_write_buffer_size()
                client.in_write = True
                client.tr.write(chunk)
                client.in_write = False
                if client.pause_sizes:
                    break
            assert client.paused_inside_write == [True]
            assert size_before_crossing <= HIGH
            assert client.pause_sizes[0] > HIGH
            for _ in range(10):
                client.tr.write(chunk)
            await settle(3)
            assert len(client.pause_sizes) == 1, "pause_writing called more than once"

    run(main(), timeout=20)


def test_resume_writing_once_at_or_below_low(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            client = pair.client
            client.tr.set_write_buffer_limits(high=HIGH, low=LOW)
            pair.peer.tr.pause_reading()
            fill_write_buffer(client.tr)
            client.tr.write(b"r" * (2 * HIGH))
            assert len(client.pause_sizes) == 1
            assert client.resume_sizes == []
            pair.peer.tr.resume_reading()
            await wait(asyncio.shield(client.resumed), "resume_writing")
            assert client.resume_sizes[0] <= LOW
            await wait_until(lambda: client.tr.get_write_buffer_size() == 0, "the buffer to drain")
            await settle(3)
            assert len(client.resume_sizes) == 1
            assert len(client.pause_sizes) == 1

    run(main(), timeout=20)


# -- pause/resume_reading ------------------------------------------------------


def test_pause_and_resume_reading_are_idempotent(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            transport = pair.peer.tr
            assert transport.is_reading()
            transport.pause_reading()
            transport.pause_reading()
            assert not transport.is_reading()
            transport.resume_reading()
            transport.resume_reading()
            assert transport.is_reading()
            pair.client.tr.write(b"after")
            assert await pair.peer.received(5) == b"after"

    run(main())


def test_no_data_received_while_reading_is_paused(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            pair.peer.tr.pause_reading()
            pair.client.tr.write(b"held back")
            await settle()
            assert pair.peer.events == ["made"]
            pair.peer.tr.resume_reading()
            assert await pair.peer.received(9) == b"held back"

    run(main())


def test_pause_and_resume_reading_are_safe_after_close(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            transport = pair.client.tr
            transport.close()
            transport.pause_reading()
            transport.resume_reading()
            await wait(asyncio.shield(pair.client.lost), "connection_lost")
            transport.pause_reading()
            transport.resume_reading()
            assert pair.client.lost_calls == 1

    run(main())


def test_reading_paused_before_close_then_closed(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            pair.peer.tr.pause_reading()
            pair.client.tr.write(b"unread")
            pair.peer.tr.close()
            assert await wait(asyncio.shield(pair.peer.lost), "connection_lost") is None
            assert pair.peer.events == ["made", "lost"]

    run(main())
