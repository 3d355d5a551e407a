"""The Flask page, the WebSocket echo and the server that combines them."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable

from flask import Flask, render_template

from protoshim.protocols.http import HTTPConfig, WebSocket, http_server

__all__ = ["STATIC_DIR", "WS_PATH", "create_app", "echo", "protocol_factory"]

HERE = pathlib.Path(__file__).resolve().parent
#: the stylesheet's directory, served at /assets
STATIC_DIR = HERE / "static"
#: where the page's WebSocket connects
WS_PATH = "/ws"


def create_app(port: int) -> Flask:
    """Create the Flask app serving the Echo Test page.

    ``port`` only names the fallback WebSocket address for a page that was
    not loaded over HTTP; a served page connects to the host it came from.
    """
    app = Flask(__name__, static_folder=None, template_folder=str(HERE / "templates"))

    @app.get("/")
    def index() -> str:
        return render_template("index.html", ws_path=WS_PATH, fallback_host=f"127.0.0.1:{port}")

    return app


async def echo(ws: WebSocket) -> None:
    """Send every message back to its sender."""
    async for message in ws:
        await ws.send(message)


def protocol_factory(port: int, config: HTTPConfig | None = None) -> Callable[[], asyncio.Protocol]:
    """Return the protocol factory serving the whole demo, for ``loop.create_server``."""
    return http_server(
        wsgi_app=create_app(port).wsgi_app,
        websockets={WS_PATH: echo},
        static={"/assets": STATIC_DIR},
        config=config,
    )
