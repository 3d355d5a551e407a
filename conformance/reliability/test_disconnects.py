"""Abrupt disconnects: a peer resets the connection (SO_LINGER 0) at the worst moment.

In the middle of a request body, of a response, of a TLS handshake and of a
WebSocket frame.  Each case is repeated; every server connection must see
``connection_lost`` exactly once, with the error; handlers must end; no
descriptor may stay open; nothing may be logged with a traceback (the
plugin fails the test on any call of the loop's exception handler).
"""

from __future__ import annotations

import asyncio
import functools
import ssl

import pytest
from wsproto import events as wsevents

from protoshim.conformance._helpers import Recorder, settle, tls_material, wait, wait_until
from protoshim.conformance.http._support import Client, WebSocketClient, request
from protoshim.conformance.plugin import RunCoroutine
from protoshim.conformance.reliability._servers import (
    App,
    Watched,
    Watching,
    no_tracebacks,
    watching,
)
from protoshim.conformance.reliability._support import fd_count, fds_left_open, need_proc, reset

from .conftest import Figure

pytestmark = [pytest.mark.slow, pytest.mark.requires("tcp")]

#: resets per case: enough for a leak of one descriptor a time to show
REPEAT = 20


async def _client(loop: asyncio.AbstractEventLoop, port: int, kind: type[Recorder]) -> Recorder:
    _, client = await wait(
        loop.create_connection(functools.partial(kind, loop), "127.0.0.1", port),
        "create_connection",
    )
    return client


async def _mid_request(loop: asyncio.AbstractEventLoop, served: Watching, app: App) -> None:
    client = await _client(loop, served.port, Client)
    seen = app.body_bytes
    client.tr.write(request("POST", "/upload", [("Content-Length", "1000000")]) + b"x" * 50_000)
    await wait_until(lambda: app.body_bytes > seen, "the handler to read part of the body")
    reset(client.tr)


async def _mid_response(loop: asyncio.AbstractEventLoop, served: Watching, app: App) -> None:
    client = await _client(loop, served.port, Client)
    client.tr.write(request("GET", "/big?n=1024"))  # 64 MiB
    await client.received(200_000, "the first part of the response")
    reset(client.tr)


async def _mid_websocket_frame(loop: asyncio.AbstractEventLoop, served: Watching, app: App) -> None:
    client = await _client(loop, served.port, WebSocketClient)  # type: ignore[arg-type]
    assert isinstance(client, WebSocketClient)
    client.send(wsevents.Request(host="test", target="/ws"))
    assert isinstance(await client.next_event(), wsevents.AcceptConnection)
    frame = client.ws.send(wsevents.BytesMessage(data=b"y" * 4000))
    count = len(app.ws_messages)
    client.send_raw(client.ws.send(wsevents.TextMessage(data="whole")))
    await wait_until(lambda: len(app.ws_messages) > count, "the first message to arrive")
    client.send_raw(frame[: len(frame) // 2])
    await settle(3)  # let the server read the half frame before the reset
    assert client.transport is not None
    reset(client.transport)


def _client_hello() -> bytes:
    """Return a real TLS ClientHello, produced with memory BIOs."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


async def _mid_tls_handshake(loop: asyncio.AbstractEventLoop, served: Watching, app: App) -> None:
    client = await _client(loop, served.port, Recorder)
    hello = _client_hello()
    client.tr.write(hello[: len(hello) // 2])
    await settle(3)
    reset(client.tr)


CASES = {
    "request": _mid_request,
    "response": _mid_response,
    "tls-handshake": _mid_tls_handshake,
    "websocket-frame": _mid_websocket_frame,
}


@pytest.mark.parametrize("moment", list(CASES))
def test_reset_is_reported_once_and_leaks_nothing(
    loop: asyncio.AbstractEventLoop,
    run: RunCoroutine,
    caplog: pytest.LogCaptureFixture,
    figure: Figure,
    moment: str,
) -> None:
    need_proc()
    app = App()
    options = {"ssl": tls_material().server} if moment == "tls-handshake" else {}

    async def main() -> tuple[int, list[Watched]]:
        async with watching(loop, lambda: Watched(app), **options) as served:
            fds_before = fd_count()
            for _ in range(REPEAT):
                await CASES[moment](loop, served, app)
            await wait_until(lambda: len(served.protocols) == REPEAT, "every connection accepted")
            await served.all_closed()
            # Handshakes that never finish leave no callback to wait for.
            return await fds_left_open(fds_before), list(served.protocols)

    leaked, protocols = run(main(), timeout=30)
    figure("resets", REPEAT)
    figure("descriptors left open", leaked, headline=True)
    assert leaked <= 0
    if moment == "tls-handshake":
        # The handshake never finished: the application protocol is never
        # made, so never lost either (the grammar starts at connection_made).
        assert [(p.made, p.lost_calls) for p in protocols] == [(0, [])] * REPEAT
    else:
        assert all(p.made == 1 for p in protocols)
        assert all(len(p.lost_calls) == 1 for p in protocols), [p.lost_calls for p in protocols]
        errors = [p.lost_calls[0] for p in protocols]
        assert all(isinstance(e, OSError) for e in errors), errors
        figure("errors", ", ".join(sorted({type(e).__name__ for e in errors})))
    if moment == "request":
        assert app.calls == REPEAT and app.finished == 0
        assert all(isinstance(e, ConnectionError) for e in app.failed), app.failed
    if moment == "response":
        assert app.calls == REPEAT and app.finished == 0
    if moment == "websocket-frame":
        assert app.ws_handlers_done == REPEAT
        assert app.ws_messages == ["whole"] * REPEAT
    no_tracebacks(caplog)
