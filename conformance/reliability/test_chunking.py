"""Arbitrary chunking: the same bytes cut anywhere, with small pauses, mean the same.

Hypothesis generates valid input (pipelined HTTP requests with
Content-Length or chunked bodies; a WebSocket handshake followed by
fragmented messages and pings; an echo stream), cuts it at arbitrary byte
boundaries and sends the pieces with random small delays.  The server must
see exactly the messages that were generated and give the same responses
as when the input arrives in one piece.  The examples are derandomised, so
every framework gets the same ones.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import string
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto import events as wsevents
from wsproto.frame_protocol import FrameProtocol

from protoshim.conformance._helpers import Recorder, wait, wait_until
from protoshim.conformance.http._support import Client
from protoshim.conformance.plugin import RunCoroutine
from protoshim.conformance.reliability._servers import App, Watched, watching
from protoshim.protocols.echo import EchoServer
from protoshim.protocols.http import HTTPConfig, HTTPExchange, ParserName

from .conftest import Figure

pytestmark = [pytest.mark.slow, pytest.mark.requires("tcp")]

EXAMPLES = 25
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DELAYS = st.sampled_from([0.0, 0.0005, 0.001, 0.002])
MAX_CUTS = 40


@dataclass(frozen=True)
class Split:
    """Where to cut a byte string and how long to wait after each piece."""

    cuts: tuple[int, ...]
    delays: tuple[float, ...]

    def pieces(self, data: bytes) -> list[bytes]:
        """Return ``data`` cut at ``cuts``."""
        bounds = [0, *self.cuts, len(data)]
        return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def split_of(data: st.DataObject, size: int) -> Split:
    """Draw up to 40 cut positions inside ``size`` bytes and a delay per piece."""
    count = data.draw(st.integers(0, min(MAX_CUTS, size - 1)), label="number of cuts")
    cuts = data.draw(
        st.sets(st.integers(1, max(1, size - 1)), min_size=count, max_size=count).map(
            lambda found: tuple(sorted(found))
        ),
        label="cuts",
    )
    delays = data.draw(
        st.lists(DELAYS, min_size=len(cuts) + 1, max_size=len(cuts) + 1), label="delays"
    )
    return Split(cuts, tuple(delays))


async def send_pieces(transport: asyncio.Transport, data: bytes, split: Split) -> None:
    """Write ``data`` piece by piece, pausing after each as ``split`` says."""
    for piece, delay in zip(split.pieces(data), split.delays, strict=False):
        transport.write(piece)
        await asyncio.sleep(delay)


# -- HTTP --------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One generated request and what the handler must see of it."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    chunks: tuple[int, ...] | None  # chunk sizes, or None for Content-Length

    def encode(self) -> bytes:
        """Return the request on the wire."""
        lines = [f"{self.method} {self.target} HTTP/1.1", "Host: test"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.chunks is None:
            if self.body or self.method != "GET":
                lines.append(f"Content-Length: {len(self.body)}")
            return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body
        lines.append("Transfer-Encoding: chunked")
        out = ("\r\n".join(lines) + "\r\n\r\n").encode()
        start = 0
        for size in self.chunks:
            out += b"%x\r\n%s\r\n" % (size, self.body[start : start + size])
            start += size
        return out + b"0\r\n\r\n"

    def seen(self) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        """Return what the handler must see: method, target, own headers, body."""
        headers = tuple((name.lower(), value) for name, value in self.headers)
        return self.method, self.target, headers, self.body


def _chunk_sizes(size: int, cuts: list[int]) -> tuple[int, ...]:
    bounds = [0, *sorted(set(cuts)), size]
    return tuple(b - a for a, b in itertools.pairwise(bounds) if b > a)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """Generate one valid request."""
    method = draw(st.sampled_from(["GET", "POST", "PUT"]))
    path = draw(st.text(string.ascii_letters + string.digits + "-._~/", max_size=12))
    query = draw(st.text(string.ascii_letters + string.digits + "=&", max_size=8))
    target = "/" + path + (f"?{query}" if query else "")
    names = draw(st.lists(st.sampled_from(["X-A", "X-Trace", "Accept"]), max_size=3, unique=True))
    value = st.text(string.ascii_letters + string.digits + " ,;=/", min_size=1, max_size=20).map(
        str.strip
    )
    headers = tuple((name, draw(value.filter(bool))) for name in names)
    body = b"" if method == "GET" else draw(st.binary(max_size=300))
    chunks = None
    if body and draw(st.booleans()):
        cuts = draw(st.lists(st.integers(1, len(body)), max_size=5))
        chunks = _chunk_sizes(len(body), cuts)
    return Request(method, target, headers, body, chunks)


class Seen:
    """A handler recording what it saw and answering with a digest of it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, tuple[tuple[str, str], ...], bytes]] = []

    async def __call__(self, exchange: HTTPExchange) -> None:
        body = await exchange.read_body()
        own = tuple(
            (name.decode(), value.decode())
            for name, value in exchange.headers
            if name not in (b"host", b"content-length", b"transfer-encoding")
        )
        target = exchange.target.decode()
        self.seen.append((exchange.method, target, own, body))
        digest = hashlib.sha256(repr((exchange.method, target, own, body)).encode()).hexdigest()
        await exchange.respond(200, [(b"X-Length", b"%d" % len(body))], digest.encode())


