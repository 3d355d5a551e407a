"""Well-known asyncio libraries, unchanged, on every framework's loop."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import protoshim

web = pytest.importorskip("aiohttp.web", reason="aiohttp is not installed")

FRAMEWORKS = ["asyncio", "selectors", "twisted", "tornado", "gevent", "pyuv", "uvloop"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_aiohttp_file_response_sends_the_whole_file(framework: str, tmp_path: Path) -> None:
    # FileResponse sends with loop.sendfile(): zero-copy where the loop can.
    if framework not in protoshim.frameworks():
        pytest.skip(f"{framework} is not installed")
    data = os.urandom(3 * 1024 * 1024 + 7)
    path = tmp_path / "file.bin"
    path.write_bytes(data)

    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    async def main() -> bytes:
        app = web.Application()
        app.router.add_get("/file", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /file HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            response = await asyncio.wait_for(reader.read(), 20)
            writer.close()
            await writer.wait_closed()
            return response
        finally:
            await runner.cleanup()

    response = protoshim.run(main(), framework=framework)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:80]
    assert len(body) == len(data)
    assert body == data
