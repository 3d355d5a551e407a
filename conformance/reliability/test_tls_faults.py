"""TLS faults: plaintext to a TLS port, bad certificates, handshakes that stop halfway.

Each fault must end in a clean error on both sides: the client gets an
exception that says what went wrong (or sees the connection closed), the
server drops the connection without an application callback, a logged
traceback or a call of the loop's exception handler, and then keeps
serving: a good TLS request right afterwards is answered.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest

from protoshim.conformance._helpers import Recorder, wait, wait_until
from protoshim.conformance.http._support import Client, request
from protoshim.conformance.plugin import RunCoroutine
from protoshim.conformance.reliability._servers import App, Watched, no_tracebacks, watching
from protoshim.conformance.reliability._support import fd_count, fds_left_open, need_proc

from .conftest import Figure

pytestmark = [pytest.mark.slow, pytest.mark.requires("tcp", "tls")]

#: the server's (and the stalled client's) handshake timeout
HANDSHAKE_TIMEOUT = 1.0
GOOD_HOST = "localhost"


@dataclass(frozen=True)
class Certificates:
    """Server contexts (a valid and an expired certificate) and client contexts."""

    server: ssl.SSLContext
    expired_server: ssl.SSLContext
    client: ssl.SSLContext
    #: checks nothing: shows that the server with the expired certificate still serves
    unverifying_client: ssl.SSLContext


@functools.cache
def certificates() -> Certificates:
    """Issue the certificates once per process with trustme."""
    trustme = pytest.importorskip("trustme", reason="the TLS tests make certificates with trustme")
    ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(GOOD_HOST, "127.0.0.1").configure_cert(server)
    expired = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(
        GOOD_HOST,
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    ).configure_cert(expired)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    unverifying = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    unverifying.check_hostname = False
    unverifying.verify_mode = ssl.CERT_NONE
    return Certificates(server, expired, client, unverifying)


def _client_hello() -> bytes:
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=GOOD_HOST)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


async def _raw(loop: asyncio.AbstractEventLoop, port: int, data: bytes) -> str:
    """Send ``data`` on a plain connection; return how the server ended it."""
    _, client = await wait(
        loop.create_connection(functools.partial(Recorder, loop), "127.0.0.1", port),
        "create_connection",
    )
    assert isinstance(client, Recorder)
    client.tr.write(data)
    await wait_until(
        lambda: client.eof.done() or client.lost.done(),
        "the server to drop the connection",
        timeout=HANDSHAKE_TIMEOUT + 5,
    )
    assert not bytes(client.data).startswith(b"HTTP/"), "the server answered in plaintext"
    client.tr.abort()
    exc = await wait(asyncio.shield(client.lost), "the client to close")
    return "closed" if client.eof.done() else f"closed: {type(exc).__name__}"


async def _tls_client(
    loop: asyncio.AbstractEventLoop, port: int, server_hostname: str
) -> BaseException:
    """Connect with TLS; return the error the handshake ends with."""
    try:
        transport, _ = await wait(
            loop.create_connection(
                asyncio.Protocol,
                "127.0.0.1",
                port,
                ssl=certificates().client,
                server_hostname=server_hostname,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            ),
            "the handshake to fail",
            timeout=HANDSHAKE_TIMEOUT + 5,
        )
    except (OSError, TimeoutError) as exc:
        return exc
    transport.close()
    raise AssertionError(f"the handshake with server_hostname={server_hostname!r} succeeded")


async def plaintext(loop: asyncio.AbstractEventLoop, port: int) -> str:
    """Speak HTTP to the TLS port."""
    return await _raw(loop, port, request("GET", "/"))


async def client_stalls(loop: asyncio.AbstractEventLoop, port: int) -> str:
    """Send half a ClientHello and nothing more: the server's handshake timeout ends it."""
    hello = _client_hello()
    return await _raw(loop, port, hello[: len(hello) // 2])


async def expired_certificate(loop: asyncio.AbstractEventLoop, port: int) -> str:
    """Connect to a server whose certificate has expired."""
    exc = await _tls_client(loop, port, GOOD_HOST)
    assert isinstance(exc, ssl.SSLCertVerificationError), repr(exc)
    assert "expired" in exc.verify_message, exc.verify_message
    return str(exc.verify_message)


async def wrong_host(loop: asyncio.AbstractEventLoop, port: int) -> str:
    """Expect a name the server's certificate does not carry."""
    exc = await _tls_client(loop, port, "wrong.test")
    assert isinstance(exc, ssl.SSLCertVerificationError), repr(exc)
    assert "mismatch" in exc.verify_message.lower(), exc.verify_message
    return str(exc.verify_message.split(",")[0])


async def server_stalls(loop: asyncio.AbstractEventLoop, port: int) -> str:
    """A TLS client against a server that accepts and never answers: its timeout ends it."""
    silent: list[Recorder] = []

    def factory() -> Recorder:
        silent.append(Recorder(loop))
        return silent[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        exc = await _tls_client(loop, server.sockets[0].getsockname()[1], GOOD_HOST)
    finally:
        server.close()
        for protocol in silent:
            if protocol.transport is not None:
                protocol.transport.abort()
                await wait(asyncio.shield(protocol.lost), "the silent server's connection")
        await wait(server.wait_closed(), "Server.wait_closed()")
    assert isinstance(exc, ConnectionError | TimeoutError), repr(exc)
    return type(exc).__name__


Fault = Callable[[asyncio.AbstractEventLoop, int], Coroutine[Any, Any, str]]
FAULTS: dict[str, Fault] = {
    "plaintext": plaintext,
    "expired-certificate": expired_certificate,
    "wrong-host": wrong_host,
    "client-stalls-mid-handshake": client_stalls,
    "server-stalls-mid-handshake": server_stalls,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_tls_fault_is_a_clean_error_and_the_server_keeps_serving(
    loop: asyncio.AbstractEventLoop,
    run: RunCoroutine,
    caplog: pytest.LogCaptureFixture,
    figure: Figure,
    fault: str,
) -> None:
    need_proc()
    app = App()
    tls = certificates()
    expired = fault == "expired-certificate"
    # Afterwards a good client must be served; a server whose certificate
    # has expired is asked by a client that checks nothing.
    server_context = tls.expired_server if expired else tls.server
    good_context = tls.unverifying_client if expired else tls.client

    async def main() -> tuple[str, int, list[Watched], int]:
        async with watching(
            loop,
            lambda: Watched(app),
            ssl=server_context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
        ) as served:
            before = fd_count()
            outcome = await FAULTS[fault](loop, served.port)
            _, good = await wait(
                loop.create_connection(
                    functools.partial(Client, loop),
                    "127.0.0.1",
                    served.port,
                    ssl=good_context,
                    server_hostname=GOOD_HOST,
                ),
                "a good TLS client",
            )
            assert isinstance(good, Client)
            good.send(request("GET", "/"))
            status = (await good.response()).status
            good.tr.close()
            await wait(asyncio.shield(good.lost), "the good client to close")
            await served.all_closed()
            return outcome, status, list(served.protocols), await fds_left_open(before)

    outcome, status, protocols, leaked = run(main(), timeout=30)
    figure("client saw", outcome, headline=True)
    figure("descriptors left open", leaked)
    assert status == 200
    assert leaked <= 0
    # Only the good connection reached the application, once made and once lost.
    made = [p for p in protocols if p.made]
    assert [(p.made, len(p.lost_calls)) for p in made] == [(1, 1)]
    assert app.calls == 1
    no_tracebacks(caplog)
