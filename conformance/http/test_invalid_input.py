"""Invalid requests: answered by the protocol (400, 501...), then the connection closes.

Every case here is a way to make two servers disagree on where a request
ends, or plainly malformed input.  None may reach the application, none may
produce a 500 or a logged traceback.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protoshim.conformance.http._support import Response, serving, small_config
from protoshim.conformance.plugin import RunCoroutine
from protoshim.protocols.http import HTTPExchange, HTTPServerProtocol, ParserName

pytestmark = pytest.mark.requires("tcp")

GOOD = b"GET / HTTP/1.1\r\nHost: test\r\n"

# (id, raw bytes, expected status): rejected from the head alone.
HEAD_CASES = [
    (
        "content-length-and-transfer-encoding",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    (
        "transfer-encoding-then-content-length",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        400,
    ),
    (
        "duplicate-content-length-same-value",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        400,
    ),
    (
        "duplicate-content-length-different-values",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    (
        "content-length-list",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello",
        400,
    ),
    ("content-length-negative", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
    (
        "content-length-plus-sign",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
        400,
    ),
    ("content-length-hex", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x5\r\n\r\nhello", 400),
    (
        "content-length-inner-space",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1 2\r\n\r\n",
        400,
    ),
    ("content-length-empty", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length:\r\n\r\n", 400),
    (
        "unknown-transfer-coding",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
    ),
    (
        "gzip-then-chunked",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    (
        "chunked-twice",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunked-in-two-fields",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("transfer-encoding-empty", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n\r\n", 400),
    (
        "transfer-encoding-in-http-1.0",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("obs-fold", GOOD + b"X-Folded: one\r\n two\r\n\r\n", 400),
    ("obs-fold-tab", GOOD + b"X-Folded: one\r\n\ttwo\r\n\r\n", 400),
    ("bare-lf-line-ends", b"GET / HTTP/1.1\nHost: test\n\n", 400),
    ("bare-lf-one-field", GOOD + b"X-A: a\nX-B: b\r\n\r\n", 400),
    ("bare-cr-in-value", GOOD + b"X-A: a\rb\r\n\r\n", 400),
    ("bare-cr-in-request-line", b"GET /\r HTTP/1.1\r\nHost: test\r\n\r\n", 400),
    ("nul-in-value", GOOD + b"X-A: a\x00b\r\n\r\n", 400),
    ("control-char-in-value", GOOD + b"X-A: a\x01b\r\n\r\n", 400),
    ("escape-in-value", GOOD + b"X-A: a\x1bb\r\n\r\n", 400),
    ("del-in-value", GOOD + b"X-A: a\x7fb\r\n\r\n", 400),
    ("control-char-in-name", GOOD + b"X-\x01A: a\r\n\r\n", 400),
    ("space-before-colon", GOOD + b"X-A : a\r\n\r\n", 400),
    ("no-colon", GOOD + b"X-A a\r\n\r\n", 400),
    ("missing-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("duplicate-host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("malformed-host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("host-with-path", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("double-space-in-request-line", b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("extra-word-in-request-line", b"GET / HTTP/1.1 x\r\nHost: t\r\n\r\n", 400),
    ("leading-space-request-line", b" GET / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("http-0.9", b"GET /\r\n\r\n", 400),
    ("lowercase-http-name", b"GET / http/1.1\r\nHost: t\r\n\r\n", 400),
    ("relative-target", b"GET index.html HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("asterisk-target-with-get", b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("non-token-method", b"G@T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("non-ascii-in-target", b"GET /\xff HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("http-2-request-line", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    ("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
    ("unknown-expectation", GOOD + b"Expect: teapot\r\n\r\n", 417),
    ("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32, 400),
]

# The head is valid; the body's framing is not.  The application may have
# been started when the error is found, but no response of its own goes out.
BODY_CASES = [
    ("chunk-size-not-hex", b"zz\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-negative", b"-5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-0x-prefix", b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-leading-space", b" 5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-empty", b"\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-too-many-digits", b"1" * 21 + b"\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-size-bare-lf", b"5\nhello\r\n0\r\n\r\n", 400),
    ("chunk-data-longer-than-size", b"3\r\nhello\r\n0\r\n\r\n", 400),
    ("last-chunk-bare-lf", b"5\r\nhello\r\n0\r\n\n", 400),
    ("trailer-bare-lf-end", b"5\r\nhello\r\n0\r\nX-T: 1\n\n", 400),
    ("chunk-extension-bare-cr", b"5;ext=\r\rx\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-extension-cr-in-name", b"5;a\rb\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk-extension-cr-in-quoted-value", b'5;a="x\ry"\r\nhello\r\n0\r\n\r\n', 400),
    ("chunk-size-trailing-space", b"5 \r\nhello\r\n0\r\n\r\n", 400),
    ("trailer-bare-cr", b"5\r\nhello\r\n0\r\nX-T: a\rb\r\n\r\n", 400),
    ("trailer-obs-fold", b"5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n", 400),
]


class Counter:
    """Count calls; read the whole body; answer with its length."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, exchange: HTTPExchange) -> None:
        self.calls += 1
        body = await exchange.read_body()
        await exchange.respond(200, [], b"ok %d" % len(body))