Answer = tuple[int, tuple[tuple[bytes, bytes], ...], bytes]


async def _http_exchange(
    loop: asyncio.AbstractEventLoop, port: int, data: bytes, split: Split | None, count: int
) -> list[Answer]:
    _, client = await wait(
        loop.create_connection(functools.partial(Client, loop), "127.0.0.1", port),
        "create_connection",
    )
    assert isinstance(client, Client)
    await send_pieces(client.tr, data, split or Split((), (0.0,)))
    answers = []
    for _ in range(count):
        response = await client.response()
        # Date changes from second to second; everything else must be identical.
        headers = tuple((k, v) for k, v in response.headers if k != b"date")
        answers.append((response.status, headers, response.body))
    client.tr.close()
    await wait(asyncio.shield(client.lost), "the client to close")
    return answers


def test_http_requests_split_anywhere_mean_the_same(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, figure: Figure, http_parser: ParserName
) -> None:
    config = HTTPConfig(parser=http_parser)
    reads: list[int] = []

    @SETTINGS
    @given(batch=st.lists(requests(), min_size=1, max_size=3), data=st.data())
    def check(batch: Sequence[Request], data: st.DataObject) -> None:
        wire = b"".join(request.encode() for request in batch)
        split = split_of(data, len(wire))
        handler = Seen()

        async def main() -> tuple[list[Answer], list[Answer], int]:
            async with watching(loop, lambda: Watched(handler, config)) as served:
                whole = await _http_exchange(loop, served.port, wire, None, len(batch))
                pieces = await _http_exchange(loop, served.port, wire, split, len(batch))
                return whole, pieces, served.protocols[-1].reads

        whole, pieces, server_reads = run(main(), timeout=30)
        reads.append(server_reads)
        expected = [request.seen() for request in batch]
        assert handler.seen == expected + expected
        assert pieces == whole
        assert all(status == 200 for status, _, _ in whole)

    check()
    figure("examples", len(reads))
    figure("most reads for one input", max(reads), headline=True)


# -- WebSocket ---------------------------------------------------------------


Message = str | bytes


@st.composite
def messages(draw: st.DrawFn) -> tuple[Message, int]:
    """Generate a message and the number of frames to send it in."""
    message: Message = draw(st.text(max_size=200) | st.binary(max_size=300))
    return message, draw(st.integers(1, 3))


