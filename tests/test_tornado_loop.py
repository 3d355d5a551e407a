"""The Tornado adapter's own rules: the loop layering and the IOStream primitives."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("tornado", reason="the Tornado adapter needs Tornado installed")

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

import protoshim
from protoshim.adapters.tornado._iostream import HalfCloseIOStream, TornadoStream
from protoshim.adapters.tornado._loop import TornadoDriver

WAIT = 5.0


def run(coro, timeout: float = 10.0):
    return protoshim.run(asyncio.wait_for(coro, timeout), framework="tornado")


class Recorder(asyncio.Protocol):
    def __init__(self, *, keep_open: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.keep_open = keep_open
        self.data = bytearray()
        self.events: list[str] = []
        self.eof: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.more: asyncio.Event = asyncio.Event()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.events.append("data")
        self.data += data
        self.more.set()

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        return self.keep_open

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)

    async def wait_for(self, size: int) -> bytes:
        while len(self.data) < size:
            self.more.clear()
            await asyncio.wait_for(self.more.wait(), WAIT)
        return bytes(self.data)


async def connected_pair(**server_kwargs):
    """Return (server, server-side protocol, client-side protocol) on 127.0.0.1."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Recorder] = loop.create_future()

    def factory():
        protocol = Recorder(**server_kwargs)
        accepted.set_result(protocol)
        return protocol

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(Recorder, "127.0.0.1", port)
    peer = await asyncio.wait_for(accepted, WAIT)
    return server, peer, client


async def close_all(server, *protocols: Recorder) -> None:
    for protocol in protocols:
        protocol.transport.abort()
    for protocol in protocols:
        await asyncio.wait_for(asyncio.shield(protocol.lost), WAIT)
    server.close()
    await server.wait_closed()


def iostream_of(transport: asyncio.BaseTransport) -> HalfCloseIOStream:
    stream = transport._stream  # type: ignore[attr-defined]
    assert isinstance(stream, TornadoStream)
    return stream.iostream


# -- layering -------------------------------------------------------------------


def test_loop_runs_on_its_own_ioloop_and_asyncio_loop_underneath():
    loop = protoshim.new_event_loop("tornado")
    try:
        driver = loop.driver
        assert isinstance(driver, TornadoDriver)
        assert driver.native_loop is not loop
        assert isinstance(driver.native_loop, asyncio.SelectorEventLoop)
        assert driver.io_loop.asyncio_loop is driver.native_loop
    finally:
        loop.close()
    assert driver.native_loop.is_closed()


def test_protocol_code_sees_the_protoshim_loop_and_its_ioloop():
    seen: dict[str, object] = {}

    async def main():
        loop = asyncio.get_running_loop()
        seen["current"] = IOLoop.current()
        done = loop.create_future()

        def from_tornado():
            # Tornado's own callbacks run with Tornado's asyncio loop running.
            seen["tornado_running"] = asyncio.get_running_loop()
            done.set_result(None)

        IOLoop.current().add_callback(from_tornado)
        await done
        return loop

    loop = protoshim.new_event_loop("tornado")
    try:
        result = loop.run_until_complete(main())
        assert result is loop
        assert seen["current"] is loop.driver.io_loop
        assert seen["tornado_running"] is loop.driver.native_loop
    finally:
        loop.close()
    assert loop not in IOLoop._ioloop_for_asyncio


def test_async_generators_belong_to_the_protoshim_loop():
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def main():
        gen = agen()
        assert await gen.__anext__() == 1
        return gen

    loop = protoshim.new_event_loop("tornado")
    try:
        gen = loop.run_until_complete(main())
        assert gen in loop._asyncgens
        loop.run_until_complete(loop.shutdown_asyncgens())
        assert closed == [True]
    finally:
        loop.close()


def test_errors_in_tornado_callbacks_reach_the_loop_exception_handler():
    contexts: list[dict] = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: contexts.append(context))
        io_loop = loop.driver.io_loop
        r, w = socket.socketpair()
        try:

            def broken(fd, events):
                io_loop.remove_handler(fd)
                raise RuntimeError("a broken Tornado handler")

            loop.driver.in_tornado(io_loop.add_handler, r.fileno(), broken, IOLoop.READ)
            w.send(b"x")
            for _ in range(100):
                if contexts:
                    break
                await asyncio.sleep(0.01)
        finally:
            r.close()
            w.close()

    run(main())
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], RuntimeError)


def test_fd_watchers_share_one_ioloop_handler_per_fd():
    async def main():
        loop = asyncio.get_running_loop()
        io_loop = loop.driver.io_loop
        r, w = socket.socketpair()
        try:
            readable = loop.create_future()
            writable = loop.create_future()
            loop.add_reader(r, lambda: readable.done() or readable.set_result(None))
            loop.add_writer(r, lambda: writable.done() or writable.set_result(None))
            assert r.fileno() in io_loop.handlers
            await asyncio.wait_for(writable, WAIT)
            w.send(b"x")
            await asyncio.wait_for(readable, WAIT)
            assert loop.remove_writer(r)
            assert r.fileno() in io_loop.handlers
            assert loop.remove_reader(r)
            assert not loop.remove_reader(r)
            assert r.fileno() not in io_loop.handlers
        finally:
            r.close()
            w.close()

    run(main())


# -- IOStream primitives --------------------------------------------------------


