"""Real ASGI applications, unchanged, on the loop under test: Starlette, FastAPI, Django.

The clients are the ones people use (httpx, websockets), run in a thread
of their own so that only the server is on the loop under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import pathlib
import sys
import types
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest

from protoshim.conformance.http._support import serving, small_config
from protoshim.conformance.plugin import RunCoroutine
from protoshim.protocols.http import ASGIApp, Lifespan, asgi_server

httpx = pytest.importorskip("httpx", reason="the ASGI app tests need the test extra (httpx)")
ws_client = pytest.importorskip(
    "websockets.sync.client", reason="the ASGI app tests need the test extra (websockets)"
)

pytestmark = pytest.mark.requires("tcp", "threads")

T = TypeVar("T")


@contextlib.asynccontextmanager
async def running(loop: asyncio.AbstractEventLoop, app: ASGIApp) -> AsyncIterator[str]:
    """Serve ``app`` with its lifespan (auto) and yield its base URL."""
    lifespan = Lifespan(app, "auto")
    await lifespan.startup()
    try:
        async with serving(loop, asgi_server(app, small_config(), lifespan=lifespan)) as served:
            yield f"127.0.0.1:{served.port}"
    finally:
        await lifespan.shutdown()


async def in_thread(func: Callable[..., T], *args: Any) -> T:
    """Run a blocking client call in a worker thread of the loop under test."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(func, *args))


def http_get(url: str) -> Any:
    with httpx.Client(timeout=10) as client:
        response = client.get(url)
        response.read()
        return response


def ws_echo(url: str, messages: list[str | bytes]) -> list[str | bytes]:
    with ws_client.connect(url, open_timeout=10, close_timeout=5) as socket:
        replies = []
        for message in messages:
            socket.send(message)
            replies.append(socket.recv(timeout=10))
        return replies


# -- Starlette -----------------------------------------------------------


def starlette_app(files: pathlib.Path) -> ASGIApp:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, str]]:
        yield {"greeting": "hello"}

    async def home(request: Request) -> JSONResponse:
        return JSONResponse(
            {"greeting": request.state.greeting, "query": request.query_params["q"]}
        )

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"length": len(await request.body())})

    async def stream(request: Request) -> StreamingResponse:
        async def numbers() -> AsyncIterator[str]:
            for number in range(5):
                yield f"{number}\n"

        return StreamingResponse(numbers(), media_type="text/plain")

    async def file(request: Request) -> FileResponse:
        return FileResponse(files / "page.html")

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text(text.upper())

    routes = [
        Route("/", home),
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream),
        Route("/file", file),
        WebSocketRoute("/ws", socket),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def test_starlette(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, tmp_path: pathlib.Path
) -> None:
    page = b"<h1>" + b"x" * 200_000 + b"</h1>"
    (tmp_path / "page.html").write_bytes(page)
    app = starlette_app(tmp_path)

    def posted(url: str) -> Any:
        with httpx.Client(timeout=10) as client:
            return client.post(url, content=b"z" * 300_000)

    async def main() -> None:
        async with running(loop, app) as host:
            home = await in_thread(http_get, f"http://{host}/?q=caf%C3%A9")
            assert home.json() == {"greeting": "hello", "query": "café"}
            assert (await in_thread(posted, f"http://{host}/echo")).json() == {"length": 300_000}
            streamed = await in_thread(http_get, f"http://{host}/stream")
            assert streamed.headers["transfer-encoding"] == "chunked"
            assert streamed.text == "0\n1\n2\n3\n4\n"
            file = await in_thread(http_get, f"http://{host}/file")
            assert file.headers["content-type"].startswith("text/html")
            assert file.content == page
            assert await in_thread(ws_echo, f"ws://{host}/ws", ["one", "two"]) == ["ONE", "TWO"]
            assert (await in_thread(http_get, f"http://{host}/missing")).status_code == 404

    run(main(), timeout=30)