def _frames(items: Sequence[tuple[Message, int]], pings: Sequence[bool]) -> bytes:
    """Frame every message, fragmented as asked, with a ping inside some of them."""
    frames = FrameProtocol(client=True, extensions=[])
    out = bytearray()
    for (message, parts), ping in zip(items, pings, strict=False):
        step = max(1, -(-len(message) // parts))
        pieces = [message[i : i + step] for i in range(0, len(message), step)] or [message]
        for index, piece in enumerate(pieces):
            out += frames.send_data(piece, fin=index == len(pieces) - 1)
            if ping and index == 0:
                out += frames.ping(b"between")
    return bytes(out)


class Echoes(Recorder):
    """Collect the messages a WebSocket server sends back."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.messages: list[Message] = []
        self._partial: list[Message] = []

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, wsevents.TextMessage | wsevents.BytesMessage):
                part = event.data
                self._partial.append(part if isinstance(part, str) else bytes(part))
                if event.message_finished:
                    joined: Message = (
                        "".join(p for p in self._partial if isinstance(p, str))
                        if isinstance(event, wsevents.TextMessage)
                        else b"".join(p for p in self._partial if isinstance(p, bytes))
                    )
                    self.messages.append(joined)
                    self._partial = []


async def _websocket_exchange(
    loop: asyncio.AbstractEventLoop, port: int, frames: bytes, count: int, split: Split | None
) -> list[Message]:
    """Send the handshake and ``frames`` as one stream, wait for the echoes, then close."""
    _, client = await wait(
        loop.create_connection(functools.partial(Echoes, loop), "127.0.0.1", port),
        "create_connection",
    )
    assert isinstance(client, Echoes)
    # The handshake and the frames are one stream, cut anywhere: bytes after
    # the upgrade request must reach the WebSocket.
    stream = client.ws.send(wsevents.Request(host="test", target="/ws")) + frames
    await send_pieces(client.tr, stream, split or Split((), (0.0,)))
    await wait_until(lambda: len(client.messages) >= count, "every echo")
    # Closing only now: after the closing handshake nothing more may be sent.
    client.tr.write(client.ws.send(wsevents.CloseConnection(code=1000)))
    await wait(asyncio.shield(client.lost), "the server to close after the closing handshake")
    return client.messages


def test_websocket_frames_split_anywhere_mean_the_same(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, figure: Figure
) -> None:
    reads: list[int] = []

    @SETTINGS
    @given(items=st.lists(messages(), min_size=1, max_size=4), data=st.data())
    def check(items: Sequence[tuple[Message, int]], data: st.DataObject) -> None:
        pings = data.draw(st.lists(st.booleans(), min_size=len(items), max_size=len(items)))
        frames = _frames(items, pings)
        app = App()
        sent = [message for message, _ in items]

        async def main() -> tuple[list[Message], list[Message], int]:
            async with watching(loop, lambda: Watched(app)) as served:
                whole = await _websocket_exchange(loop, served.port, frames, len(sent), None)
                # The handshake request is a little over 200 bytes, plus the frames.
                split = split_of(data, 200 + len(frames))
                pieces = await _websocket_exchange(loop, served.port, frames, len(sent), split)
                return whole, pieces, served.protocols[-1].reads

        whole, pieces, server_reads = run(main(), timeout=30)
        reads.append(server_reads)
        assert app.ws_messages == sent + sent
        assert whole == sent
        assert pieces == whole

    check()
    figure("examples", len(reads))
    figure("most reads for one input", max(reads), headline=True)


# -- echo --------------------------------------------------------------------


class CountingEcho(EchoServer):
    """The echo server, counting its reads."""

    reads = 0

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        super().data_received(data)


def test_echo_stream_split_anywhere_comes_back_whole(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, figure: Figure
) -> None:
    reads: list[int] = []

    @SETTINGS
    @given(payload=st.binary(min_size=256, max_size=4096), data=st.data())
    def check(payload: bytes, data: st.DataObject) -> None:
        split = split_of(data, len(payload))
        servers: list[CountingEcho] = []

        def factory() -> CountingEcho:
            servers.append(CountingEcho())
            return servers[-1]

        async def main() -> bytes:
            server = await loop.create_server(factory, "127.0.0.1", 0)
            try:
                _, client = await wait(
                    loop.create_connection(
                        functools.partial(Recorder, loop),
                        "127.0.0.1",
                        server.sockets[0].getsockname()[1],
                    ),
                    "create_connection",
                )
                assert isinstance(client, Recorder)
                await send_pieces(client.tr, payload, split)
                client.tr.write_eof()
                await wait(asyncio.shield(client.eof), "the echo server's EOF")
                client.tr.close()
                await wait(asyncio.shield(client.lost), "the client to close")
                return bytes(client.data)
            finally:
                server.close()
                await wait(server.wait_closed(), "Server.wait_closed()")

        assert run(main(), timeout=30) == payload
        reads.append(servers[0].reads)

    check()
    figure("examples", len(reads))
    figure("most reads for one input", max(reads), headline=True)
