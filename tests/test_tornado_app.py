"""Protocols inside a Tornado application: attach(), ProtocolServer and the example app."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import sys
import tempfile
from typing import ClassVar

import pytest

pytest.importorskip("tornado", reason="the Tornado adapter needs Tornado installed")

from tornado.httpclient import AsyncHTTPClient
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets, bind_unix_socket

from protoshim.adapters.tornado import AttachedEventLoop, ProtocolServer, attach
from protoshim.examples import tornado_app

WAIT = 5.0


def run_app(coro, timeout: float = 20.0):
    """Run ``coro`` the way a Tornado application runs: on stdlib asyncio."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def request_reply(sock_family: int, address, payload: bytes) -> bytes:
    """Send ``payload``, half-close, and read until the server closes (plain sockets)."""
    loop = asyncio.get_running_loop()
    with socket.socket(sock_family, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
        await loop.sock_sendall(sock, payload)
        sock.shutdown(socket.SHUT_WR)
        reply = bytearray()
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), WAIT):
            reply += chunk
        return bytes(reply)


class Greeter(asyncio.Protocol):
    """Report what it sees at connection time, then echo until EOF."""

    seen: ClassVar[list[tuple[asyncio.AbstractEventLoop, IOLoop]]] = []

    def connection_made(self, transport):
        self.transport = transport
        Greeter.seen.append((asyncio.get_running_loop(), IOLoop.current()))

    def data_received(self, data):
        self.transport.write(data)


# -- the example application ------------------------------------------------------


def test_example_app_serves_http_and_the_protocol_side_by_side():
    async def main():
        running = await tornado_app.start()
        try:
            client = AsyncHTTPClient()
            home = await client.fetch(f"http://127.0.0.1:{running.http_port}/")
            assert f"port {running.shout_port}".encode() in home.body
            reply = await request_reply(
                socket.AF_INET, ("127.0.0.1", running.shout_port), b"quiet words"
            )
            assert reply == b"QUIET WORDS"
            asked = await client.fetch(f"http://127.0.0.1:{running.http_port}/ask?text=from+web")
            assert asked.body == b"FROM WEB"
        finally:
            running.stop()

    run_app(main())


# -- ProtocolServer ----------------------------------------------------------------


def test_protocol_server_runs_protocols_on_the_attached_loop():
    Greeter.seen.clear()

    async def main():
        server = ProtocolServer(Greeter)
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        try:
            port = sockets[0].getsockname()[1]
            assert await request_reply(socket.AF_INET, ("127.0.0.1", port), b"hi") == b"hi"
            ((loop, io_loop),) = Greeter.seen
            assert isinstance(loop, AttachedEventLoop)
            assert loop is attach()
            assert io_loop is IOLoop.current()
            assert loop is not asyncio.get_running_loop()
        finally:
            server.stop()
            attach().close()

    run_app(main())


def test_protocol_server_on_a_unix_socket_from_bind_unix_socket():
    directory = tempfile.mkdtemp(prefix="ps-")
    try:
        path = os.path.join(directory, "s")

        async def main():
            server = ProtocolServer(tornado_app.Shout)
            server.add_socket(bind_unix_socket(path))
            try:
                assert await request_reply(socket.AF_UNIX, path, b"unix") == b"UNIX"
            finally:
                server.stop()
                attach().close()

        run_app(main())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_protocol_server_with_tls():
    trustme = pytest.importorskip("trustme", reason="makes the test certificates")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def main():
        server = ProtocolServer(tornado_app.Shout, ssl=server_ctx)
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        try:
            port = sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
            )
            writer.write(b"secret")
            assert await asyncio.wait_for(reader.readexactly(6), WAIT) == b"SECRET"
            assert writer.get_extra_info("ssl_object").version() is not None
            writer.close()
            await writer.wait_closed()
        finally:
            server.stop()
            attach().close()

    run_app(main())


