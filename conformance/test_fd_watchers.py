"""Descriptor watchers: add_reader / add_writer and their removal."""

from __future__ import annotations

import asyncio
import socket

import pytest

import protoshim
from protoshim.conformance._helpers import close_and_wait, tcp_pair, wait
from protoshim.conformance.plugin import RunCoroutine

pytestmark = pytest.mark.requires("fd_watchers")


def test_reader_and_writer_callbacks_run(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            readable: asyncio.Future[bytes] = loop.create_future()
            writable: asyncio.Future[None] = loop.create_future()

            def on_readable() -> None:
                if not readable.done():
                    readable.set_result(ours.recv(10))

            def on_writable() -> None:
                if not writable.done():
                    writable.set_result(None)

            loop.add_reader(ours, on_readable)
            loop.add_writer(ours, on_writable)
            await wait(writable, "writable")
            assert loop.remove_writer(ours)
            theirs.send(b"ping")
            assert await wait(readable, "readable") == b"ping"
            assert loop.remove_reader(ours)
            assert not loop.remove_reader(ours)

    run(main())


@pytest.mark.parametrize("kind", ["reader", "writer"])
def test_remove_finds_a_socket_closed_after_registration(
    loop: asyncio.AbstractEventLoop, kind: str
) -> None:
    # The socket object is closed (fileno() is -1) before the watch is
    # removed: the registration is found by the object, and the loop still
    # closes cleanly (the loop fixture closes it).
    ours, theirs = socket.socketpair()
    with theirs:
        getattr(loop, f"add_{kind}")(ours, lambda: None)
        ours.close()
        assert getattr(loop, f"remove_{kind}")(ours) is True
        assert getattr(loop, f"remove_{kind}")(theirs) is False


def test_remove_after_the_loop_closed_returns_false(
    adapter: protoshim.Adapter, fd_guard: None
) -> None:
    loop = adapter.new_event_loop()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        try:
            loop.add_reader(ours, lambda: None)
            loop.add_writer(ours, lambda: None)
        finally:
            loop.close()
        assert loop.remove_reader(ours) is False
        assert loop.remove_writer(ours) is False


@pytest.mark.requires("tcp")
def test_a_transports_socket_cannot_be_watched(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    # A watcher would steal the transport's events; asyncio refuses it until
    # the transport is closing.
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            sock = pair.client.tr.get_extra_info("socket")
            for method in (loop.add_reader, loop.add_writer):
                with pytest.raises(RuntimeError, match="is used by transport"):
                    method(sock.fileno(), lambda: None)
            for remove in (loop.remove_reader, loop.remove_writer):
                with pytest.raises(RuntimeError, match="is used by transport"):
                    remove(sock.fileno())
            await close_and_wait(pair.client)

    run(main())


@pytest.mark.requires("tcp")
def test_a_closing_transports_socket_can_be_watched(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            fd = pair.client.tr.get_extra_info("socket").fileno()
            pair.client.tr.close()
            assert not loop.remove_reader(fd)
            await wait(asyncio.shield(pair.client.lost), "connection_lost")

    run(main())




def test_a_loop_closes_with_a_watched_socket_closed_behind_its_back(
    adapter: protoshim.Adapter, fd_guard: None
) -> None:
    loop = adapter.new_event_loop()
    ours, theirs = socket.socketpair()
    with theirs:
        try:
            loop.add_reader(ours, lambda: None)
            loop.add_writer(ours, lambda: None)
            # Not polled after this: libev and libuv abort on a closed
            # descriptor they still watch.
            ours.close()
        finally:
            loop.close()
        assert loop.is_closed()


@pytest.mark.requires("tcp")
def test_sock_calls_refuse_a_transports_socket(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    # As in asyncio, the check is made when the call has to wait.
    async def main() -> None:
        async with tcp_pair(loop) as pair:
            fd = pair.client.tr.get_extra_info("socket").fileno()
            raw = socket.socket(fileno=fd)  # the same descriptor, not owned
            try:
                raw.setblocking(False)
                with pytest.raises(RuntimeError, match="is used by transport"):
                    await loop.sock_recv(raw, 1)
            finally:
                raw.detach()
            await close_and_wait(pair.client)

    run(main())


def test_callbacks_ready_before_a_poll_run_before_its_events(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # asyncio appends the handles of polled I/O behind the callbacks already
    # ready, so a task's first step runs before a reader that is already
    # readable when the loop starts.
    ours, theirs = socket.socketpair()
    with ours, theirs:
        order: list[str] = []

        def on_readable() -> None:
            order.append("reader")
            loop.remove_reader(ours)

        async def main() -> None:
            order.append("task")
            for _ in range(5000):  # bounded: five seconds at most
                if "reader" in order:
                    return
                await asyncio.sleep(0.001)

        theirs.send(b"waiting")
        loop.add_reader(ours, on_readable)
        loop.run_until_complete(main())
        assert order[:2] == ["task", "reader"]