def test_transports_are_tornado_iostreams():
    async def main():
        server, peer, client = await connected_pair()
        try:
            for protocol in (peer, client):
                ios = iostream_of(protocol.transport)
                assert isinstance(ios, IOStream)
                assert ios.io_loop is asyncio.get_running_loop().driver.io_loop
                assert ios.socket is protocol.transport.get_extra_info("socket")._sock
        finally:
            await close_all(server, peer, client)

    run(main())


def test_peer_eof_leaves_the_socket_open_for_writing():
    async def main():
        server, peer, client = await connected_pair(keep_open=True)
        try:
            client.transport.write_eof()
            await asyncio.wait_for(asyncio.shield(peer.eof), WAIT)
            ios = iostream_of(peer.transport)
            assert not ios.closed()
            assert ios.socket.fileno() >= 0
            peer.transport.write(b"still here")
            assert await client.wait_for(10) == b"still here"
            peer.transport.close()
            await asyncio.wait_for(asyncio.shield(client.eof), WAIT)
            assert await asyncio.wait_for(asyncio.shield(peer.lost), WAIT) is None
            assert peer.events == ["eof", "lost"]
        finally:
            await close_all(server, client)

    run(main())


def test_a_half_closed_socket_is_not_polled_after_eof():
    async def main():
        server, peer, client = await connected_pair(keep_open=True)
        try:
            client.transport.write_eof()
            await asyncio.wait_for(asyncio.shield(peer.eof), WAIT)
            await asyncio.sleep(0.05)
            ios = iostream_of(peer.transport)
            io_loop = asyncio.get_running_loop().driver.io_loop
            # Readable forever after EOF: watching it would spin the loop.
            assert ios.socket.fileno() not in io_loop.readers
        finally:
            await close_all(server, peer, client)

    run(main())


def test_paused_reading_leaves_data_in_the_kernel():
    async def main():
        server, peer, client = await connected_pair()
        try:
            peer.transport.pause_reading()
            client.transport.write(b"q" * (4 * 1024 * 1024))
            await asyncio.sleep(0.1)
            ios = iostream_of(peer.transport)
            io_loop = asyncio.get_running_loop().driver.io_loop
            assert ios.socket.fileno() not in io_loop.readers
            assert ios._read_future is None
            assert ios._read_buffer_size == 0
            assert peer.data == b""
            # The kernel pushed back, so the writer holds the rest.
            assert client.transport.get_write_buffer_size() > 0
            peer.transport.resume_reading()
            assert len(await peer.wait_for(4 * 1024 * 1024)) == 4 * 1024 * 1024
        finally:
            await close_all(server, peer, client)

    run(main(), timeout=20)


def test_write_buffer_size_is_the_iostream_buffer():
    async def main():
        server, peer, client = await connected_pair()
        try:
            peer.transport.pause_reading()
            ios = iostream_of(client.transport)
            for _ in range(200):
                client.transport.write(b"w" * 65536)
                size = client.transport.get_write_buffer_size()
                assert size == len(ios._write_buffer)
                if size:
                    break
            assert client.transport.get_write_buffer_size() > 0
        finally:
            await close_all(server, peer, client)

    run(main(), timeout=20)


def test_connection_reset_is_reported_as_an_error():
    async def main():
        server, peer, client = await connected_pair()
        try:
            sock = client.transport.get_extra_info("socket")
            # Linger 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.transport.abort()
            exc = await asyncio.wait_for(asyncio.shield(peer.lost), WAIT)
            assert isinstance(exc, ConnectionResetError)
        finally:
            await close_all(server, *(p for p in (peer, client) if not p.lost.done()))

    run(main())


# -- accepting -------------------------------------------------------------------

EMFILE_CHILD = textwrap.dedent(
    """
    import asyncio, json, os, resource, socket, sys
    import protoshim

    async def main():
        loop = asyncio.get_running_loop()
        handled = []
        loop.set_exception_handler(lambda _l, context: handled.append(context))
        transports = []

        class Keep(asyncio.Protocol):
            def connection_made(self, transport):
                transports.append(transport)

        server = await loop.create_server(Keep, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = []
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Room for the clients and for a few accepted connections, not all.
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 24, hard))
        try:
            for _ in range(16):
                c = socket.socket()
                c.setblocking(False)
                try:
                    c.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                clients.append(c)
            await asyncio.sleep(0.3)
            starved = len(transports)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        # Accepting resumes after the pause, now that descriptors are free.
        for _ in range(300):
            if len(transports) == len(clients):
                break
            await asyncio.sleep(0.01)
        result = {"starved": starved, "accepted": len(transports), "handled": len(handled)}
        for t in transports:
            t.abort()
        for c in clients:
            c.close()
        server.close()
        await server.wait_closed()
        print(json.dumps(result))

    protoshim.run(main(), framework="tornado")
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/fd")
def test_running_out_of_descriptors_pauses_accepting():
    proc = subprocess.run(
        [sys.executable, "-c", EMFILE_CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 < result["starved"] < 16
    assert result["accepted"] == 16
    # Reported to the exception handler, as asyncio does, once per pause
    # rather than on every poll.
    assert 1 <= result["handled"] <= 2


def test_creating_and_closing_loops_leaks_no_descriptors():
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(20):
        protoshim.new_event_loop("tornado").close()
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) <= before
