"""The Twisted adapter's own rules: private reactors, Twisted transports, error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import subprocess
import sys

import pytest

pytest.importorskip("twisted", reason="the Twisted adapter needs Twisted installed")

from twisted.internet import tcp

import protoshim
from protoshim.adapters.twisted._loop import TwistedEventLoop

WAIT = 5.0


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def run(coro, timeout: float = 10.0):
    return protoshim.run(asyncio.wait_for(coro, timeout), framework="twisted")


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.events: list[object] = []
        self.made: asyncio.Future[None] = loop.create_future()
        self.received: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(None)

    def data_received(self, data):
        self.events.append(data)
        if not self.received.done():
            self.received.set_result(None)

    def pause_writing(self):
        self.events.append("pause_writing")

    def resume_writing(self):
        self.events.append("resume_writing")

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.lost.set_result(exc)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_loops_are_independent_and_leave_no_descriptors():
    warm = protoshim.new_event_loop("twisted")
    warm.run_until_complete(asyncio.sleep(0))
    warm.close()
    before = open_fd_count()
    reactors = set()
    for _ in range(20):
        loop = protoshim.new_event_loop("twisted")
        assert isinstance(loop, TwistedEventLoop)
        reactors.add(id(loop.reactor))
        loop.run_until_complete(asyncio.sleep(0.001))
        loop.close()
    assert open_fd_count() <= before
    assert len(reactors) > 1


def test_creating_a_loop_installs_no_global_reactor():
    script = (
        "import asyncio, sys, protoshim\n"
        "loop = protoshim.new_event_loop('twisted')\n"
        "loop.run_until_complete(asyncio.sleep(0))\n"
        "loop.close()\n"
        "print('twisted.internet.reactor' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_streams_are_twisted_tcp_transports():
    async def main():
        loop = asyncio.get_running_loop()
        first: asyncio.Future[Recorder] = loop.create_future()

        def accept() -> Recorder:
            recorder = Recorder()
            if not first.done():
                first.set_result(recorder)
            return recorder

        server = await loop.create_server(accept, "127.0.0.1", 0)
        transport, client = await loop.create_connection(Recorder, *server.sockets[0].getsockname())
        transport.write(b"ping")
        peer = await asyncio.wait_for(first, WAIT)
        # Once the server has read the ping, its transport is reading.
        await asyncio.wait_for(peer.received, WAIT)
        fd = peer.transport.get_extra_info("socket").fileno()
        # The reactor reads the very descriptor core accepted (no duplicate)
        # through Twisted's own transport.
        readers = [r for r in loop.reactor.getReaders() if r.fileno() == fd]
        assert len(readers) == 1
        assert isinstance(readers[0], tcp.Server)
        transport.close()
        await client.lost
        server.close()
        await server.wait_closed()

    run(main())


def test_unix_peer_names_are_asyncios(tmp_path):
    path = str(tmp_path / "peer.sock")

    def names(framework: str) -> tuple[object, object]:
        async def main() -> tuple[object, object]:
            loop = asyncio.get_running_loop()
            accepted: asyncio.Future[Recorder] = loop.create_future()

            def accept() -> Recorder:
                accepted.set_result(Recorder())
                return accepted.result()

            server = await loop.create_unix_server(accept, path)
            transport, _ = await loop.create_unix_connection(Recorder, path)
            peer = await accepted
            await peer.made
            found = (
                transport.get_extra_info("peername"),
                peer.transport.get_extra_info("peername"),
            )
            transport.close()
            server.close()
            await server.wait_closed()
            return found

        return protoshim.run(asyncio.wait_for(main(), WAIT), framework=framework)

    # The client's peer is the server's path; the server's is the unbound client: "".
    assert names("twisted") == names("asyncio") == (path, "")


@contextlib.asynccontextmanager
async def raw_peer():
    """Connect a Recorder client to a plain blocking socket; yield both ends."""
    loop = asyncio.get_running_loop()
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        transport, client = await loop.create_connection(Recorder, *lsock.getsockname())
        conn, _ = lsock.accept()
        with conn:
            yield transport, client, conn


def test_the_write_buffer_fills_pauses_and_drains_to_zero():
    async def main():
        loop = asyncio.get_running_loop()
        async with raw_peer() as (transport, client, conn):
            conn.setblocking(False)
            chunk = b"x" * 65536
            written = 0
            while "pause_writing" not in client.events and written < 256 * 2**20:
                transport.write(chunk)
                written += len(chunk)
            assert transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
            received = 0
            while received < written:
                received += len(await loop.sock_recv(conn, 1 << 20))
            # Every byte reached the peer, so none is left queued.
            assert transport.get_write_buffer_size() == 0
            assert client.events == ["pause_writing", "resume_writing"]
            transport.close()
            await client.lost

    run(main())


def test_a_peer_reset_reaches_connection_lost_with_its_errno_as_on_asyncio():
    async def main():
        loop = asyncio.get_running_loop()
        accepted: list[Recorder] = []

        def factory() -> Recorder:
            accepted.append(Recorder())
            return accepted[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        with socket.create_connection(server.sockets[0].getsockname(), timeout=WAIT) as peer:
            peer.sendall(b"ping")
            while not accepted:
                await asyncio.sleep(0)
            await asyncio.wait_for(accepted[0].received, WAIT)  # the server reads
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        exc = await asyncio.wait_for(accepted[0].lost, WAIT)
        server.close()
        await server.wait_closed()
        assert isinstance(exc, OSError)
        return type(exc), exc.errno, exc.strerror

    twisted = run(main())
    stdlib = asyncio.run(asyncio.wait_for(main(), 10))
    reset = (ConnectionResetError, errno.ECONNRESET, os.strerror(errno.ECONNRESET))
    assert twisted == stdlib == reset


def test_abort_ends_with_fin_and_connection_lost_none():
    async def main():
        async with raw_peer() as (transport, client, conn):
            transport.abort()
            assert await asyncio.wait_for(client.lost, WAIT) is None
            conn.settimeout(WAIT)
            # Twisted's abortConnection would reset; asyncio's abort closes.
            assert conn.recv(10) == b""

    run(main())


def test_closing_the_loop_closes_its_connections_even_paused_ones():
    loop = protoshim.new_event_loop("twisted")
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        try:

            async def connect() -> asyncio.BaseTransport:
                transport, _ = await loop.create_connection(Recorder, *lsock.getsockname())
                # Not reading: the reactor no longer watches the connection.
                transport.pause_reading()
                return transport

            transport = loop.run_until_complete(asyncio.wait_for(connect(), WAIT))
            conn, _ = lsock.accept()
        finally:
            loop.close()
    with conn:
        conn.settimeout(WAIT)
        assert conn.recv(10) == b""
    assert transport.get_extra_info("socket").fileno() == -1


def test_fd_watcher_keeps_reporting_a_hung_up_pipe():
    async def main():
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        reads: list[bytes] = []
        done = loop.create_future()

        def readable():
            data = os.read(r, 100)
            reads.append(data)
            if not data:
                loop.remove_reader(r)
                done.set_result(None)

        loop.add_reader(r, readable)
        os.write(w, b"abc")
        os.close(w)
        try:
            await asyncio.wait_for(done, WAIT)
        finally:
            loop.remove_reader(r)
            os.close(r)
        assert b"".join(reads) == b"abc"
        assert reads[-1] == b""

    run(main())


def test_keyboard_interrupt_in_a_callback_leaves_run_until_complete():
    loop = protoshim.new_event_loop("twisted")
    try:

        def interrupt():
            raise KeyboardInterrupt

        loop.call_soon(interrupt)
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(asyncio.sleep(WAIT))
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def test_twisted_apis_work_with_the_loops_own_reactor():
    from twisted.internet import endpoints, task

    from protoshim.adapters.twisted import ProtocolFactory, as_future

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def main():
        loop = asyncio.get_running_loop()
        reactor = loop.reactor
        assert await as_future(task.deferLater(reactor, 0.01, lambda: "later")) == "later"
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = await as_future(endpoint.listen(ProtocolFactory(Echo, loop)))
        reader, writer = await asyncio.open_connection("127.0.0.1", port.getHost().port)
        writer.write(b"via an endpoint")
        assert await reader.readexactly(15) == b"via an endpoint"
        writer.close()
        await writer.wait_closed()
        await as_future(port.stopListening())

    run(main())


def test_add_reader_of_a_closed_descriptor_raises_and_leaves_no_watch():
    async def main():
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        with pytest.raises(OSError):
            loop.add_reader(r, lambda: None)
        assert not loop.remove_reader(r)
        # A new descriptor (most likely the same number) is watched afresh.
        r, w = os.pipe()
        readable = loop.create_future()
        try:
            loop.add_reader(r, readable.set_result, None)
            os.write(w, b"x")
            await asyncio.wait_for(readable, WAIT)
        finally:
            loop.remove_reader(r)
            os.close(r)
            os.close(w)

    run(main())
