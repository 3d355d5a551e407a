"""WebSocket over the HTTP protocol: handshake, echo, ping, fragments, close codes, limits,
permessage-deflate."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

import pytest
from wsproto import events as ws
from wsproto.extensions import PerMessageDeflate

from protoshim.conformance.http._support import (
    Environ,
    Served,
    StartResponse,
    request,
    serving,
    small_config,
    websocket,
)
from protoshim.conformance.plugin import RunCoroutine
from protoshim.protocols.http import WebSocket, WebSocketHandler, http_server

pytestmark = pytest.mark.requires("tcp")


async def echo(socket: WebSocket) -> None:
    async for message in socket:
        await socket.send(message)


def serve_ws(
    loop: asyncio.AbstractEventLoop, handler: WebSocketHandler = echo, **config: Any
) -> contextlib.AbstractAsyncContextManager[Served]:
    return serving(loop, http_server(websockets={"/ws": handler}, config=small_config(**config)))


def test_text_and_binary_messages_are_echoed(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with serve_ws(loop) as served:
            client = await websocket(served)
            client.send(ws.TextMessage(data="héllo"))
            assert await client.message() == "héllo"
            client.send(ws.BytesMessage(data=b"\x00\xff"))
            assert await client.message() == b"\x00\xff"
            client.send(ws.TextMessage(data=""))
            assert await client.message() == ""

    run(main())


def test_ping_is_answered_with_the_same_payload(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with serve_ws(loop) as served:
            client = await websocket(served)
            client.send(ws.Ping(payload=b"are you there"))
            event = await client.next_event()
            assert isinstance(event, ws.Pong)
            assert event.payload == b"are you there"

    run(main())


def test_fragmented_message_arrives_whole(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    received: list[str | bytes] = []

    async def record(socket: WebSocket) -> None:
        async for message in socket:
            received.append(message)
            await socket.send(message)

    async def main() -> None:
        async with serve_ws(loop, record) as served:
            client = await websocket(served)
            client.send(ws.TextMessage(data="frag", message_finished=False))
            client.send(ws.Ping(payload=b"between"))  # control frames may interleave
            client.send(ws.TextMessage(data="ment", message_finished=False))
            client.send(ws.TextMessage(data="ed", message_finished=True))
            assert await client.message() == "fragmented"

    run(main())
    assert received == ["fragmented"]


def test_client_close_is_answered_with_its_code(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with serve_ws(loop) as served:
            client = await websocket(served)
            client.send(ws.CloseConnection(code=4321, reason="bye"))
            assert await client.close_code() == 4321
            await asyncio.wait_for(asyncio.shield(client.lost), 5)

    run(main())


def test_handler_close_code_reaches_the_client(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def goodbye(socket: WebSocket) -> None:
        await socket.send("first")
        await socket.close(4000, "done")

    async def main() -> None:
        async with serve_ws(loop, goodbye) as served:
            client = await websocket(served)
            assert await client.message() == "first"
            assert await client.close_code() == 4000
            await asyncio.wait_for(asyncio.shield(client.lost), 5)

    run(main())


def test_returning_handler_closes_normally(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def once(socket: WebSocket) -> None:
        await socket.send(await socket.receive())

    async def main() -> None:
        async with serve_ws(loop, once) as served:
            client = await websocket(served)
            client.send(ws.TextMessage(data="x"))
            assert await client.message() == "x"
            assert await client.close_code() == 1000

    run(main())


def test_failing_handler_closes_with_1011(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def broken(socket: WebSocket) -> None:
        await socket.receive()
        raise RuntimeError("handler bug")

    async def main() -> None:
        async with serve_ws(loop, broken) as served:
            client = await websocket(served)
            client.send(ws.TextMessage(data="x"))
            assert await client.close_code() == 1011

    run(main())


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragments"])
def test_oversized_message_closes_with_1009(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, fragmented: bool
) -> None:
    received: list[str | bytes] = []

    async def record(socket: WebSocket) -> None:
        async for message in socket:
            received.append(message)

    async def main() -> None:
        async with serve_ws(loop, record, websocket_max_message_size=1024) as served:
            client = await websocket(served)
            client.send(ws.BytesMessage(data=b"x" * 1024))  # exactly the limit: fine
            if fragmented:
                for _ in range(3):
                    client.send(ws.BytesMessage(data=b"y" * 400, message_finished=False))
                client.send(ws.BytesMessage(data=b"", message_finished=True))
            else:
                client.send(ws.BytesMessage(data=b"y" * 1025))
            assert await client.close_code() == 1009

    run(main())
    assert received == [b"x" * 1024]


def test_unmasked_client_frame_is_a_protocol_error(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with serve_ws(loop) as served:
            client = await websocket(served)
            client.send_raw(b"\x81\x02hi")  # FIN + text, no mask bit
            assert await client.close_code() == 1002

    run(main())


def test_invalid_utf8_text_closes_with_1007(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with serve_ws(loop) as served:
            client = await websocket(served)
            payload = b"\xff\xfe"
            mask = b"\x01\x02\x03\x04"
            masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
            client.send_raw(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)
            assert await client.close_code() == 1007

    run(main())


KEY = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
UPGRADE = [("Upgrade", "websocket"), ("Connection", "Upgrade")]

BAD_HANDSHAKES = [
    ("no-upgrade-at-all", request("GET", "/ws"), 426),
    ("missing-key", request("GET", "/ws", [*UPGRADE, ("Sec-WebSocket-Version", "13")]), 400),
    ("wrong-version", request("GET", "/ws", [*UPGRADE, KEY, ("Sec-WebSocket-Version", "8")]), 426),
    ("missing-version", request("GET", "/ws", [*UPGRADE, KEY]), 400),
    (
        "no-connection-upgrade",
        request("GET", "/ws", [("Upgrade", "websocket"), KEY, ("Sec-WebSocket-Version", "13")]),
        400,
    ),
    ("post", request("POST", "/ws", [*UPGRADE, KEY, ("Sec-WebSocket-Version", "13")]), 400),
    (
        "with-a-body",
        request(
            "GET",
            "/ws",
            [*UPGRADE, KEY, ("Sec-WebSocket-Version", "13"), ("Content-Length", "2")],
            b"hi",
        ),
        400,
    ),
]


@pytest.mark.parametrize(
    ("data", "status"),
    [case[1:] for case in BAD_HANDSHAKES],
    ids=[case[0] for case in BAD_HANDSHAKES],
)
def test_bad_handshake_is_refused(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, data: bytes, status: int
) -> None:
    calls: list[WebSocket] = []

    async def handler(socket: WebSocket) -> None:
        calls.append(socket)

    async def main() -> None:
        async with serve_ws(loop, handler) as served:
            response = await served.exchange(data)
            assert response.status == status
            if status == 426:
                assert (
                    response.header("upgrade") == "websocket"
                    or response.header("sec-websocket-version") == "13"
                )

    run(main())
    assert calls == []


def test_websocket_and_http_share_a_server(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"plain http"]

    async def main() -> None:
        factory = http_server(wsgi_app=app, websockets={"/ws": echo}, config=small_config())
        async with serving(loop, factory) as served:
            client = await websocket(served)
            assert (await served.exchange(request("GET", "/other"))).body == b"plain http"
            client.send(ws.TextMessage(data="still here"))
            assert await client.message() == "still here"

    run(main())


def server_frames(data: bytes) -> list[tuple[bool, int, int]]:
    """Split unmasked (server) frames into (RSV1 set, opcode, payload length)."""
    frames = []
    while data:
        length = data[1] & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        frames.append((bool(data[0] & 0x40), data[0] & 0x0F, length))
        data = data[offset + length :]
    return frames


def test_permessage_deflate_round_trip(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    text = "compress me, " * 1000
    binary = bytes(range(256)) * 64

    async def main() -> None:
        async with serve_ws(loop) as served:
            client = await websocket(served, extensions=[PerMessageDeflate()])
            assert client.response_header("sec-websocket-extensions") == (
                "permessage-deflate; client_max_window_bits=15; server_max_window_bits=15"
            )
            client.send(ws.TextMessage(data=text))  # the client compresses too
            assert await client.message() == text
            client.send(ws.BytesMessage(data=binary))
            assert await client.message() == binary
            frames = server_frames(client.frames_after_handshake())
            assert [(rsv1, opcode) for rsv1, opcode, _ in frames] == [(True, 0x1), (True, 0x2)]
            assert all(length < 1000 for _, _, length in frames)

    run(main())


def test_permessage_deflate_follows_the_client_parameters(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    offer = PerMessageDeflate(
        client_no_context_takeover=True,
        client_max_window_bits=9,
        server_no_context_takeover=True,
        server_max_window_bits=10,
    )
    text = "the same words again and again; " * 50

    async def main() -> None:
        async with serve_ws(loop) as served:
            client = await websocket(served, extensions=[offer])
            assert client.response_header("sec-websocket-extensions") == (
                "permessage-deflate; client_no_context_takeover; server_no_context_takeover; "
                "client_max_window_bits=9; server_max_window_bits=10"
            )
            for _ in range(3):
                client.send(ws.TextMessage(data=text))
                assert await client.message() == text
            lengths = [length for _, _, length in server_frames(client.frames_after_handshake())]
            # No context takeover: a repeated message is never a back-reference
            # to the previous one, so every copy compresses to the same size.
            assert len(set(lengths)) == 1

    run(main())


@pytest.mark.parametrize(
    ("offer", "compression"), [(False, True), (True, False)], ids=["not-offered", "disabled"]
)
def test_no_compression_unless_offered_and_enabled(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, offer: bool, compression: bool
) -> None:
    greeting = "hello " * 100

    async def greet_then_echo(socket: WebSocket) -> None:
        await socket.send(greeting)  # before anything was read from the client
        await echo(socket)

    async def main() -> None:
        async with serve_ws(loop, greet_then_echo, websocket_compression=compression) as served:
            client = await websocket(served, extensions=[PerMessageDeflate()] if offer else [])
            assert await client.message() == greeting
            client.send(ws.TextMessage(data="plain"))
            assert await client.message() == "plain"
            assert client.response_header("sec-websocket-extensions") is None
            frames = server_frames(client.frames_after_handshake())
            assert frames == [(False, 0x1, len(greeting)), (False, 0x1, 5)]

    run(main())


def test_compressed_message_is_limited_by_its_inflated_size(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    received: list[str | bytes] = []

    async def record(socket: WebSocket) -> None:
        async for message in socket:
            received.append(message)

    async def main() -> None:
        async with serve_ws(loop, record, websocket_max_message_size=64 * 1024) as served:
            client = await websocket(served, extensions=[PerMessageDeflate()])
            assert client.response_header("sec-websocket-extensions") is not None
            client.send(ws.BytesMessage(data=bytes(64 * 1024)))  # exactly the limit: fine
            # 16 MiB of zeros deflate to about 16 KiB: far below the limit on
            # the wire, 256 times over it inflated.
            client.send(ws.BytesMessage(data=bytes(16 * 1024 * 1024)))
            assert await client.close_code() == 1009

    run(main())
    assert received == [bytes(64 * 1024)]
