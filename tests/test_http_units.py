"""Unit tests of the HTTP protocol's pure parts: head checks, paths, ranges, config, runners."""

from __future__ import annotations

import asyncio
import pathlib
import threading
import tracemalloc

import h11
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto import events as wsevents
from wsproto.extensions import PerMessageDeflate

from protoshim.protocols.http import (
    LOOP_ATTRIBUTE,
    Handler,
    HTTPConfig,
    HTTPExchange,
    HTTPServerProtocol,
    StaticFiles,
    ThreadRunner,
    blocking_runner_for,
)
from protoshim.protocols.http._static import _byte_range
from protoshim.protocols.http._validate import check_fields, scan_head
from protoshim.protocols.http._websocket import _extensions


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"GET / HTTP/1.1\nHost: a", "bare LF"),
        (b"GET / HTTP/1.1\r\nHost: a\rb", "bare CR"),
        (b"GET / HTTP/1.1\r\nX: \x01", "control character"),
        (b"GET / HTTP/1.1\r\nX: a\r\n b", "obsolete line folding"),
    ],
)
def test_scan_head_refuses(head, reason):
    rejection = scan_head(head)
    assert rejection is not None
    assert rejection.status == 400
    assert reason in rejection.reason


@pytest.mark.parametrize(
    "partial",
    [b"GET / HTTP/1.1\r", b"GET / HTTP/1.1\r\nX: a\tb\r\n", b"GET / HTTP/1.1\r\nX: \xe9\r\n"],
)
def test_scan_head_accepts_valid_prefixes(partial):
    # A CR at the end may still get its LF; tab and obs-text are legal in values.
    assert scan_head(partial) is None


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        (b"Content-Length: 1\r\nContent-Length: 1", 400),
        (b"Content-Length: 1, 1", 400),
        (b"Content-Length: 1\r\nTransfer-Encoding: chunked", 400),
        (b"Transfer-Encoding: gzip", 501),
        (b"Transfer-Encoding: chunked, chunked", 400),
        (b"Transfer-Encoding: ,chunked", 400),
        (b"Host: a b", 400),
        (b"Content-Length: 10\r\nHost: [::1]:80", None),
        (b"Transfer-Encoding: Chunked\r\nHost: example.com", None),
    ],
)
def test_check_fields(fields, status):
    rejection = check_fields(b"POST / HTTP/1.1\r\n" + fields + b"\r\n\r\n")
    assert (rejection.status if rejection else None) == status


@pytest.fixture
def static(tmp_path: pathlib.Path) -> StaticFiles:
    (tmp_path / "root" / "sub").mkdir(parents=True)
    (tmp_path / "root" / "sub" / "a.txt").write_text("a")
    return StaticFiles(tmp_path / "root", "/files/")


def test_resolve_maps_inside_the_root(static: StaticFiles):
    assert static.resolve(b"/files/sub/a.txt") == str(pathlib.Path(static.root, "sub", "a.txt"))
    assert static.resolve(b"/files/sub/%61.txt") == str(pathlib.Path(static.root, "sub", "a.txt"))


@pytest.mark.parametrize(
    "path",
    [
        b"/files/../x",
        b"/files/%2e%2e/x",
        b"/files/sub%2fa.txt",
        b"/files/sub%5ca.txt",
        b"/files//sub/a.txt",
        b"/files/sub/a.txt%00",
        b"/files/.git",
        b"/files",
        b"/other/sub/a.txt",
        b"/files/%c3",
    ],
)
def test_resolve_refuses(static: StaticFiles, path: bytes):
    assert static.resolve(path) is None


