"""An HTTP/1.1 server protocol with ASGI, WSGI, WebSocket and static files.

Everything here is written against PEP 3156 only (``asyncio.Protocol``,
``Transport`` and the loop's public methods), so the same server runs on
every protoshim loop::

    factory = http_server(wsgi_app=app, websockets={"/ws": echo}, static={"/assets": "static"})
    server = await loop.create_server(factory, "127.0.0.1", 8000)

See ``docs/http.md`` for the limits, the parser choice and the WSGI hook.
"""

from ._app import Router, http_server, wsgi_protocol_factory
from ._asgi import ASGIApp, ASGIHandler, Lifespan, LifespanFailed, asgi_server
from ._blocking import LOOP_ATTRIBUTE, BlockingRunner, ThreadRunner, blocking_runner_for
from ._config import HTTPConfig
from ._parse import ParserName
from ._proxy import TrustedProxies, forwarded_client
from ._server import (
    Handler,
    HTTPExchange,
    HTTPServerProtocol,
    RequestBodyError,
    ResponseError,
    ServerLoad,
)
from ._static import StaticFiles
from ._websocket import WebSocket, WebSocketClosed, WebSocketHandler, WebSocketUpgrade
from ._wsgi import WSGIApp, WSGIHandler, build_environ

__all__ = [
    "LOOP_ATTRIBUTE",
    "ASGIApp",
    "ASGIHandler",
    "BlockingRunner",
    "HTTPConfig",
    "HTTPExchange",
    "HTTPServerProtocol",
    "Handler",
    "Lifespan",
    "LifespanFailed",
    "ParserName",
    "RequestBodyError",
    "ResponseError",
    "Router",
    "ServerLoad",
    "StaticFiles",
    "ThreadRunner",
    "TrustedProxies",
    "WSGIApp",
    "WSGIHandler",
    "WebSocket",
    "WebSocketClosed",
    "WebSocketHandler",
    "WebSocketUpgrade",
    "asgi_server",
    "blocking_runner_for",
    "build_environ",
    "forwarded_client",
    "http_server",
    "wsgi_protocol_factory",
]
