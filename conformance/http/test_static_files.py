"""Static files: no way out of the root, conditional requests, ranges, HEAD, types."""

from __future__ import annotations

import asyncio
import email.utils
import os
import pathlib

import pytest

from protoshim.conformance.http._support import (
    CountingRunner,
    Response,
    request,
    serving,
    small_config,
)
from protoshim.conformance.plugin import RunCoroutine
from protoshim.protocols.http import http_server

pytestmark = pytest.mark.requires("tcp", "threads")

SECRET = b"TOP-SECRET-CONTENT"
DATA = bytes(range(256)) * 4  # 1024 bytes


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    public = tmp_path / "public"
    (public / "sub").mkdir(parents=True)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (public / "data.bin").write_bytes(DATA)
    (public / "style.css").write_text("body { color: red; }\n")
    (public / "page.html").write_text("<p>hi</p>\n")
    (public / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (public / "noext").write_bytes(b"?")
    (public / "empty.txt").write_bytes(b"")
    (public / "sub" / "inner.txt").write_bytes(b"inner\n")
    (public / ".hidden").write_bytes(SECRET)
    (public / "link.txt").symlink_to(tmp_path / "secret.txt")
    return public


def get(
    loop: asyncio.AbstractEventLoop,
    run: RunCoroutine,
    root: pathlib.Path,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    method: str = "GET",
) -> Response:
    async def main() -> Response:
        factory = http_server(static={"/static": root}, config=small_config())
        async with serving(loop, factory) as served:
            return await served.exchange(request(method, target, headers or []), method)

    return run(main())


def get_many(
    loop: asyncio.AbstractEventLoop,
    run: RunCoroutine,
    root: pathlib.Path,
    requests: list[tuple[str, list[tuple[str, str]]]],
) -> list[Response]:
    """Fetch each (target, headers) on its own connection to one server."""

    async def main() -> list[Response]:
        factory = http_server(static={"/static": root}, config=small_config())
        async with serving(loop, factory) as served:
            return [
                await served.exchange(request("GET", target, headers))
                for target, headers in requests
            ]

    return run(main())


TRAVERSALS = [
    "/static/../secret.txt",
    "/static/sub/../../secret.txt",
    "/static/%2e%2e/secret.txt",
    "/static/%2E%2E/secret.txt",
    "/static/.%2e/secret.txt",
    "/static/..%2fsecret.txt",
    "/static/..%2Fsecret.txt",
    "/static/sub%2f..%2f..%2fsecret.txt",
    "/static/..%5csecret.txt",
    "/static/..\\secret.txt",
    "/static//secret.txt",
    "/static/sub//inner.txt",
    "/static/%252e%252e/secret.txt",
    "/static/data.bin%00.txt",
    "/static/%00",
    "/static/.hidden",
    "/static/link.txt",
    "/static/sub",
    "/static/sub/",
    "/static/",
    "/static/%ff",
    "/static/missing.txt",
]


def test_nothing_outside_the_root_and_no_directories(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    responses = get_many(loop, run, root, [(target, []) for target in TRAVERSALS])
    served = {
        target: response.status
        for target, response in zip(TRAVERSALS, responses, strict=True)
        if response.status not in (403, 404) or SECRET in response.body
    }
    assert served == {}


def test_file_is_served_with_validators(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    response = get(loop, run, root, "/static/data.bin")
    assert response.status == 200
    assert response.body == DATA
    assert response.header("content-length") == str(len(DATA))
    assert response.header("accept-ranges") == "bytes"
    etag = response.header("etag")
    assert etag is not None and etag.startswith('"') and etag.endswith('"')
    modified = response.header("last-modified")
    assert modified is not None
    stamp = email.utils.parsedate_to_datetime(modified).timestamp()
    assert int(stamp) == int(os.stat(root / "data.bin").st_mtime)


def test_nested_and_empty_files(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    assert get(loop, run, root, "/static/sub/inner.txt").body == b"inner\n"
    empty = get(loop, run, root, "/static/empty.txt")
    assert (empty.status, empty.body, empty.header("content-length")) == (200, b"", "0")


def test_content_type_comes_from_the_extension(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    expected = {
        "style.css": "text/css",
        "page.html": "text/html",
        "image.png": "image/png",
        "noext": "application/octet-stream",
    }
    responses = get_many(loop, run, root, [(f"/static/{name}", []) for name in expected])
    seen = {
        name: (response.header("content-type") or "").split(";")[0]
        for name, response in zip(expected, responses, strict=True)
    }
    assert seen == expected


def test_head_has_headers_and_no_body(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    response = get(loop, run, root, "/static/data.bin", method="HEAD")
    assert response.status == 200
    assert response.body == b""
    assert response.header("content-length") == str(len(DATA))


def test_other_methods_get_405(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    response = get(loop, run, root, "/static/data.bin", method="DELETE")
    assert response.status == 405
    assert response.header("allow") == "GET, HEAD"


def etag_of(loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path) -> str:
    etag = get(loop, run, root, "/static/data.bin", method="HEAD").header("etag")
    assert etag is not None
    return etag


def test_matching_if_none_match_gives_304(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    etag = etag_of(loop, run, root)
    forms = [etag, f"W/{etag}", f'"other", {etag}', "*"]
    responses = get_many(
        loop, run, root, [("/static/data.bin", [("If-None-Match", form)]) for form in forms]
    )
    for form, response in zip(forms, responses, strict=True):
        assert (form, response.status, response.body) == (form, 304, b"")
        assert response.header("etag") == etag


def test_other_etag_gets_the_file(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    response = get(loop, run, root, "/static/data.bin", [("If-None-Match", '"nope"')])
    assert (response.status, response.body) == (200, DATA)


def test_if_modified_since(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    mtime = os.stat(root / "data.bin").st_mtime
    cases = {"later": (3600, 304), "same": (0, 304), "earlier": (-3600, 200)}
    requests = [
        (
            "/static/data.bin",
            [("If-Modified-Since", email.utils.formatdate(mtime + offset, usegmt=True))],
        )
        for offset, _ in cases.values()
    ]
    statuses = [response.status for response in get_many(loop, run, root, requests)]
    assert statuses == [status for _, status in cases.values()]


def test_unparsable_if_modified_since_is_ignored(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    response = get(loop, run, root, "/static/data.bin", [("If-Modified-Since", "yesterday")])
    assert response.status == 200


def test_if_none_match_wins_over_if_modified_since(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    since = email.utils.formatdate(os.stat(root / "data.bin").st_mtime + 3600, usegmt=True)
    headers = [("If-None-Match", '"nope"'), ("If-Modified-Since", since)]
    assert get(loop, run, root, "/static/data.bin", headers).status == 200


SATISFIABLE = [
    ("bytes=0-9", 0, 10),
    ("bytes=1000-", 1000, 1024),
    ("bytes=-5", 1019, 1024),
    ("bytes=100-99999", 100, 1024),
    ("bytes=-5000", 0, 1024),
    ("bytes=1023-1023", 1023, 1024),
]


def test_single_range_gives_206(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    requests = [("/static/data.bin", [("Range", spec)]) for spec, _, _ in SATISFIABLE]
    for (spec, start, end), response in zip(
        SATISFIABLE, get_many(loop, run, root, requests), strict=True
    ):
        assert (spec, response.status) == (spec, 206)
        assert response.body == DATA[start:end]
        assert response.header("content-range") == f"bytes {start}-{end - 1}/{len(DATA)}"
        assert response.header("content-length") == str(end - start)


def test_unsatisfiable_range_gives_416(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    specs = ["bytes=1024-", "bytes=5000-6000", "bytes=-0"]
    responses = get_many(loop, run, root, [("/static/data.bin", [("Range", s)]) for s in specs])
    for spec, response in zip(specs, responses, strict=True):
        assert (spec, response.status) == (spec, 416)
        assert response.header("content-range") == f"bytes */{len(DATA)}"


def test_unusable_range_is_ignored(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    specs = ["bytes=0-1,5-6", "bytes=9-3", "items=0-1", "bytes=-", "bytes=a-b"]
    responses = get_many(loop, run, root, [("/static/data.bin", [("Range", s)]) for s in specs])
    for spec, response in zip(specs, responses, strict=True):
        assert (spec, response.status, response.body) == (spec, 200, DATA)


def test_if_range_with_a_stale_etag_sends_everything(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, root: pathlib.Path
) -> None:
    etag = etag_of(loop, run, root)
    fresh = get(loop, run, root, "/static/data.bin", [("Range", "bytes=0-1"), ("If-Range", etag)])
    stale = get(
        loop, run, root, "/static/data.bin", [("Range", "bytes=0-1"), ("If-Range", '"old"')]
    )
    assert (fresh.status, fresh.body) == (206, DATA[:2])
    assert (stale.status, stale.body) == (200, DATA)


def test_file_is_read_in_chunks(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, tmp_path: pathlib.Path
) -> None:
    content = os.urandom(1024 * 1024)
    (tmp_path / "big.bin").write_bytes(content)
    runner = CountingRunner()
    config = small_config(blocking_runner=runner, file_chunk_size=64 * 1024)

    async def main() -> Response:
        factory = http_server(static={"/s": tmp_path}, config=config)
        async with serving(loop, factory) as served:
            return await served.exchange(request("GET", "/s/big.bin"))

    response = run(main())
    assert response.body == content
    # one run to open the file, then one per 64 KiB piece: never one big read
    assert runner.runs == 1 + len(content) // (64 * 1024)
