"""Protocols and connection set-ups shared by the conformance tests.

Everything here uses only public asyncio APIs of the loop under test, and
both ends of every connection run on that same loop, so the helpers work on
any adapter (including ones that monkey-patch the socket module).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import pytest

__all__ = [
    "WAIT",
    "Datagrams",
    "Pair",
    "Recorder",
    "TlsMaterial",
    "close_and_wait",
    "extra",
    "fill_write_buffer",
    "free_port",
    "ipv6_unavailable",
    "settle",
    "short_tmpdir",
    "tcp_pair",
    "tls_material",
    "wait",
    "wait_until",
]

#: Seconds any single expected event may take before the test fails.
WAIT = 5.0

T = TypeVar("T")


async def wait(awaitable: Awaitable[T], what: str, timeout: float = WAIT) -> T:
    """Await ``awaitable``; fail with ``what`` in the message if it takes too long."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None


async def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` between loop turns until it is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.005)


async def settle(iterations: int = 10, delay: float = 0.01) -> None:
    """Give the loop several turns, including real I/O polls.

    Used only before asserting that something did NOT happen; a slow machine
    can make such a check miss a bug, never fail a correct loop.
    """
    for _ in range(iterations):
        await asyncio.sleep(delay)


class Recorder(asyncio.Protocol):
    """Record every protocol callback; expose futures for the interesting ones."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, keep_open_on_eof: bool = False) -> None:
        self.loop = loop
        self.keep_open_on_eof = keep_open_on_eof
        self.transport: asyncio.Transport | None = None
        #: callback names in call order ("made", "data", "eof", "lost", ...)
        self.events: list[str] = []
        self.data = bytearray()
        self.made: asyncio.Future[asyncio.Transport] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.lost_calls = 0
        #: write buffer size seen inside each pause_writing / resume_writing
        self.pause_sizes: list[int] = []
        self.resume_sizes: list[int] = []
        self.resumed: asyncio.Future[None] = loop.create_future()
        self._wanted: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def tr(self) -> asyncio.Transport:
        """Return the transport, which must have been made."""
        assert self.transport is not None, "connection_made was not called"
        return self.transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.events.append("made")
        self.transport = cast(asyncio.Transport, transport)
        if not self.made.done():
            self.made.set_result(self.transport)

    def data_received(self, data: bytes) -> None:
        """Accumulate the bytes."""
        self.events.append("data")
        self.data += data
        self._wake()

    def eof_received(self) -> bool | None:
        """Note the EOF; keep the write side open if asked to."""
        self.events.append("eof")
        if not self.eof.done():
            self.eof.set_result(None)
        self._wake()
        return True if self.keep_open_on_eof else None

    def connection_lost(self, exc: Exception | None) -> None:
        """Count the calls; the first one resolves ``lost``."""
        self.events.append("lost")
        self.lost_calls += 1
        if not self.lost.done():
            self.lost.set_result(exc)
        self._wake()

    def pause_writing(self) -> None:
        """Record the buffer size at the moment of pausing."""
        self.events.append("pause_writing")
        self.pause_sizes.append(self.tr.get_write_buffer_size())

    def resume_writing(self) -> None:
        """Record the buffer size at the moment of resuming."""
        self.events.append("resume_writing")
        self.resume_sizes.append(self.tr.get_write_buffer_size())
        if not self.resumed.done():
            self.resumed.set_result(None)

    async def received(self, size: int, what: str = "") -> bytes:
        """Wait until at least ``size`` bytes have arrived; return them all."""
        if len(self.data) < size:
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._wanted.append((size, waiter))
            await wait(waiter, what or f"{size} bytes (have {len(self.data)})")
        return bytes(self.data)

    def _wake(self) -> None:
        finished = self.eof.done() or self.lost.done()
        for size, waiter in list(self._wanted):
            if waiter.done():
                self._wanted.remove((size, waiter))
            elif len(self.data) >= size:
                waiter.set_result(None)
                self._wanted.remove((size, waiter))
            elif finished:
                waiter.set_exception(
                    AssertionError(f"stream ended after {len(self.data)} of {size} expected bytes")
                )
                self._wanted.remove((size, waiter))


async def close_and_wait(*protocols: Recorder) -> None:
    """Abort every still-open transport and wait for its connection_lost."""
    for protocol in protocols:
        if protocol.transport is not None and not protocol.lost.done():
            protocol.transport.abort()
    for protocol in protocols:
        if protocol.transport is not None:
            await wait(asyncio.shield(protocol.lost), "connection_lost after abort()")


@dataclass
class Pair:
    """Both ends of one stream connection, plus the listening server."""

    server: asyncio.Server
    client: Recorder
    #: the server-side protocol of the first accepted connection
    peer: Recorder
    accepted: list[Recorder] = field(default_factory=list)


ServerFactory = Callable[[asyncio.AbstractEventLoop], Recorder]


@contextlib.asynccontextmanager
async def tcp_pair(
    loop: asyncio.AbstractEventLoop,
    *,
    host: str = "127.0.0.1",
    server_protocol: ServerFactory = Recorder,
    client_protocol: ServerFactory = Recorder,
    server_ssl: ssl.SSLContext | None = None,
    client_ssl: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> AsyncIterator[Pair]:
    """Connect a client to a fresh server on ``host``; clean both up afterwards."""
    accepted: list[Recorder] = []
    first: asyncio.Future[Recorder] = loop.create_future()

    def make_server_protocol() -> Recorder:
        protocol = server_protocol(loop)
        accepted.append(protocol)
        if not first.done():
            first.set_result(protocol)
        return protocol

    server = await loop.create_server(make_server_protocol, host, 0, ssl=server_ssl)
    client: Recorder | None = None
    try:
        port = server.sockets[0].getsockname()[1]
        _, connected = await wait(
            loop.create_connection(
                functools.partial(client_protocol, loop),
                host,
                port,
                ssl=client_ssl,
                server_hostname=server_hostname,
            ),
            "create_connection",
        )
        client = connected
        peer = await wait(first, "the server to create a protocol")
        await wait(asyncio.shield(peer.made), "server-side connection_made")
        yield Pair(server=server, client=connected, peer=peer, accepted=accepted)
    finally:
        server.close()
        await close_and_wait(*([client] if client else []), *accepted)
        await wait(server.wait_closed(), "Server.wait_closed()")


def fill_write_buffer(transport: asyncio.WriteTransport, chunk: int = 65536) -> int:
    """Write until the transport buffers data itself; return the bytes written.

    The peer must not be reading.  Writing is synchronous, so the kernel
    buffers fill within this call and the rest stays in the transport.
    """
    block = b"x" * chunk
    written = 0
    for _ in range(2048):  # bounded: at most 128 MiB with the default chunk
        if transport.get_write_buffer_size() > 0:
            return written
        transport.write(block)
        written += chunk
    raise AssertionError(f"write buffer stayed empty after {written} bytes to a paused peer")


@functools.cache
def ipv6_unavailable() -> str | None:
    """Return why ::1 cannot be used here, or None if it can."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        return f"cannot bind ::1 on this host: {exc}"
    return None


@contextlib.contextmanager
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Yield two connected non-blocking stream sockets, closed afterwards."""
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        right.setblocking(False)
        yield left, right


@contextlib.contextmanager
def short_tmpdir() -> Iterator[str]:
    """Yield a short temporary directory (Unix socket paths are limited to ~100 bytes)."""
    path = tempfile.mkdtemp(prefix="ps-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class TlsMaterial:
    """TLS contexts for a server and for clients that do or do not trust it."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    #: a client that trusts a different CA, so verification fails
    wrong_client: ssl.SSLContext
    hostname: str = "localhost"


@functools.cache
def tls_material() -> TlsMaterial:
    """Make certificates once per process with trustme (skip the test without it)."""
    # Only the TLS tests need trustme; the rest of the suite runs without it.
    trustme = pytest.importorskip("trustme", reason="the TLS tests make certificates with trustme")
    ca = trustme.CA()
    other_ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    wrong_client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    other_ca.configure_trust(wrong_client)
    return TlsMaterial(server=server, client=client, wrong_client=wrong_client)


def extra(transport: asyncio.BaseTransport, name: str) -> Any:
    """Return ``get_extra_info(name)``, failing clearly when it is absent."""
    missing = object()
    value = transport.get_extra_info(name, missing)
    assert value is not missing, f"get_extra_info({name!r}) is not provided"
    return value


class Datagrams(asyncio.DatagramProtocol):
    """Record datagrams and errors of one datagram endpoint."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.DatagramTransport | None = None
        self.datagrams: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()
        self.lost: asyncio.Future[Exception | None] = loop.create_future()
        self.lost_calls = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Queue the datagram with its sender."""
        self.datagrams.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        """Queue the error."""
        self.errors.put_nowait(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """Count the calls; the first one resolves ``lost``."""
        self.lost_calls += 1
        if not self.lost.done():
            self.lost.set_result(exc)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