def test_protocol_factory_errors_reach_the_attached_loop_handler():
    contexts: list[dict] = []

    def broken():
        raise RuntimeError("no protocol today")

    async def main():
        app_loop = asyncio.get_running_loop()
        reported = app_loop.create_future()
        loop = attach()

        def handler(_loop, context):
            contexts.append(context)
            if not reported.done():
                reported.set_result(None)

        loop.set_exception_handler(handler)
        server = ProtocolServer(broken)
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        try:
            port = sockets[0].getsockname()[1]
            # The connection is dropped: the client reads EOF (or a reset).
            with socket.socket() as sock:
                sock.setblocking(False)
                await app_loop.sock_connect(sock, ("127.0.0.1", port))
                try:
                    assert await asyncio.wait_for(app_loop.sock_recv(sock, 10), WAIT) == b""
                except ConnectionResetError:
                    pass
            await asyncio.wait_for(reported, WAIT)
        finally:
            server.stop()
            loop.close()

    run_app(main())
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], RuntimeError)


def test_stop_closes_the_sockets_and_leaves_connections_alone():
    async def main():
        server = ProtocolServer(Greeter)
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"before")
            assert await asyncio.wait_for(reader.readexactly(6), WAIT) == b"before"
            server.stop()
            assert all(sock.fileno() == -1 for sock in sockets)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"after")
            assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"after"
            writer.close()
            await writer.wait_closed()
        finally:
            server.stop()
            attach().close()

    run_app(main())


# -- attach() ------------------------------------------------------------------------


def test_attach_returns_one_running_loop_per_ioloop():
    async def main():
        loop = attach()
        try:
            assert attach() is loop
            assert attach(IOLoop.current()) is loop
            assert loop.is_running()
            assert loop.io_loop is IOLoop.current()
            coro = asyncio.sleep(0)
            with pytest.raises(RuntimeError, match="already running"):
                loop.run_until_complete(coro)
            coro.close()
        finally:
            loop.close()
        assert loop.is_closed()
        fresh = attach()
        try:
            assert fresh is not loop
        finally:
            fresh.close()

    run_app(main())


def test_submit_runs_a_coroutine_on_the_attached_loop():
    async def main():
        loop = attach()

        async def where():
            await asyncio.sleep(0.01)
            return asyncio.get_running_loop()

        async def fails():
            await asyncio.sleep(0)
            raise LookupError("from the attached loop")

        try:
            assert await loop.submit(where()) is loop
            with pytest.raises(LookupError):
                await loop.submit(fails())
        finally:
            loop.close()

    run_app(main())


def test_cancelling_the_submitted_future_cancels_the_task():
    async def main():
        loop = attach()
        app_loop = asyncio.get_running_loop()
        started = app_loop.create_future()
        cancelled = app_loop.create_future()

        async def forever():
            started.set_result(None)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set_result(None)
                raise

        try:
            future = loop.submit(forever())
            await asyncio.wait_for(started, WAIT)
            future.cancel()
            await asyncio.wait_for(cancelled, WAIT)
        finally:
            loop.close()

    run_app(main())


def test_closing_the_attached_loop_releases_its_descriptors_and_timers():
    async def main():
        app_loop = asyncio.get_running_loop()
        io_loop = IOLoop.current()
        loop = attach()
        fired: list[str] = []
        r, w = socket.socketpair()
        try:
            loop.add_reader(r, fired.append, "reader")
            loop.call_soon(fired.append, "callback")
            loop.call_later(0, fired.append, "timer")
            loop.close()
            # The descriptor is Tornado's to watch again, and nothing of the
            # closed loop runs, though all of it was due in the iterations the
            # application's loop has made since.
            tornado_saw = app_loop.create_future()
            io_loop.add_handler(
                r.fileno(),
                lambda fd, events: tornado_saw.done() or tornado_saw.set_result(None),
                IOLoop.READ,
            )
            try:
                w.send(b"x")
                await asyncio.wait_for(tornado_saw, WAIT)
            finally:
                io_loop.remove_handler(r.fileno())
            assert fired == []
        finally:
            r.close()
            w.close()

    run_app(main())


def test_system_exit_in_protocol_code_leaves_the_application():
    loops: list[AttachedEventLoop] = []

    async def main():
        loop = attach()
        loops.append(loop)
        loop.call_soon(sys.exit, 3)
        await asyncio.sleep(WAIT)

    try:
        with pytest.raises(SystemExit) as raised:
            run_app(main())
        assert raised.value.code == 3
        assert not loops[0].is_running()
    finally:
        loops[0].close()