async def send_and_read(
    loop: asyncio.AbstractEventLoop,
    parser: ParserName,
    data: bytes,
    counter: Counter,
    *,
    eof: bool = False,
) -> tuple[Response, bytes]:
    """Send ``data`` (then EOF if asked); return the response and what followed it."""
    config = small_config(max_body_size=1024, parser=parser)
    async with serving(loop, lambda: HTTPServerProtocol(counter, config)) as served:
        client = await served.connect()
        client.send(data)
        if eof:
            client.tr.write_eof()
        response = await client.response()
        rest = await client.everything()
    return response, rest


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


@pytest.mark.parametrize(
    ("raw", "status"), [case[1:] for case in HEAD_CASES], ids=[case[0] for case in HEAD_CASES]
)
def test_invalid_head_is_refused_and_closes(
    loop: asyncio.AbstractEventLoop,
    run: RunCoroutine,
    http_parser: ParserName,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
    status: int,
) -> None:
    counter = Counter()
    # A request that follows must never be read: it could be a smuggled one.
    response, rest = run(
        send_and_read(
            loop, http_parser, raw + b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n", counter
        )
    )
    assert response.status == status
    assert response.header("connection") == "close"
    assert rest == b""
    assert counter.calls == 0
    no_errors_logged(caplog)


@pytest.mark.parametrize(
    ("body", "status"), [case[1:] for case in BODY_CASES], ids=[case[0] for case in BODY_CASES]
)
def test_malformed_chunked_body_is_refused_and_closes(
    loop: asyncio.AbstractEventLoop,
    run: RunCoroutine,
    http_parser: ParserName,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
    status: int,
) -> None:
    head = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    response, rest = run(send_and_read(loop, http_parser, head + body + smuggled, Counter()))
    assert response.status == status
    assert response.header("connection") == "close"
    assert rest == b""
    no_errors_logged(caplog)


def test_valid_chunked_body_with_extensions_and_trailers_is_accepted(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    head = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b'5;name=value ; q="a \\" b"\r\nhello\r\n0\r\nX-Trailer: yes\r\n\r\n'
    counter = Counter()
    response, _ = run(send_and_read(loop, http_parser, head + body, counter))
    assert response.status == 200
    assert response.body == b"ok 5"
    assert counter.calls == 1


def test_incomplete_body_at_eof_is_not_handed_over_as_complete(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, http_parser: ParserName
) -> None:
    async def main() -> tuple[int, bytes]:
        counter = Counter()
        async with serving(
            loop, lambda: HTTPServerProtocol(counter, small_config(parser=http_parser))
        ) as served:
            client = await served.connect()
            client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
            client.tr.write_eof()
            response = await client.response()
            return response.status, await client.everything()

    status, rest = run(main())
    assert status == 400
    assert rest == b""


REQUEST_START = b"GET / HTTP/1.1\r\nHost: test\r\n"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(junk=st.binary(min_size=1, max_size=64))
@example(junk=b"Content-Length: 5")
@example(junk=b"Transfer-Encoding: chunked")
@example(junk=b"X: \xff\x80")
def test_arbitrary_header_bytes_never_cause_a_500(
    loop: asyncio.AbstractEventLoop,
    run: RunCoroutine,
    http_parser: ParserName,
    caplog: pytest.LogCaptureFixture,
    junk: bytes,
) -> None:
    counter = Counter()
    # EOF after the request: junk that happens to announce a body cannot stall the test.
    response, _ = run(
        send_and_read(loop, http_parser, REQUEST_START + junk + b"\r\n\r\n", counter, eof=True)
    )
    assert response.status in (200, 400, 413, 417, 431, 501)
    # A 200 came from the application; a refusal of the head never reaches it
    # (a body cut short by the EOF may, and is then refused with 400).
    if response.status == 200:
        assert counter.calls == 1
    assert counter.calls <= 1
    no_errors_logged(caplog)
