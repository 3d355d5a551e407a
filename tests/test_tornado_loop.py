"""The Tornado adapter's own rules: the loop layering, descriptors and streams on the IOLoop."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("tornado", reason="the Tornado adapter needs Tornado installed")

from tornado.ioloop import IOLoop

import protoshim
from protoshim.adapters.tornado import TornadoDriver

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
        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_asyncgens())
        assert closed == [True]
    finally:
        loop.close()


def test_errors_in_tornado_callbacks_reach_the_loop_exception_handler():
    contexts: list[dict] = []

    async def main():
        loop = asyncio.get_running_loop()
        reported = loop.create_future()

        def handler(_loop, context):
            contexts.append(context)
            if not reported.done():
                reported.set_result(None)

        loop.set_exception_handler(handler)
        io_loop = IOLoop.current()
        r, w = socket.socketpair()
        try:

            def broken(fd, events):
                io_loop.remove_handler(fd)
                raise RuntimeError("a broken Tornado handler")

            io_loop.add_handler(r.fileno(), broken, IOLoop.READ)
            w.send(b"x")
            await asyncio.wait_for(reported, WAIT)
        finally:
            r.close()
            w.close()

    run(main())
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], RuntimeError)


def test_a_reader_and_a_writer_share_the_descriptor_and_release_it():
    async def main():
        loop = asyncio.get_running_loop()
        io_loop = IOLoop.current()
        r, w = socket.socketpair()
        try:
            readable = loop.create_future()
            writable = loop.create_future()
            loop.add_reader(r, lambda: readable.done() or readable.set_result(None))
            loop.add_writer(r, lambda: writable.done() or writable.set_result(None))
            await asyncio.wait_for(writable, WAIT)
            assert loop.remove_writer(r)
            # The reader still works without the writer.
            w.send(b"x")
            await asyncio.wait_for(readable, WAIT)
            assert loop.remove_reader(r)
            assert not loop.remove_reader(r)
            # Released: Tornado code may now watch the descriptor itself.
            tornado_saw = loop.create_future()
            io_loop.add_handler(
                r.fileno(),
                lambda fd, events: tornado_saw.done() or tornado_saw.set_result(events),
                IOLoop.READ,
            )
            try:
                assert await asyncio.wait_for(tornado_saw, WAIT) == IOLoop.READ
            finally:
                io_loop.remove_handler(r.fileno())
        finally:
            r.close()
            w.close()

    run(main())


# -- streams ------------------------------------------------------------------------


def test_peer_eof_leaves_the_socket_open_for_writing():
    async def main():
        server, peer, client = await connected_pair(keep_open=True)
        try:
            client.transport.write_eof()
            await asyncio.wait_for(asyncio.shield(peer.eof), WAIT)
            peer.transport.write(b"still here")
            assert await client.wait_for(10) == b"still here"
            peer.transport.close()
            await asyncio.wait_for(asyncio.shield(client.eof), WAIT)
            assert await asyncio.wait_for(asyncio.shield(peer.lost), WAIT) is None
            assert peer.events == ["eof", "lost"]
        finally:
            await close_all(server, client)

    run(main())


def test_a_half_closed_socket_does_not_spin_the_loop():
    async def main():
        server, peer, client = await connected_pair(keep_open=True)
        try:
            client.transport.write_eof()
            await asyncio.wait_for(asyncio.shield(peer.eof), WAIT)
            # The socket stays readable after EOF: a loop still watching it
            # would use a whole core while it should sleep.
            cpu = time.process_time()
            await asyncio.sleep(0.5)
            assert time.process_time() - cpu < 0.25
        finally:
            await close_all(server, peer, client)

    run(main())


async def steady_write_buffer(transport: asyncio.WriteTransport) -> int:
    """Wait until ``transport``'s write buffer stops draining; return its size."""
    deadline = time.monotonic() + WAIT
    size = transport.get_write_buffer_size()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = transport.get_write_buffer_size()
        if now == size:
            return size
        size = now
    raise AssertionError("the write buffer kept changing")


def test_paused_reading_leaves_data_in_the_kernel():
    async def main():
        server, peer, client = await connected_pair()
        try:
            peer.transport.pause_reading()
            total = 16 * 1024 * 1024
            client.transport.write(b"q" * total)
            # The kernel pushed back, so the writer holds the rest, and the
            # paused reader took nothing.
            assert await steady_write_buffer(client.transport) > 0
            assert peer.data == b""
            peer.transport.resume_reading()
            assert len(await peer.wait_for(total)) == total
        finally:
            await close_all(server, peer, client)

    run(main(), timeout=30)


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

    CLIENTS = 16

    async def main():
        loop = asyncio.get_running_loop()
        handled = []
        paused = asyncio.Event()
        everyone = asyncio.Event()

        def handler(_loop, context):
            handled.append(context)
            paused.set()

        loop.set_exception_handler(handler)
        transports = []

        class Keep(asyncio.Protocol):
            def connection_made(self, transport):
                transports.append(transport)
                if len(transports) == CLIENTS:
                    everyone.set()

        server = await loop.create_server(Keep, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = []
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Room for the clients and for a few accepted connections, not all.
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 24, hard))
        try:
            for _ in range(CLIENTS):
                c = socket.socket()
                c.setblocking(False)
                try:
                    c.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                clients.append(c)
            # Out of descriptors, accept() fails: reported, then accepting pauses.
            await asyncio.wait_for(paused.wait(), 10)
            starved = len(transports)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        # Accepting resumes after the pause, now that descriptors are free.
        await asyncio.wait_for(everyone.wait(), 10)
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