def test_static_root_must_be_a_directory(tmp_path: pathlib.Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        StaticFiles(tmp_path / "file")


@pytest.mark.parametrize(
    ("first", "last", "size", "expected"),
    [
        (b"0", b"0", 10, (0, 1)),
        (b"5", b"", 10, (5, 10)),
        (b"", b"3", 10, (7, 10)),
        (b"", b"30", 10, (0, 10)),
        (b"2", b"100", 10, (2, 10)),
        (b"10", b"", 10, "unsatisfiable"),
        (b"", b"0", 10, "unsatisfiable"),
        (b"0", b"", 0, "unsatisfiable"),
        (b"5", b"2", 10, None),
        (b"", b"", 10, None),
    ],
)
def test_byte_range(first, last, size, expected):
    assert _byte_range(first, last, size) == expected


@pytest.mark.parametrize(
    "overrides",
    [{"max_header_size": 0}, {"max_pipelined": 0}, {"header_timeout": 0}, {"linger_timeout": -1}],
)
def test_config_refuses_impossible_limits(overrides):
    with pytest.raises(ValueError):
        HTTPConfig(**overrides)


class FakeLoop:
    """Only what blocking_runner_for looks at."""


def test_blocking_runner_prefers_config_then_loop_then_threads():
    configured = ThreadRunner()
    offered = ThreadRunner()
    plain = FakeLoop()
    offering = FakeLoop()
    setattr(offering, LOOP_ATTRIBUTE, offered)
    assert isinstance(blocking_runner_for(plain), ThreadRunner)  # type: ignore[arg-type]
    assert blocking_runner_for(offering) is offered  # type: ignore[arg-type]
    assert blocking_runner_for(offering, configured) is configured  # type: ignore[arg-type]


def test_thread_runner_call_fails_cleanly_on_a_closed_loop():
    loop = asyncio.new_event_loop()
    loop.close()

    async def never() -> None:
        raise AssertionError("must not run")

    # The coroutine is closed, not leaked: no "never awaited" warning (an error here).
    with pytest.raises(ConnectionAbortedError):
        ThreadRunner().call(loop, never())


def test_thread_runner_call_runs_on_the_loop_thread():
    loop = asyncio.new_event_loop()

    async def which() -> int:
        return threading.get_ident()

    async def main() -> tuple[int, int]:
        worker = await loop.run_in_executor(None, ThreadRunner().call, loop, which())
        return worker, threading.get_ident()

    try:
        ran_on, loop_thread = loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    assert ran_on == loop_thread


def test_thread_runner_call_passes_a_timeout_error_through():
    loop = asyncio.new_event_loop()

    async def times_out() -> None:
        raise TimeoutError("from the coroutine")

    async def main() -> None:
        with pytest.raises(TimeoutError, match="from the coroutine"):
            await loop.run_in_executor(None, ThreadRunner().call, loop, times_out())

    try:
        loop.run_until_complete(asyncio.wait_for(main(), 10))
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


class WriteRecorder(asyncio.Transport):
    """Keep every object written, to see what was copied."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert isinstance(data, bytes)
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def serve_one(handler: Handler, head: bytes = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") -> list[bytes]:
    """Run ``handler`` on one request over a recording transport; return the writes."""

    async def main() -> list[bytes]:
        transport = WriteRecorder()
        protocol = HTTPServerProtocol(handler)
        protocol.connection_made(transport)
        protocol.data_received(head)
        while protocol.requests_in_flight:
            await asyncio.sleep(0)
        return transport.writes

    return asyncio.run(main())


def parse_response(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    response = conn.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while isinstance(event := conn.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage)
    return list(response.headers), body


BIG = bytes(range(256)) * 4096


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_large_body_reaches_the_transport_uncopied(chunked: bool) -> None:
    async def handler(exchange: HTTPExchange) -> None:
        headers = [] if chunked else [(b"Content-Length", str(len(BIG)).encode())]
        exchange.start_response(200, headers)
        await exchange.end(BIG)

    writes = serve_one(handler)
    assert any(piece is BIG for piece in writes)
    assert len(writes) == (3 if chunked else 2)  # head (+ chunk size), body (, last chunk)
    headers, body = parse_response(b"".join(writes))
    assert body == BIG
    assert ((b"transfer-encoding", b"chunked") in headers) == chunked


def test_a_small_response_is_one_write() -> None:
    async def handler(exchange: HTTPExchange) -> None:
        exchange.start_response(200, [])  # chunked: head, size, data, CRLF, last chunk
        await exchange.end(b"small")

    writes = serve_one(handler)
    assert len(writes) == 1
    assert parse_response(writes[0])[1] == b"small"


def test_config_refuses_an_unknown_parser():
    with pytest.raises(ValueError, match="parser must be one of h11, httptools"):
        HTTPConfig(parser="picohttpparser")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "head",
    [
        b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-A:  padded \t\r\nX-A: 2\r\n\r\n",
        b"POST http://x/p HTTP/1.0\r\nContent-Length: 3\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    ],
)
def test_both_parsers_read_a_head_alike(head):
    from protoshim.protocols.http._parse import head_parser

    assert head_parser("h11")(head, 16384) == head_parser("httptools")(head, 16384)


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nX : a\r\nHost: a\r\n\r\n",
    ],
)
def test_both_parsers_refuse_a_malformed_head(head):
    from protoshim.protocols.http._parse import Rejection, head_parser

    for name in ("h11", "httptools"):
        assert isinstance(head_parser(name)(head, 16384), Rejection), name


def _deflate_pair(limit: int, offer: str) -> tuple[WSConnection, WSConnection]:
    """Return a (server, client) pair that agreed on ``offer`` with a bounded server."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    head = client.send(wsevents.Request(host="h", target="/", extensions=[PerMessageDeflate()]))
    head = head.replace(
        b"permessage-deflate; client_max_window_bits=15; server_max_window_bits=15", offer.encode()
    )
    server.receive_data(head)
    assert isinstance(next(server.events()), wsevents.Request)
    extensions = _extensions(HTTPConfig(websocket_max_message_size=limit))
    client.receive_data(server.send(wsevents.AcceptConnection(extensions=extensions)))
    accepted = next(client.events())
    assert isinstance(accepted, wsevents.AcceptConnection)
    assert accepted.extensions, "deflate was not agreed"
    return server, client


def test_deflate_inflates_no_message_far_past_the_limit():
    server, client = _deflate_pair(1024, "permessage-deflate")
    bomb = client.send(wsevents.BytesMessage(data=bytes(64 * 1024 * 1024)))
    assert len(bomb) < 100 * 1024
    tracemalloc.start()
    try:
        server.receive_data(bomb)
        events = list(server.events())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [type(event) for event in events] == [wsevents.CloseConnection]
    assert events[0].code == 1009
    assert peak < 4 * 1024 * 1024  # inflated whole, the message would take 64 MiB


def test_deflate_accepts_the_first_acceptable_offer():
    offers = (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=8, "
        "permessage-deflate; client_max_window_bits=10, "
        "permessage-deflate; client_max_window_bits=12"
    )
    server, client = _deflate_pair(4096, offers)
    (deflate,) = server.connection._proto.extensions  # type: ignore[union-attr]
    # The first offer is declined (8 bits) and leaves nothing behind; the
    # second is taken and the third ignored.
    assert repr(deflate) == "<_BoundedDeflate client_max_window_bits=10; server_max_window_bits=15>"
    server.receive_data(client.send(wsevents.TextMessage(data="y" * 2000)))
    assert [event.data for event in server.events()] == ["y" * 2000]  # type: ignore[attr-defined]


def test_flow_gate_holds_writers_until_resumed_and_fails_them_when_lost():
    from protoshim.protocols.http._flow import FlowGate

    async def main():
        gate = FlowGate()
        await gate.wait()  # not paused: no wait
        gate.pause()
        waiter = asyncio.ensure_future(gate.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        gate.resume()
        await waiter
        gate.pause()
        waiter = asyncio.ensure_future(gate.wait())
        await asyncio.sleep(0)
        gate.fail("connection lost")
        with pytest.raises(ConnectionResetError, match="connection lost"):
            await waiter
        with pytest.raises(ConnectionResetError):
            await gate.wait()  # and every later writer

        released = FlowGate()
        released.pause()
        waiter = asyncio.ensure_future(released.wait())
        await asyncio.sleep(0)
        released.release()
        await waiter
        await released.wait()  # paused, but released for good

    asyncio.run(main())
