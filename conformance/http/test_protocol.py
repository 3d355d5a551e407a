"""HTTP/1.1 basics: keep-alive, pipelining, chunked bodies, 100-continue, HEAD."""

from __future__ import annotations

import asyncio
import email.utils
import socket
from collections.abc import Iterable
from typing import cast

import pytest

from protoshim.conformance._helpers import wait_until
from protoshim.conformance.http._support import (
    Environ,
    StartResponse,
    request,
    serving,
    validated,
)
from protoshim.conformance.plugin import RunCoroutine
from protoshim.protocols.http import (
    Handler,
    HTTPConfig,
    HTTPExchange,
    HTTPServerProtocol,
    ParserName,
    WSGIHandler,
)

pytestmark = pytest.mark.requires("tcp")


def echo_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Answer with the method, path and the whole request body."""
    body = b""
    while chunk := environ["wsgi.input"].read(4096):
        body += chunk
    body = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} ".encode("latin-1") + body
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


ECHO = validated(echo_app)


def test_keep_alive_serves_several_requests_on_one_connection(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    async def main() -> None:
        async with serving(loop, config=HTTPConfig(parser=http_parser), wsgi_app=ECHO) as served:
            client = await served.connect()
            for path in ("/one", "/two", "/three"):
                client.send(request(target=path))
                response = await client.response()
                assert response.status == 200
                assert response.body == f"GET {path} ".encode()
                assert response.header("connection") != "close"
            assert len(served.protocols) == 1
            assert served.protocols[0].requests_served == 3
            assert not client.eof.done()

    run(main())


def test_pipelined_requests_are_answered_in_order(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    release = asyncio.Event()

    async def handler(exchange: HTTPExchange) -> None:
        if exchange.path == b"/slow":
            await release.wait()  # answered last if order were by completion
        await exchange.respond(200, [], exchange.path)

    async def main() -> None:
        async with serving(
            loop, lambda: HTTPServerProtocol(handler, HTTPConfig(parser=http_parser))
        ) as served:
            client = await served.connect()
            paths = ["/slow", "/a", "/b", "/c"]
            client.send(b"".join(request(target=path) for path in paths))
            protocol = await served.server_protocol()
            await wait_until(lambda: protocol.requests_in_flight == 4, "all four parsed")
            release.set()
            bodies = [(await client.response()).body for _ in paths]
            assert bodies == [path.encode() for path in paths]

    run(main())


def test_chunked_request_body_is_decoded(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    async def main() -> None:
        async with serving(loop, config=HTTPConfig(parser=http_parser), wsgi_app=ECHO) as served:
            client = await served.connect()
            client.send(request("POST", "/c", [("Transfer-Encoding", "chunked")]))
            for piece in (b"5\r\nhello\r\n", b"1;ext=1\r\n \r\n", b"5\r\nworld\r\n", b"0\r\n\r\n"):
                client.send(piece)
                await asyncio.sleep(0)
            response = await client.response()
            assert response.body == b"POST /c hello world"
            client.send(request(target="/after"))
            assert (await client.response()).body == b"GET /after "

    run(main())


def test_streamed_response_without_length_is_chunked(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (part for part in (b"one ", b"", b"two ", b"three"))

    async def main() -> None:
        async with serving(
            loop, config=HTTPConfig(parser=http_parser), wsgi_app=validated(app)
        ) as served:
            response = await served.exchange(request())
            assert response.header("transfer-encoding") == "chunked"
            assert response.header("content-length") is None
            assert response.body == b"one two three"

    run(main())


def test_known_body_gets_content_length(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    async def handler(exchange: HTTPExchange) -> None:
        await exchange.respond(200, [(b"Content-Type", b"text/plain")], b"sized")

    async def main() -> None:
        async with serving(
            loop, lambda: HTTPServerProtocol(handler, HTTPConfig(parser=http_parser))
        ) as served:
            response = await served.exchange(request())
            assert response.header("content-length") == "5"
            assert response.header("transfer-encoding") is None
            assert response.body == b"sized"

    run(main())


def test_expect_100_continue_is_answered_before_the_body(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    async def main() -> None:
        async with serving(loop, config=HTTPConfig(parser=http_parser), wsgi_app=ECHO) as served:
            client = await served.connect()
            client.send(
                request("PUT", "/up", [("Content-Length", "4"), ("Expect", "100-continue")])
            )
            interim = b"HTTP/1.1 100 Continue\r\n\r\n"
            await client.received(len(interim), "the 100 Continue")
            assert bytes(client.data).startswith(interim)
            client.send(b"data")
            response = await client.response()
            assert response.informational == [100]
            assert response.status == 200
            assert response.body == b"PUT /up data"

    run(main())


def test_no_100_continue_when_the_body_is_not_read(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    async def handler(exchange: HTTPExchange) -> None:
        await exchange.respond(403, [], b"no thanks")

    async def main() -> None:
        async with serving(
            loop, lambda: HTTPServerProtocol(handler, HTTPConfig(parser=http_parser))
        ) as served:
            client = await served.connect()
            client.send(
                request("PUT", "/up", [("Content-Length", "4"), ("Expect", "100-continue")])
            )
            response = await client.response()
            assert response.informational == []
            assert response.status == 403
            # The body was never sent: the connection cannot be reused.
            await client.closed()

    run(main())


def test_head_has_the_headers_of_get_and_no_body(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    async def main() -> None:
        async with serving(loop, config=HTTPConfig(parser=http_parser), wsgi_app=ECHO) as served:
            client = await served.connect()
            client.send(request("HEAD", "/h") + request("GET", "/h"))
            head = await client.response("HEAD")
            get = await client.response("GET")
            assert head.status == get.status == 200
            assert head.body == b""
            assert get.body == b"GET /h "
            # The app declared the length of the body it would have sent.
            assert head.header("content-length") == str(len(b"HEAD /h "))
            assert get.header("content-length") == str(len(get.body))

    run(main())


def test_date_and_server_headers(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    async def main() -> None:
        async with serving(loop, config=HTTPConfig(parser=http_parser), wsgi_app=ECHO) as served:
            response = await served.exchange(request())
            date = response.header("date")
            assert date is not None
            assert email.utils.parsedate_to_datetime(date).tzinfo is not None
            assert response.header("server") == "protoshim"

    run(main())


def test_http_1_0_request_is_answered_then_closed(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    async def main() -> None:
        async with serving(loop, config=HTTPConfig(parser=http_parser), wsgi_app=ECHO) as served:
            client = await served.connect()
            client.send(b"GET /old HTTP/1.0\r\n\r\n")
            response = await client.response()
            assert response.status == 200
            assert response.body == b"GET /old "
            await client.closed()

    run(main())


def test_connection_close_is_honoured(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    async def main() -> None:
        async with serving(loop, config=HTTPConfig(parser=http_parser), wsgi_app=ECHO) as served:
            client = await served.connect()
            client.send(request(headers=[("Connection", "close")]) + request(target="/ignored"))
            response = await client.response()
            assert response.header("connection") == "close"
            assert await client.everything() == b""
            assert served.protocols[0].requests_served == 1

    run(main())


def test_client_half_close_still_gets_every_pipelined_answer(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    async def main() -> None:
        async with serving(loop, config=HTTPConfig(parser=http_parser), wsgi_app=ECHO) as served:
            client = await served.connect()
            client.send(request(target="/1") + request(target="/2"))
            client.tr.write_eof()
            assert (await client.response()).body == b"GET /1 "
            assert (await client.response()).body == b"GET /2 "
            assert await client.everything() == b""

    run(main())


class RecordingTransport(asyncio.Transport):
    """Delegate to the real transport, recording each write."""

    def __init__(self, inner: asyncio.Transport) -> None:
        super().__init__()
        self.inner = inner
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self.inner.write(data)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def write_eof(self) -> None:
        self.inner.write_eof()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()


class RecordingProtocol(HTTPServerProtocol):
    """Serve HTTP through a transport recorder."""

    recorder: RecordingTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.recorder = RecordingTransport(cast(asyncio.Transport, transport))
        super().connection_made(self.recorder)


def single_item(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"BODY"]


def streamed(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return iter([b"BODY", b"MORE"])


async def responded(exchange: HTTPExchange) -> None:
    await exchange.respond(200, [], b"BODY")


@pytest.mark.parametrize(
    ("handler", "writes"),
    [
        (responded, 1),
        (WSGIHandler(single_item), 1),
        # head and first chunk together, then the next chunk, then the last chunk
        (WSGIHandler(streamed), 3),
    ],
    ids=["respond", "wsgi-list", "wsgi-stream"],
)
def test_head_is_written_together_with_the_body(
    loop: asyncio.AbstractEventLoop,
    run: RunCoroutine,
    http_parser: ParserName,
    handler: Handler,
    writes: int,
) -> None:
    async def main() -> list[bytes]:
        async with serving(
            loop, lambda: RecordingProtocol(handler, HTTPConfig(parser=http_parser))
        ) as served:
            response = await served.exchange(request())
            assert response.body.startswith(b"BODY")
            protocol = served.protocols[0]
            assert isinstance(protocol, RecordingProtocol)
            return protocol.recorder.writes

    recorded = run(main())
    assert len(recorded) == writes
    assert recorded[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert recorded[0].endswith(b"BODY") or recorded[0].endswith(b"BODY\r\n")


def test_tcp_nodelay_is_set(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    async def main() -> int:
        async with serving(
            loop, lambda: HTTPServerProtocol(responded, HTTPConfig(parser=http_parser))
        ) as served:
            await served.exchange(request())
            sock = served.protocols[0].get_extra_info("socket")
            if sock is None:
                pytest.skip("the transport exposes no socket")
            return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    assert run(main()) != 0


def test_higher_minor_version_is_served_as_1_1(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    async def main() -> None:
        async with serving(loop, config=HTTPConfig(parser=http_parser), wsgi_app=ECHO) as served:
            client = await served.connect()
            client.send(b"GET /next HTTP/1.7\r\nHost: test\r\n\r\n")
            response = await client.response()
            assert response.status == 200
            assert bytes(client.data).startswith(b"HTTP/1.1 200 ")

    run(main())
