"""ASGI 3.0 over the HTTP protocol: scopes, events, extensions, lifespan and app errors.

Each test is a small ASGI application written against the specification
(https://asgi.readthedocs.io), served on the loop under test and driven by
the raw clients of ``_support``, so what is checked is the bytes on the wire
and the messages the application saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from wsproto import events as ws

from protoshim.conformance._helpers import wait_until
from protoshim.conformance.http._support import (
    request,
    serving,
    small_config,
    websocket,
)
from protoshim.conformance.http.test_backpressure import (
    CHUNK,
    PATTERN,
    TOTAL,
    check_producer_is_held,
)
from protoshim.conformance.plugin import RunCoroutine
from protoshim.protocols.http import Lifespan, LifespanFailed, asgi_server

pytestmark = pytest.mark.requires("tcp")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

TEXT = [(b"content-type", b"text/plain")]


def serve(loop: asyncio.AbstractEventLoop, app: App, **kwargs: Any) -> Any:
    config = kwargs.pop("config", None) or small_config()
    return serving(loop, asgi_server(app, config=config, **kwargs))


async def respond(send: Send, status: int = 200, body: bytes = b"ok") -> None:
    await send({"type": "http.response.start", "status": status, "headers": TEXT})
    await send({"type": "http.response.body", "body": body})


def test_http_scope_describes_the_request(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        if len(scopes) == 1:
            scope["state"]["seen"] = True  # a copy: the next request must not see it
        await respond(send)

    async def main() -> None:
        async with serve(loop, app, root_path="/mount") as served:
            data = request("GET", "/caf%C3%A9/a%20b?x=1&y=%20", [("X-Multi", "a")])
            client = await served.connect()
            client.send(data + request("GET", "/second"))
            assert (await client.response()).status == 200
            assert (await client.response()).status == 200
            first, second = scopes
            assert first["type"] == "http"
            assert first["asgi"]["version"] == "3.0"
            assert first["http_version"] == "1.1"
            assert first["method"] == "GET"
            assert first["scheme"] == "http"
            assert first["path"] == "/mount/café/a b"
            assert first["raw_path"] == b"/mount/caf%C3%A9/a%20b"
            assert first["query_string"] == b"x=1&y=%20"
            assert first["root_path"] == "/mount"
            assert (b"host", b"test") in first["headers"]
            assert (b"x-multi", b"a") in first["headers"]
            assert all(name == name.lower() for name, _ in first["headers"])
            assert first["client"][0] == "127.0.0.1"
            assert first["client"][1] == client.tr.get_extra_info("sockname")[1]
            assert first["server"] == ("127.0.0.1", served.port)
            assert "seen" not in second["state"]
            assert "http.response.pathsend" in first["extensions"]

    run(main())


def test_http_10_request_is_reported_as_10(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    versions: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        versions.append(scope["http_version"])
        await respond(send)

    async def main() -> None:
        async with serve(loop, app) as served:
            response = await served.exchange(b"GET / HTTP/1.0\r\n\r\n")
            assert response.status == 200
            assert versions == ["1.0"]

    run(main())


def test_body_arrives_in_messages_until_more_body_is_false(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    messages: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            messages.append(message)
            if not message.get("more_body"):
                break
        await respond(send, body=b"".join(m["body"] for m in messages))

    async def main() -> None:
        async with serve(loop, app) as served:
            client = await served.connect()
            client.send(request("POST", "/", [("Transfer-Encoding", "chunked")]))
            client.send(b"5\r\nhello\r\n")
            await wait_until(lambda: len(messages) == 1, "the first body message")
            client.send(b"6\r\n world\r\n0\r\n\r\n")
            response = await client.response()
            assert response.body == b"hello world"
            assert [m["type"] for m in messages] == ["http.request"] * len(messages)
            assert messages[0] == {"type": "http.request", "body": b"hello", "more_body": True}
            assert messages[-1]["more_body"] is False

    run(main())


def test_request_without_body_is_one_message(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    messages: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        messages.append(await receive())
        await respond(send)

    async def main() -> None:
        async with serve(loop, app) as served:
            assert (await served.exchange(request())).status == 200
            assert (
                await served.exchange(request("POST", "/", [("Content-Length", "3")], b"abc"))
            ).status == 200
            assert messages == [
                {"type": "http.request", "body": b"", "more_body": False},
                {"type": "http.request", "body": b"abc", "more_body": False},
            ]

    run(main())


def test_unread_body_stops_reading_until_the_app_reads(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    config = small_config(body_buffer_size=CHUNK)
    go = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await go.wait()
        digest = hashlib.sha256()
        while True:
            message = await receive()
            digest.update(message["body"])
            if not message["more_body"]:
                break
        await respond(send, body=digest.hexdigest().encode())

    async def main() -> None:
        async with serve(loop, app, config=config) as served:
            client = await served.connect()
            client.send(request("POST", "/", [("Content-Length", str(TOTAL))]))
            for _ in range(TOTAL // CHUNK):
                client.send(PATTERN)
            protocol = await served.server_protocol()
            transport = protocol.transport
            assert transport is not None
            await wait_until(lambda: not transport.is_reading(), "the server to stop reading")
            assert client.tr.get_write_buffer_size() > 0  # the client is held back
            go.set()
            response = await client.response()
            expected = hashlib.sha256(PATTERN * (TOTAL // CHUNK)).hexdigest()
            assert response.body.decode() == expected

    run(main(), timeout=30)


def test_receive_after_the_body_waits_for_disconnect(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        seen.append(await receive())

    async def main() -> None:
        async with serve(loop, app) as served:
            client = await served.connect()
            client.send(request())
            await client.received(len(b"partial"), "the first body bytes")
            await asyncio.sleep(0.05)
            assert seen == []  # still connected: receive() waits
            client.tr.close()
            await wait_until(lambda: seen == [{"type": "http.disconnect"}], "http.disconnect")

    run(main())


def test_two_tasks_waiting_for_disconnect_both_wake(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        listeners = [asyncio.ensure_future(receive()) for _ in range(2)]
        await asyncio.sleep(0)
        await respond(send)
        seen.extend(await asyncio.gather(*listeners))

    async def main() -> None:
        async with serve(loop, app) as served:
            assert (await served.exchange(request())).status == 200
            await wait_until(lambda: len(seen) == 2, "both listeners to wake")
            assert seen == [{"type": "http.disconnect"}] * 2

    run(main())


def test_receive_after_the_response_is_disconnect(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await respond(send)
        seen.append(await receive())

    async def main() -> None:
        async with serve(loop, app) as served:
            assert (await served.exchange(request())).status == 200
            await wait_until(lambda: bool(seen), "the app's last receive")
            assert seen == [{"type": "http.disconnect"}]

    run(main())


def test_send_after_disconnect_raises_oserror(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    errors: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        assert (await receive())["type"] == "http.request"
        assert (await receive())["type"] == "http.disconnect"
        try:
            # The first writes may still reach the kernel; a reset ends it.
            for _ in range(1000):
                await send({"type": "http.response.body", "body": b"y", "more_body": True})
                await asyncio.sleep(0.01)
        except OSError as exc:
            errors.append(exc)

    async def main() -> None:
        async with serve(loop, app) as served:
            client = await served.connect()
            client.send(request())
            await client.received(1, "the first body byte")
            client.tr.close()
            await wait_until(lambda: bool(errors), "send() to raise")

    run(main())


def test_streamed_response_is_chunked(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body"})

    async def main() -> None:
        async with serve(loop, app) as served:
            response = await served.exchange(request())
            assert response.header("transfer-encoding") == "chunked"
            assert response.body == b"one two three"

    run(main())


def test_one_message_response_is_framed_by_length(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, body=b"whole")

    async def main() -> None:
        async with serve(loop, app) as served:
            response = await served.exchange(request())
            assert response.header("content-length") == "5"
            assert response.header("transfer-encoding") is None
            assert response.body == b"whole"
            head = await served.exchange(request("HEAD"), method="HEAD")
            assert head.header("content-length") is None  # the GET body is not known

    run(main())


def test_streamed_response_waits_for_a_slow_reader(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    produced = [0]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-length", str(TOTAL).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(TOTAL // CHUNK):
            produced[0] += CHUNK
            await send({"type": "http.response.body", "body": PATTERN, "more_body": True})
        await send({"type": "http.response.body"})

    async def main() -> None:
        async with serve(loop, app) as served:
            await check_producer_is_held(served, lambda: produced[0])

    run(main(), timeout=30)


@pytest.mark.requires("threads")
def test_pathsend_sends_the_file(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(PATTERN * 3 + b"tail")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert "http.response.pathsend" in scope["extensions"]
        size = str(path.stat().st_size).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", size)]}
        )
        await send({"type": "http.response.pathsend", "path": str(path)})

    async def main() -> None:
        config = small_config(file_chunk_size=CHUNK)
        async with serve(loop, app, config=config) as served:
            response = await served.exchange(request())
            assert response.body == path.read_bytes()

    run(main())


# -- application errors ---------------------------------------------------


def test_app_raising_before_responding_gets_500_and_is_logged(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/fail":
            raise ValueError("boom")
        if scope["path"] == "/half":
            await send({"type": "http.response.start", "status": 200, "headers": TEXT})
            raise ValueError("boom after start")
        await respond(send)

    async def main() -> None:
        async with serve(loop, app) as served:
            assert (await served.exchange(request(target="/fail"))).status == 500
            # the head waits for the body, so a failure in between is still a 500
            assert (await served.exchange(request(target="/half"))).status == 500
            assert (await served.exchange(request())).status == 200  # the server goes on

    with caplog.at_level(logging.ERROR, logger="protoshim.http"):
        run(main())
    tracebacks = [r for r in caplog.records if r.exc_info and "boom" in str(r.exc_info[1])]
    assert len(tracebacks) == 2


def test_app_raising_mid_response_closes_the_connection(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom mid-response")

    async def main() -> None:
        async with serve(loop, app) as served:
            client = await served.connect()
            client.send(request())
            rest = await client.everything()
            assert b"partial" in rest
            assert not rest.endswith(b"0\r\n\r\n")  # never a complete chunked body

    with caplog.at_level(logging.ERROR, logger="protoshim.http"):
        run(main())
    assert any(r.exc_info and "mid-response" in str(r.exc_info[1]) for r in caplog.records)


def test_app_returning_without_responding_gets_500(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        return

    async def main() -> None:
        async with serve(loop, app) as served:
            assert (await served.exchange(request())).status == 500

    with caplog.at_level(logging.ERROR, logger="protoshim.http"):
        run(main())
    assert any("without responding" in r.getMessage() for r in caplog.records)


def test_app_returning_mid_response_closes_the_connection(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": TEXT})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})

    async def main() -> None:
        async with serve(loop, app) as served:
            client = await served.connect()
            client.send(request() + request())
            rest = await client.everything()
            assert rest.count(b"HTTP/1.1") == 1  # the second request is never answered

    run(main())


def test_oversized_body_is_refused_with_413(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect" or not message["more_body"]:
                return

    async def main() -> None:
        config = small_config(max_body_size=10)
        async with serve(loop, app, config=config) as served:
            client = await served.connect()
            client.send(
                request("POST", "/", [("Transfer-Encoding", "chunked")]) + b"5\r\nhello\r\n"
            )
            await wait_until(lambda: bool(seen), "the first body message")
            client.send(b"20\r\n" + b"x" * 32 + b"\r\n0\r\n\r\n")
            response = await client.response()
            assert response.status == 413
            assert seen[-1] == {"type": "http.disconnect"}

    run(main())


# -- WebSocket ------------------------------------------------------------


async def ws_echo(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    offered = scope["subprotocols"]
    await send(
        {
            "type": "websocket.accept",
            "subprotocol": offered[-1] if offered else None,
            "headers": [(b"x-accepted", b"yes")],
        }
    )
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "close please":
            await send({"type": "websocket.close", "code": 4001, "reason": "asked"})
            return
        if message.get("text") == "fail":
            raise RuntimeError("the app failed")
        reply = {k: v for k, v in message.items() if k in ("text", "bytes") and v is not None}
        await send({"type": "websocket.send", **reply})


def test_websocket_scope_accept_and_echo(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await ws_echo(scope, receive, send)

    async def main() -> None:
        async with serve(loop, app) as served:
            client = await websocket(served, subprotocols=["one", "two"])
            accepted = client.accepted
            assert accepted is not None
            assert accepted.subprotocol == "two"
            assert (b"x-accepted", b"yes") in accepted.extra_headers
            client.send(ws.TextMessage(data="héllo"))
            assert await client.message() == "héllo"
            client.send(ws.BytesMessage(data=b"\x00\xff"))
            assert await client.message() == b"\x00\xff"
            scope = scopes[0]
            assert scope["scheme"] == "ws"
            assert scope["path"] == "/ws"
            assert scope["subprotocols"] == ["one", "two"]
            assert "method" not in scope
            assert "websocket.http.response" in scope["extensions"]

    run(main())


def test_websocket_close_codes_travel_both_ways(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    disconnects: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] != "websocket.disconnect":
            if message.get("text") == "close please":
                await send({"type": "websocket.close", "code": 4001, "reason": "asked"})
        disconnects.append(message)

    async def main() -> None:
        async with serve(loop, app) as served:
            first = await websocket(served)
            first.send(ws.TextMessage(data="close please"))
            assert await first.close_code() == 4001
            second = await websocket(served)
            second.send(ws.CloseConnection(code=4002, reason="bye"))
            await wait_until(lambda: len(disconnects) == 2, "websocket.disconnect")
            assert disconnects[0]["code"] == 4001
            assert disconnects[1] == {"type": "websocket.disconnect", "code": 4002, "reason": "bye"}

    run(main())


def test_websocket_app_failure_after_accept_closes_with_1011(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        async with serve(loop, ws_echo) as served:
            client = await websocket(served)
            client.send(ws.TextMessage(data="fail"))
            assert await client.close_code() == 1011

    run(main())


def test_websocket_close_before_accept_is_403(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close"})
        assert (await receive())["type"] == "websocket.disconnect"

    async def main() -> None:
        async with serve(loop, app) as served:
            response = await served.exchange(upgrade_request())
            assert response.status == 403

    run(main())


def test_websocket_denial_response(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        headers = [(b"content-type", b"application/json"), (b"x-why", b"denied")]
        await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
        await send(
            {"type": "websocket.http.response.body", "body": b'{"error":', "more_body": True}
        )
        await send({"type": "websocket.http.response.body", "body": b'"no"}'})

    async def main() -> None:
        async with serve(loop, app) as served:
            response = await served.exchange(upgrade_request())
            assert response.status == 401
            assert response.header("x-why") == "denied"
            assert response.body == b'{"error":"no"}'

    run(main())


def test_websocket_app_failing_before_accept_gets_500(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("no handshake for you")

    async def main() -> None:
        async with serve(loop, app) as served:
            response = await served.exchange(upgrade_request())
            assert response.status == 500

    run(main())


def upgrade_request() -> bytes:
    return request(
        "GET",
        "/ws",
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
    )


# -- lifespan ---------------------------------------------------------------


def lifespan_app(events: list[str], fail: str = "") -> App:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                phase = message["type"].removeprefix("lifespan.")
                events.append(phase)
                if phase == fail:
                    await send({"type": f"lifespan.{phase}.failed", "message": "no database"})
                    return
                if phase == "startup":
                    scope["state"]["greeting"] = "hello"
                await send({"type": f"lifespan.{phase}.complete"})
                if phase == "shutdown":
                    return
        await respond(send, body=scope["state"]["greeting"].encode())

    return app


def test_lifespan_state_reaches_requests(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    events: list[str] = []
    app = lifespan_app(events)

    async def main() -> None:
        lifespan = Lifespan(app, "on")
        await lifespan.startup()
        async with serve(loop, app, lifespan=lifespan) as served:
            assert (await served.exchange(request())).body == b"hello"
        await lifespan.shutdown()

    run(main())
    assert events == ["startup", "shutdown"]


def test_lifespan_failures(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def unsupported(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", "only http here"

    async def main() -> None:
        with pytest.raises(LifespanFailed, match="startup failed: no database"):
            await Lifespan(lifespan_app([], fail="startup")).startup()
        failing_shutdown = Lifespan(lifespan_app([], fail="shutdown"))
        await failing_shutdown.startup()
        with pytest.raises(LifespanFailed, match="shutdown failed: no database"):
            await failing_shutdown.shutdown()
        auto = Lifespan(unsupported, "auto")
        await auto.startup()  # not supported: going on without
        await auto.shutdown()
        with pytest.raises(LifespanFailed, match="only http here"):
            await Lifespan(unsupported, "on").startup()
        events: list[str] = []
        off = Lifespan(lifespan_app(events), "off")
        await off.startup()
        await off.shutdown()
        assert events == []

    run(main())
    with pytest.raises(ValueError, match="auto, on or off"):
        Lifespan(lifespan_app([]), "sometimes")  # type: ignore[arg-type]
