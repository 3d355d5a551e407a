"""Serving a PEP 3156 protocol from gevent's StreamServer."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import ClassVar

import pytest

pytest.importorskip("gevent", reason="the gevent adapter needs gevent installed")

import gevent
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

import protoshim
from protoshim.adapters.gevent import ProtocolHandler, ProtocolStreamServer

WAIT = 5.0


class Echo(asyncio.Protocol):
    """Echo, and keep a record that the tests can inspect."""

    instances: ClassVar[list[Echo]] = []

    def __init__(self) -> None:
        self.lost = Event()
        self.lost_exc: BaseException | None = None
        Echo.instances.append(self)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.lost_exc = exc
        self.lost.set()


@pytest.fixture(autouse=True)
def _fresh_instances():
    Echo.instances = []
    yield
    Echo.instances = []


def exchange(port: int, message: bytes, *, context: ssl.SSLContext | None = None) -> bytes:
    sock = gsocket.create_connection(("127.0.0.1", port), timeout=WAIT)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="localhost")
    with sock:
        sock.sendall(message)
        received = b""
        while len(received) < len(message):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_protocol_stream_server_echoes_concurrent_clients():
    server = ProtocolStreamServer(("127.0.0.1", 0), Echo)
    server.start()
    try:
        messages = [b"client %d " % i * 1000 for i in range(10)]
        clients = [gevent.spawn(exchange, server.server_port, m) for m in messages]
        gevent.joinall(clients, timeout=WAIT, raise_error=True)
        assert [c.value for c in clients] == messages
        assert isinstance(server.protocol_loop, asyncio.AbstractEventLoop)
    finally:
        server.stop()
    assert all(protocol.lost.is_set() for protocol in Echo.instances)


def test_handler_serves_from_a_plain_stream_server_on_an_application_loop():
    loop = protoshim.new_event_loop("gevent")
    runner = gevent.spawn(loop.run_forever)
    handler = ProtocolHandler(Echo, loop=loop)
    server = StreamServer(("127.0.0.1", 0), handler)
    server.start()
    try:
        assert exchange(server.server_port, b"hello") == b"hello"
        assert handler.loop is loop
    finally:
        server.stop()
        handler.close()
        loop.call_soon_threadsafe(loop.stop)
        runner.join(WAIT)
        loop.close()
    assert Echo.instances[0].lost.wait(WAIT)


def test_a_spawn_pool_limits_the_connections_served():
    server = ProtocolStreamServer(("127.0.0.1", 0), Echo, spawn=Pool(1))
    server.start()
    first = gsocket.create_connection(("127.0.0.1", server.server_port), timeout=WAIT)
    second = gsocket.create_connection(("127.0.0.1", server.server_port), timeout=WAIT)
    try:
        first.sendall(b"one")
        assert first.recv(10) == b"one"
        second.sendall(b"two")
        gevent.sleep(0.05)
        assert len(Echo.instances) == 1  # the pool is full: not accepted yet
        first.close()
        assert second.recv(10) == b"two"
        assert len(Echo.instances) == 2
    finally:
        first.close()
        second.close()
        server.stop()


def test_stop_closes_the_open_connections():
    server = ProtocolStreamServer(("127.0.0.1", 0), Echo)
    server.start()
    client = gsocket.create_connection(("127.0.0.1", server.server_port), timeout=WAIT)
    try:
        client.sendall(b"x")
        assert client.recv(10) == b"x"
        server.stop(timeout=WAIT)
        assert client.recv(10) == b""  # the server closed the connection
        assert Echo.instances[0].lost.is_set()
        assert Echo.instances[0].lost_exc is None
    finally:
        client.close()


def test_killing_a_pooled_handler_aborts_its_connection():
    pool = Pool(10)
    server = ProtocolStreamServer(("127.0.0.1", 0), Echo, spawn=pool)
    server.start()
    client = gsocket.create_connection(("127.0.0.1", server.server_port), timeout=WAIT)
    try:
        client.sendall(b"x")
        assert client.recv(10) == b"x"
        pool.kill(timeout=WAIT)
        assert Echo.instances[0].lost.wait(WAIT)
        try:
            ended = client.recv(10) == b""  # the socket's timeout bounds this
        except ConnectionResetError:
            ended = True
        assert ended
    finally:
        client.close()
        server.stop()


def test_a_failing_protocol_factory_reaches_the_exception_handler():
    calls = 0
    errors: list[dict] = []

    def factory():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("factory failed")
        return Echo()

    server = ProtocolStreamServer(("127.0.0.1", 0), factory)
    server.protocol_loop.set_exception_handler(lambda loop, context: errors.append(context))
    server.start()
    try:
        # the connection is aborted: EOF or a reset, depending on timing
        with contextlib.suppress(ConnectionResetError):
            assert exchange(server.server_port, b"lost") == b""
        assert exchange(server.server_port, b"served") == b"served"
    finally:
        server.stop()
    assert len(errors) == 1
    assert str(errors[0]["exception"]) == "factory failed"


def test_tls_is_done_by_the_loop():
    trustme = pytest.importorskip("trustme", reason="the TLS test needs trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    # gevent's SSLContext, so the client's handshake cooperates with the hub
    client_context = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_context)

    server = ProtocolStreamServer(("127.0.0.1", 0), Echo, ssl=server_context)
    server.start()
    try:
        message = b"secret " * 5000
        assert exchange(server.server_port, message, context=client_context) == message
        transport = Echo.instances[0].transport
        assert transport.get_extra_info("sslcontext") is server_context
    finally:
        server.stop()
