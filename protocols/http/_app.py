"""Combine a WSGI application, WebSocket handlers and static directories."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from ._config import HTTPConfig
from ._server import Handler, HTTPExchange, HTTPServerProtocol, protocol_factory
from ._static import StaticFiles
from ._websocket import WebSocketHandler, WebSocketUpgrade
from ._wsgi import WSGIApp, WSGIHandler

__all__ = ["Router", "http_server", "wsgi_protocol_factory"]

ProtocolFactory = Callable[[], HTTPServerProtocol]


async def _not_found(exchange: HTTPExchange) -> None:
    await exchange.respond(404, [(b"Content-Type", b"text/plain")], b"not found\n")


class Router:
    """Send each request to a WebSocket path, a static prefix or the WSGI app.

    WebSocket paths match exactly; static prefixes match whole segments, the
    longest first; everything else goes to the WSGI application (or gets 404
    without one).  Paths are compared as received, still percent-encoded.
    """

    def __init__(
        self,
        wsgi_app: WSGIApp | None = None,
        websockets: Mapping[str, WebSocketHandler] | None = None,
        static: Mapping[str, str | os.PathLike[str]] | None = None,
        root_path: str = "",
    ) -> None:
        self._websockets: dict[bytes, Handler] = {
            path.encode("ascii"): WebSocketUpgrade(handler)
            for path, handler in (websockets or {}).items()
        }
        self._static = sorted(
            (StaticFiles(root, prefix) for prefix, root in (static or {}).items()),
            key=lambda files: len(files.prefix),
            reverse=True,
        )
        self._fallback: Handler = (
            WSGIHandler(wsgi_app, root_path) if wsgi_app is not None else _not_found
        )

    def route(self, path: bytes) -> Handler:
        """Return the handler for a request path."""
        websocket = self._websockets.get(path)
        if websocket is not None:
            return websocket
        for files in self._static:
            if path.startswith(files.prefix + b"/"):
                return files
        return self._fallback

    async def __call__(self, exchange: HTTPExchange) -> None:
        """Handle ``exchange`` with the handler its path selects."""
        await self.route(exchange.path)(exchange)


def http_server(
    wsgi_app: WSGIApp | None = None,
    websockets: Mapping[str, WebSocketHandler] | None = None,
    static: Mapping[str, str | os.PathLike[str]] | None = None,
    config: HTTPConfig | None = None,
    root_path: str = "",
) -> ProtocolFactory:
    """Return a protocol factory for ``loop.create_server`` serving all of these.

    ``websockets`` maps exact paths to WebSocket handlers, ``static`` maps URL
    prefixes to directories, and ``wsgi_app`` gets every other request,
    mounted at ``root_path``.
    """
    router = Router(wsgi_app, websockets, static, root_path)
    return protocol_factory(router, config or HTTPConfig())


def wsgi_protocol_factory(
    app: WSGIApp, config: HTTPConfig | None = None, root_path: str = ""
) -> ProtocolFactory:
    """Return a protocol factory serving the WSGI application ``app``.

    ``root_path`` is where the application is mounted (its ``SCRIPT_NAME``).
    """
    return http_server(wsgi_app=app, config=config, root_path=root_path)