# -- FastAPI -------------------------------------------------------------

fastapi = pytest.importorskip("fastapi", reason="the ASGI app tests need the test extra")
pydantic = pytest.importorskip("pydantic", reason="FastAPI depends on it")


class Item(pydantic.BaseModel):  # type: ignore[misc,name-defined]
    """A request body, at module level: FastAPI resolves annotations in module globals."""

    name: str
    price: float


def fastapi_app() -> ASGIApp:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    api = fastapi.FastAPI(lifespan=lifespan)

    @api.get("/items/{item_id}")
    async def read(item_id: int) -> dict[str, Any]:
        return {"id": item_id, "events": events}

    @api.post("/items")
    async def create(item: Item) -> dict[str, Any]:
        return {"name": item.name, "with_tax": round(item.price * 1.2, 2)}

    @api.websocket("/ws")
    async def socket(websocket: fastapi.WebSocket) -> None:  # type: ignore[name-defined]
        await websocket.accept()
        while True:
            data = await websocket.receive_bytes()
            await websocket.send_bytes(data[::-1])

    app: ASGIApp = api
    return app


def test_fastapi(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    app = fastapi_app()

    def post(url: str, body: dict[str, Any]) -> Any:
        with httpx.Client(timeout=10) as client:
            return client.post(url, json=body)

    async def main() -> None:
        async with running(loop, app) as host:
            item = await in_thread(http_get, f"http://{host}/items/7")
            assert item.json() == {"id": 7, "events": ["startup"]}
            created = await in_thread(post, f"http://{host}/items", {"name": "tea", "price": 2.5})
            assert created.json() == {"name": "tea", "with_tax": 3.0}
            invalid = await in_thread(post, f"http://{host}/items", {"name": "tea"})
            assert invalid.status_code == 422
            assert await in_thread(ws_echo, f"ws://{host}/ws", [b"abc"]) == [b"cba"]
            docs = await in_thread(http_get, f"http://{host}/openapi.json")
            assert "/items/{item_id}" in docs.json()["paths"]

    run(main(), timeout=30)


# -- Django --------------------------------------------------------------


def django_app() -> ASGIApp:
    django = pytest.importorskip("django", reason="the ASGI app tests need the test extra (django)")
    from django.conf import settings

    urls = types.ModuleType("protoshim_conformance_django_urls")
    sys.modules[urls.__name__] = urls
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="conformance-only",
            ALLOWED_HOSTS=["127.0.0.1"],
            ROOT_URLCONF=urls.__name__,
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
        )
        django.setup()
    from django.core.asgi import get_asgi_application
    from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
    from django.urls import path

    async def hello(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"method": request.method, "q": request.GET.get("q")})

    def sync_view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(f"{len(request.body)} bytes", content_type="text/plain")

    async def stream(request: HttpRequest) -> StreamingHttpResponse:
        async def parts() -> AsyncIterator[bytes]:
            for part in (b"a", b"b", b"c"):
                yield part

        return StreamingHttpResponse(parts())

    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("hello", hello),
        path("sync", sync_view),
        path("stream", stream),
    ]
    app: ASGIApp = get_asgi_application()
    return app


def test_django(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    app = django_app()

    def post(url: str) -> Any:
        with httpx.Client(timeout=10) as client:
            return client.post(url, content=b"0123456789")

    async def main() -> None:
        # Django's handler refuses the lifespan scope: "auto" goes on without it.
        async with running(loop, app) as host:
            hello = await in_thread(http_get, f"http://{host}/hello?q=1")
            assert json.loads(hello.content) == {"method": "GET", "q": "1"}
            assert (await in_thread(post, f"http://{host}/sync")).text == "10 bytes"
            assert (await in_thread(http_get, f"http://{host}/stream")).content == b"abc"
            assert (await in_thread(http_get, f"http://{host}/nothing")).status_code == 404

    run(main(), timeout=30)
