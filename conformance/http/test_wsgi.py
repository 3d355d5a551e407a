"""The WSGI container: environ, streamed input, PEP 3333 error handling, the runner hook.

Every application here is wrapped in :func:`wsgiref.validate.validator`
(except where a comment says why not): a violation it detects fails the
request with a 500, and an unclosed iterable fails the test when collected.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import h11
import pytest

from protoshim.conformance._helpers import wait_until
from protoshim.conformance.http._support import (
    CountingRunner,
    Environ,
    Response,
    StartResponse,
    request,
    serving,
    small_config,
    validated,
)
from protoshim.conformance.plugin import RunCoroutine
from protoshim.examples.echo_test import create_app
from protoshim.protocols.http import WSGIApp, http_server

pytestmark = pytest.mark.requires("tcp", "threads")

TEXT = [("Content-Type", "text/plain")]


def fetch(
    loop: asyncio.AbstractEventLoop,
    run: RunCoroutine,
    app: WSGIApp,
    data: bytes,
    method: str = "GET",
) -> tuple[int, dict[str, str], bytes]:
    """Serve ``app``, send ``data``, return status, headers and body."""

    async def main() -> tuple[int, dict[str, str], bytes]:
        async with serving(loop, wsgi_app=app, config=small_config()) as served:
            response = await served.exchange(data, method)
            headers = {k.decode(): v.decode("latin-1") for k, v in response.headers}
            return response.status, headers, response.body

    return run(main())


def test_environ_describes_the_request(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    keys = [
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "SERVER_PROTOCOL",
        "CONTENT_TYPE",
        "CONTENT_LENGTH",
        "REMOTE_ADDR",
        "HTTP_HOST",
        "HTTP_X_MULTI",
        "HTTP_COOKIE",
        "HTTP_X_UNDER_SCORE",
        "wsgi.url_scheme",
        "wsgi.multithread",
        "wsgi.input_terminated",
    ]

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        seen = {key: environ.get(key) for key in keys}
        seen["body"] = environ["wsgi.input"].read(length).decode()
        seen["SERVER_PORT"] = environ["SERVER_PORT"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(seen).encode()]

    data = request(
        "POST",
        "/caf%C3%A9/a%20b?x=1&y=%20",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", "4"),
            ("X-Multi", "a"),
            ("X-Multi", "b"),
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
            ("X_Under_Score", "dropped"),
        ],
        b"body",
    )
    status, _, body = fetch(loop, run, validated(app), data)
    assert status == 200
    seen = json.loads(body)
    assert seen["REQUEST_METHOD"] == "POST"
    assert seen["SCRIPT_NAME"] == ""
    # PEP 3333: decoded path bytes carried as latin-1 code points.
    assert seen["PATH_INFO"] == "/café/a b".encode().decode("latin-1")
    assert seen["QUERY_STRING"] == "x=1&y=%20"
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert seen["CONTENT_TYPE"] == "text/plain"
    assert seen["CONTENT_LENGTH"] == "4"
    assert seen["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["HTTP_HOST"] == "test"
    assert seen["HTTP_X_MULTI"] == "a, b"
    assert seen["HTTP_COOKIE"] == "a=1; b=2"
    assert seen["HTTP_X_UNDER_SCORE"] is None
    assert seen["wsgi.url_scheme"] == "http"
    assert seen["wsgi.multithread"] is True
    assert seen["wsgi.input_terminated"] is True
    assert seen["body"] == "body"
    assert int(seen["SERVER_PORT"]) > 0


def test_input_stream_reads_lines_and_sizes(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        first = stream.readline()
        two = stream.read(2)
        limited = stream.readline(3)
        rest = list(stream)
        start_response("200 OK", TEXT)
        return [
            json.dumps(
                [first.decode(), two.decode(), limited.decode(), [r.decode() for r in rest]]
            ).encode()
        ]

    body = b"alpha\nbeta\ngamma\ndelta"
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:3], body[3:13], body[13:])
    )
    data = request("POST", headers=[("Transfer-Encoding", "chunked")]) + chunked + b"0\r\n\r\n"
    status, _, out = fetch(loop, run, validated(app), data)
    assert status == 200
    assert json.loads(out) == ["alpha\n", "be", "ta\n", ["gamma\n", "delta"]]


def test_large_body_is_streamed_to_the_app(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    sizes: list[int] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        digest = hashlib.sha256()
        while chunk := environ["wsgi.input"].read(65536):
            sizes.append(len(chunk))
            digest.update(chunk)
        start_response("200 OK", TEXT)
        return [digest.hexdigest().encode()]

    payload = bytes(range(256)) * 16384  # 4 MiB
    data = request("POST", headers=[("Content-Length", str(len(payload)))], body=payload)
    status, _, out = fetch(loop, run, validated(app), data)
    assert status == 200
    assert out == hashlib.sha256(payload).hexdigest().encode()
    assert max(sizes) <= 65536
    assert len(sizes) >= len(payload) // 65536


def test_exception_before_start_response_gives_500(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        raise RuntimeError("application bug")

    status, _, _ = fetch(loop, run, validated(app), request())
    assert status == 500


def test_exception_before_the_first_body_bytes_gives_500(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        yield b""  # an empty chunk must not send the head (PEP 3333)
        raise RuntimeError("failed before any body")

    status, _, _ = fetch(loop, run, validated(app), request())
    assert status == 500


def test_start_response_with_exc_info_replaces_an_unsent_head(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        try:
            raise ValueError("late problem")
        except ValueError:
            start_response("503 Service Unavailable", TEXT, sys.exc_info())
        return [b"sorry"]

    status, _, body = fetch(loop, run, validated(app), request())
    assert (status, body) == (503, b"sorry")


@pytest.mark.parametrize("how", ["raise", "exc_info"])
def test_exception_after_the_body_started_aborts_the_connection(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, how: str
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        yield b"partial"
        try:
            raise RuntimeError("failed mid-body")
        except RuntimeError:
            if how == "raise":
                raise
            start_response("500 Internal Server Error", TEXT, sys.exc_info())
        yield b"never sent"

    async def main() -> bytes:
        async with serving(loop, wsgi_app=validated(app)) as served:
            client = await served.connect()
            client.send(request())
            with pytest.raises(h11.RemoteProtocolError):
                await client.response()
            return bytes(client.data)

    received = run(main())
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"partial" in received
    assert b"never sent" not in received
    assert not received.endswith(b"0\r\n\r\n")  # no last chunk: the client can tell


@pytest.mark.parametrize("as_list", [False, True], ids=["iterable", "list"])
def test_body_shorter_than_content_length_closes_the_connection(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, as_list: bool
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [*TEXT, ("Content-Length", "10")])
        return [b"123", b"45"] if as_list else iter([b"12345"])

    async def main() -> bytes:
        # Not validated as a list: the validator's wrapper hides that the body is one.
        async with serving(loop, wsgi_app=app if as_list else validated(app)) as served:
            client = await served.connect()
            client.send(request() + request(target="/second"))
            with pytest.raises(h11.RemoteProtocolError):
                await client.response()
            return bytes(client.data)

    received = run(main())
    assert received.endswith(b"\r\n\r\n12345")  # what there was, then a close
    assert received.count(b"HTTP/1.1") == 1  # the second request was not answered


@pytest.mark.parametrize("as_list", [False, True], ids=["iterable", "list"])
def test_body_longer_than_content_length_is_not_sent(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, as_list: bool
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [*TEXT, ("Content-Length", "3")])
        return [b"12345"] if as_list else iter([b"12345"])

    async def main() -> bytes:
        # Not validated as a list: the validator's wrapper hides that the body is one.
        async with serving(loop, wsgi_app=app if as_list else validated(app)) as served:
            client = await served.connect()
            client.send(request())
            await client.closed()
            return bytes(client.data)

    assert b"12345" not in run(main())


def test_write_callable_and_iterable_are_sent_in_order(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", TEXT)
        write(b"one ")
        write(b"two ")
        return [b"three"]

    status, _, body = fetch(loop, run, validated(app), request())
    assert (status, body) == (200, b"one two three")


@pytest.mark.parametrize("fail", [False, True], ids=["completed", "failed"])
def test_close_is_called_on_the_iterable(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, fail: bool
) -> None:
    closed = threading.Event()

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"a"
            if fail:
                raise RuntimeError("mid-body")
            yield b"b"

        def close(self) -> None:
            closed.set()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        return Body()

    async def main() -> None:
        async with serving(loop, wsgi_app=validated(app)) as served:
            client = await served.connect()
            client.send(request())
            if fail:
                with pytest.raises(h11.RemoteProtocolError):
                    await client.response()
            else:
                assert (await client.response()).body == b"ab"

    run(main())
    assert closed.is_set()


def test_single_item_body_gets_content_length_in_one_response(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    # Not validated: the validator's wrapper hides that the body is a list,
    # which is exactly what lets the server compute Content-Length.
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        return [b"whole body"]

    status, headers, body = fetch(loop, run, app, request())
    assert status == 200
    assert headers["content-length"] == "10"
    assert "transfer-encoding" not in headers
    assert body == b"whole body"


def test_head_request_drops_the_app_body(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [*TEXT, ("Content-Length", "11")])
        return [b"hello world"]

    async def main() -> tuple[bytes, bytes]:
        async with serving(loop, wsgi_app=validated(app)) as served:
            client = await served.connect()
            client.send(request("HEAD") + request("GET"))
            head = await client.response("HEAD")
            get = await client.response("GET")
            assert head.header("content-length") == "11"
            return head.body, get.body

    assert run(main()) == (b"", b"hello world")


def test_configured_blocking_runner_is_used(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    runner = CountingRunner()
    runner.multithread = False

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", TEXT)
        return [repr(environ["wsgi.multithread"]).encode()]

    async def main() -> bytes:
        # validated(): its wrapper is an iterable, so the worker calls back into the loop.
        factory = http_server(wsgi_app=validated(app), config=small_config(blocking_runner=runner))
        async with serving(loop, factory) as served:
            return (await served.exchange(request())).body

    assert run(main()) == b"False"
    assert runner.runs == 1
    assert runner.calls >= 1


def serve_counted(
    loop: asyncio.AbstractEventLoop,
    run: RunCoroutine,
    app: WSGIApp,
    data: bytes,
    method: str = "GET",
) -> tuple[CountingRunner, Response]:
    """Serve ``app`` through a :class:`CountingRunner`; return it and the response."""
    runner = CountingRunner()

    async def main() -> Response:
        factory = http_server(wsgi_app=app, config=small_config(blocking_runner=runner))
        async with serving(loop, factory) as served:
            return await served.exchange(data, method)

    return runner, run(main())


# Not validated below: the validator's wrapper hides that the body is a list.


@pytest.mark.parametrize(
    ("body", "length"),
    [
        pytest.param([b"Hello, World!"], True, id="own-content-length"),
        pytest.param((b"Hello, ", b"World!"), True, id="tuple-own-content-length"),
        pytest.param([b"Hello, World!"], False, id="computed-content-length"),
        pytest.param([], False, id="empty"),
    ],
)
def test_list_body_is_sent_without_waiting_for_the_loop(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, body: list[bytes], length: bool
) -> None:
    whole = b"".join(body)
    headers = [*TEXT, ("Content-Length", str(len(whole)))] if length else TEXT

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", headers)
        return body

    runner, response = serve_counted(loop, run, app, request())
    assert (response.status, response.body) == (200, whole)
    assert response.header("content-length") == str(len(whole))
    assert response.header("transfer-encoding") is None
    assert runner.runs == 1
    assert runner.calls == 0  # the worker never waited on the loop


def test_list_of_several_items_without_length_is_chunked(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[Any]:
        start_response("200 OK", TEXT)
        return [b"one ", b"", bytearray(b"two "), b"three"]  # bytes-like items are accepted

    runner, response = serve_counted(loop, run, app, request())
    assert (response.status, response.body) == (200, b"one two three")
    assert response.header("transfer-encoding") == "chunked"
    assert response.header("content-length") is None
    assert runner.calls == 0


def test_generator_body_is_iterated_in_the_worker(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    threads: list[int] = []
    closed = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        try:
            for part in (b"one ", b"two ", b"three"):
                threads.append(threading.get_ident())
                yield part
        finally:
            closed.set()

    runner, response = serve_counted(loop, run, app, request())
    assert (response.status, response.body) == (200, b"one two three")
    assert response.header("transfer-encoding") == "chunked"
    assert closed.is_set()
    assert threading.get_ident() not in threads
    assert runner.calls == 1  # chunks go to the loop without waiting; the end waits


def test_a_client_that_stops_reading_pauses_a_streaming_application(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    chunk, count = b"x" * 65536, 256  # 16 MiB: more than loopback buffers hold
    produced: list[int] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        for i in range(count):
            produced.append(i)
            yield chunk

    async def main() -> tuple[int, int, Response]:
        async with serving(loop, wsgi_app=validated(app), config=small_config()) as served:
            client = await served.connect()
            client.tr.pause_reading()
            client.send(request())
            await wait_until(lambda: len(produced) > 0, "the application to start")
            stalled = -1
            while stalled != len(produced):  # until the application stops advancing
                stalled = len(produced)
                await asyncio.sleep(0.2)
            client.tr.resume_reading()
            response = await client.response()
            return stalled, len(produced), response

    stalled, total, response = run(main())
    assert stalled < count, "the application ran to the end while the client read nothing"
    assert total == count
    assert response.body == chunk * count


def test_list_with_close_is_closed_after_its_response(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    received = threading.Event()
    seen: list[tuple[bool, int]] = []

    class Body(list[bytes]):
        def close(self) -> None:
            # Blocks the response if called before it is sent.
            seen.append((received.wait(5), threading.get_ident()))

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [*TEXT, ("Content-Length", "5")])
        return Body([b"hello"])

    runner = CountingRunner()

    async def main() -> Response:
        factory = http_server(wsgi_app=app, config=small_config(blocking_runner=runner))
        async with serving(loop, factory) as served:
            response = await served.exchange(request())
            received.set()
            await wait_until(lambda: bool(seen), "close() to be called")
            return response

    response = run(main())
    assert (response.status, response.body) == (200, b"hello")
    assert seen[0][0], "close() was called before the response was sent"
    assert seen[0][1] != threading.get_ident()  # in the worker, not on the loop
    assert runner.calls == 1  # the whole response in one round trip, then close()


@pytest.mark.parametrize("length", [True, False], ids=["own-content-length", "computed"])
def test_head_request_with_a_list_body(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, length: bool
) -> None:
    headers = [*TEXT, ("Content-Length", "11")] if length else TEXT

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", headers)
        return [b"hello world"]

    async def main() -> tuple[Response, Response]:
        async with serving(loop, wsgi_app=app) as served:
            client = await served.connect()
            client.send(request("HEAD") + request("GET"))
            return await client.response("HEAD"), await client.response("GET")

    head, get = run(main())
    assert (head.status, head.header("content-length"), head.body) == (200, "11", b"")
    assert (get.status, get.header("content-length"), get.body) == (200, "11", b"hello world")


@pytest.mark.parametrize("shape", ["list", "list-chunked", "generator"])
def test_one_mebibyte_body_arrives_intact(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, shape: str
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if shape == "list":
            start_response("200 OK", [*TEXT, ("Content-Length", str(len(payload)))])
            return [payload]
        start_response("200 OK", TEXT)
        if shape == "list-chunked":
            return [payload[:100], payload[100:]]
        return iter([payload[:100], payload[100:]])

    response = run_fetch_response(loop, run, app)
    assert response.status == 200
    assert hashlib.sha256(response.body).digest() == hashlib.sha256(payload).digest()
    chunked = response.header("transfer-encoding") == "chunked"
    assert chunked == (shape != "list")


def run_fetch_response(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, app: WSGIApp
) -> Response:
    """Serve ``app`` and return the response to one GET."""

    async def main() -> Response:
        async with serving(loop, wsgi_app=app, config=small_config()) as served:
            return await served.exchange(request())

    return run(main())


def test_list_item_that_is_not_bytes_gives_500(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[Any]:
        start_response("200 OK", TEXT)
        return [b"fine", "not bytes"]

    status, _, _ = fetch(loop, run, app, request())
    assert status == 500


def test_validator_accepts_the_echo_test_flask_page(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    status, headers, body = fetch(loop, run, validated(create_app(8000).wsgi_app), request())
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b"<title>Echo Test</title>" in body
