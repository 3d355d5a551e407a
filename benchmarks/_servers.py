"""Serve one benchmark server in this process until SIGTERM.

``python -m benchmarks._servers KIND IMPL FRAMEWORK`` binds 127.0.0.1 on a
free port, prints that port on a line of its own once it accepts, and serves
until SIGTERM.

========  ===========  ==================================================
KIND      IMPL         what serves
========  ===========  ==================================================
echo      protoshim    ``EchoServer`` on ``protoshim.new_event_loop(FW)``
echo      native       an echo written the framework's own way
http      protoshim    ``wsgi_protocol_factory(app)`` on protoshim's loop
http      wsgi         the framework's own WSGI server, same ``app``
http      native       the framework's own non-WSGI handler, same bytes
asgi      protoshim    ``asgi_server(asgi_app)`` on protoshim's loop
asgi      uvicorn      uvicorn, httptools and websockets, ``asgi_app``
asgi      daphne       Daphne (Twisted's asyncio reactor), ``asgi_app``
asgi      hypercorn    Hypercorn on asyncio, ``asgi_app``
asgi      native       the framework's fastest own server, same bytes
========  ===========  ==================================================

Every server sets TCP_NODELAY on its connections, as protoshim's transports
do, so no row waits on Nagle's algorithm and a delayed ACK.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

HOST = "127.0.0.1"
HELLO = b"Hello, World!"
BIG = b"x" * (1 << 20)
READ_SIZE = 1 << 16
BACKLOG = 4096


def response_for(path: str) -> tuple[str, bytes]:
    """Return the content type and body every server sends for ``path``.

    ``/1m`` is 1 MiB, ``/json`` a small dict serialized anew for each
    request, anything else ``Hello, World!``.
    """
    if path == "/1m":
        return "text/plain", BIG
    if path == "/json":
        return "application/json", json.dumps({"message": "Hello, World!"}).encode()
    return "text/plain", HELLO


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer each path with ``response_for(path)``."""
    content_type, body = response_for(environ.get("PATH_INFO", "/"))
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


Message = MutableMapping[str, Any]


async def asgi_app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Answer HTTP with ``response_for(path)``; echo every WebSocket message."""
    if scope["type"] == "http":
        content_type, body = response_for(scope["path"])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                break
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Linux copies TCP_NODELAY from a listener to the sockets it accepts, so
    # every server below has it, whatever its own default.
    _nodelay(sock)
    sock.bind((HOST, 0))
    # A deep backlog keeps a burst of connections (the accept storm) from
    # waiting on SYN retransmits; every server keeps this one.
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def _ready(sock: socket.socket) -> None:
    print(sock.getsockname()[1], flush=True)


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# ---- echo ------------------------------------------------------------------


class _AsyncioEcho(asyncio.Protocol):
    """Write back what arrives: the textbook asyncio echo."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def _serve_asyncio_loop(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.BaseProtocol],
    sock: socket.socket,
) -> None:
    # create_server() listens again, with 100 unless told otherwise.
    server = loop.run_until_complete(loop.create_server(factory, sock=sock, backlog=BACKLOG))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    _ready(sock)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


def echo_native(framework: str, sock: socket.socket) -> None:
    """Serve an echo written for ``framework`` alone."""
    if framework == "asyncio":
        _serve_asyncio_loop(asyncio.new_event_loop(), _AsyncioEcho, sock)
    elif framework == "uvloop":
        import uvloop

        _serve_asyncio_loop(uvloop.new_event_loop(), _AsyncioEcho, sock)
    elif framework == "selectors":
        _selectors_echo(sock)
    elif framework == "twisted":
        _twisted_echo(sock)
    elif framework == "tornado":
        _tornado_echo(sock)
    elif framework == "gevent":
        _gevent_echo(sock)
    elif framework == "pyuv":
        _pyuv_echo(sock)
    else:
        raise SystemExit(f"no native echo for {framework!r}")


def _selectors_echo(listener: socket.socket) -> None:
    import selectors

    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, bytearray] = {}

    def on_term(signum: int, frame: object) -> None:
        # select() is retried after a handler that returns (PEP 475).
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    sel.register(listener, selectors.EVENT_READ)
    _ready(listener)
    while True:
        for key, mask in sel.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            if sock is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                _nodelay(conn)
                sel.register(conn, selectors.EVENT_READ)
                continue
            if mask & selectors.EVENT_WRITE:
                buf = pending[sock]
                try:
                    del buf[: sock.send(buf)]
                except BlockingIOError:
                    pass
                if not buf:
                    del pending[sock]
                    sel.modify(sock, selectors.EVENT_READ)
            if mask & selectors.EVENT_READ:
                try:
                    data = sock.recv(READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    pending.pop(sock, None)
                    sock.close()
                elif sock in pending:
                    pending[sock] += data
                else:
                    try:
                        sent = sock.send(data)
                    except BlockingIOError:
                        sent = 0
                    if sent < len(data):
                        pending[sock] = bytearray(data[sent:])
                        sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)


def _twisted_echo(sock: socket.socket) -> None:
    from twisted.internet import protocol

    class Echo(protocol.Protocol):
        transport: Any

        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    factory = protocol.Factory.forProtocol(Echo)
    _twisted_run(sock, factory)


def _twisted_run(sock: socket.socket, factory: Any) -> None:
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, factory)
    _ready(sock)
    sock.close()  # the reactor holds its own duplicate of the descriptor
    reactor.run()


def _tornado_echo(sock: socket.socket) -> None:
    from tornado.iostream import IOStream, StreamClosedError
    from tornado.tcpserver import TCPServer

    class Echo(TCPServer):
        async def handle_stream(self, stream: IOStream, address: Any) -> None:
            stream.set_nodelay(True)
            try:
                while True:
                    data = await stream.read_bytes(READ_SIZE, partial=True)
                    await stream.write(data)
            except StreamClosedError:
                pass

    _tornado_run(sock, Echo)


def _tornado_run(sock: socket.socket, make_server: Callable[[], Any]) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def start() -> None:
        server = make_server()
        server.add_sockets([sock])

    loop.run_until_complete(start())
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    _ready(sock)
    loop.run_forever()


def _gevent_echo(sock: socket.socket) -> None:
    import gevent  # type: ignore[import-untyped]
    from gevent.server import StreamServer  # type: ignore[import-untyped]

    def handle(conn: socket.socket, address: Any) -> None:
        _nodelay(conn)
        while True:
            data = conn.recv(READ_SIZE)
            if not data:
                break
            conn.sendall(data)
        conn.close()

    _gevent_run(StreamServer(_gevent_socket(sock), handle), gevent)


def _gevent_socket(sock: socket.socket) -> Any:
    from gevent import socket as gsocket

    return gsocket.socket(sock.family, sock.type, fileno=sock.detach())


def _gevent_run(server: Any, gevent: Any) -> None:
    server.start()
    gevent.signal_handler(signal.SIGTERM, server.stop)
    _ready(server.socket)
    server.serve_forever()


def _pyuv_echo(sock: socket.socket) -> None:
    import pyuv

    loop = pyuv.Loop.default_loop()
    server = pyuv.TCP(loop)
    server.open(os.dup(sock.fileno()))
    clients: set[Any] = set()

    def on_read(client: Any, data: bytes | None, error: int | None) -> None:
        if data is None:
            clients.discard(client)
            client.close()
        else:
            client.write(data)

    def on_connection(server: Any, error: int | None) -> None:
        client = pyuv.TCP(loop)
        server.accept(client)
        client.nodelay(True)
        clients.add(client)
        client.start_read(on_read)

    def on_term(handle: Any, signum: int) -> None:
        for handle_ in (server, term, *clients):
            handle_.close()

    server.listen(on_connection, BACKLOG)
    term = pyuv.Signal(loop)
    term.start(on_term, signal.SIGTERM)
    _ready(sock)
    loop.run()


def echo_protoshim(framework: str, sock: socket.socket) -> None:
    """Serve protoshim's ``EchoServer`` on protoshim's loop for ``framework``."""
    import protoshim
    from protoshim.protocols.echo import EchoServer

    _serve_asyncio_loop(protoshim.new_event_loop(framework), EchoServer, sock)


# ---- http ------------------------------------------------------------------


def http_protoshim(framework: str, sock: socket.socket) -> None:
    """Serve ``app`` with protoshim's HTTP protocol on ``framework``."""
    import protoshim
    from protoshim.protocols.http import wsgi_protocol_factory

    _serve_asyncio_loop(protoshim.new_event_loop(framework), wsgi_protocol_factory(app), sock)


def http_wsgi(framework: str, sock: socket.socket) -> None:
    """Serve ``app`` with ``framework``'s own WSGI server."""
    if framework in ("asyncio", "uvloop"):
        _uvicorn(framework, "wsgi", sock)
    elif framework == "twisted":
        from twisted.internet import reactor as _reactor
        from twisted.web.server import Site
        from twisted.web.wsgi import WSGIResource

        reactor: Any = _reactor
        resource_ = WSGIResource(reactor, reactor.getThreadPool(), app)  # type: ignore[no-untyped-call]
        _twisted_run(sock, Site(resource_))  # type: ignore[no-untyped-call]
    elif framework == "tornado":
        from tornado.httpserver import HTTPServer
        from tornado.wsgi import WSGIContainer

        _tornado_run(sock, lambda: HTTPServer(WSGIContainer(app)))
    elif framework == "gevent":
        import gevent
        from gevent.pywsgi import WSGIServer  # type: ignore[import-untyped]

        class NoDelayWSGIServer(WSGIServer):  # type: ignore[misc]
            def handle(self, conn: socket.socket, address: Any) -> None:
                _nodelay(conn)
                super().handle(conn, address)

        _gevent_run(NoDelayWSGIServer(_gevent_socket(sock), app, log=None), gevent)
    else:
        raise SystemExit(f"no WSGI server of its own for {framework!r}")


def http_native(framework: str, sock: socket.socket) -> None:
    """Serve the same bytes with ``framework``'s own non-WSGI handler."""
    if framework in ("asyncio", "uvloop"):
        _uvicorn(framework, "asgi3", sock)
    elif framework == "twisted":
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        class HelloResource(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                content_type, body = response_for(request.path.decode("latin-1"))
                request.setHeader(b"Content-Type", content_type.encode())
                request.setHeader(b"Content-Length", str(len(body)).encode())
                return body

        _twisted_run(sock, Site(HelloResource()))  # type: ignore[no-untyped-call]
    elif framework == "tornado":
        _tornado_native(sock)
    else:
        raise SystemExit(f"no native HTTP server for {framework!r}")


def _tornado_native(sock: socket.socket) -> None:
    import tornado.web
    import tornado.websocket
    from tornado.httpserver import HTTPServer

    class HelloHandler(tornado.web.RequestHandler):
        def get(self, path: str) -> None:
            content_type, body = response_for("/" + path)
            self.set_header("Content-Type", content_type)
            self.write(body)

    class EchoHandler(tornado.websocket.WebSocketHandler):
        def on_message(self, message: str | bytes) -> None:
            self.write_message(message, binary=isinstance(message, bytes))

    application = tornado.web.Application([(r"/ws", EchoHandler), (r"/(.*)", HelloHandler)])
    _tornado_run(sock, lambda: HTTPServer(application))


def _uvicorn(framework: str, interface: str, sock: socket.socket, http: str = "h11") -> None:
    import uvicorn

    config = uvicorn.Config(
        app if interface == "wsgi" else asgi_app,
        interface=interface,  # type: ignore[arg-type]
        loop="uvloop" if framework == "uvloop" else "asyncio",
        # h11 for the WSGI and native HTTP rows: the parser a plain `pip
        # install uvicorn` uses, and protoshim's; the ASGI rows use httptools.
        http=http,
        ws="websockets-sansio" if http == "httptools" else "auto",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    sock.setblocking(True)
    print(sock.getsockname()[1], flush=True)  # uvicorn listens at once on run()
    server.run(sockets=[sock])


# ---- asgi ------------------------------------------------------------------


def asgi_protoshim(framework: str, sock: socket.socket) -> None:
    """Serve ``asgi_app`` with protoshim's ASGI server on ``framework``."""
    import protoshim
    from protoshim.protocols.http import asgi_server

    _serve_asyncio_loop(protoshim.new_event_loop(framework), asgi_server(asgi_app), sock)


def asgi_uvicorn(framework: str, sock: socket.socket) -> None:
    """Serve ``asgi_app`` with uvicorn at its fastest: httptools and websockets' sans-I/O."""
    if framework not in ("asyncio", "uvloop"):
        raise SystemExit(f"uvicorn runs on asyncio or uvloop, not {framework!r}")
    _uvicorn(framework, "asgi3", sock, http="httptools")


def asgi_daphne(framework: str, sock: socket.socket) -> None:
    """Serve ``asgi_app`` with Daphne, which runs on Twisted's asyncio reactor."""
    if framework != "twisted":
        raise SystemExit(f"Daphne runs on Twisted, not {framework!r}")
    from daphne.server import Server  # type: ignore[import-untyped]  # installs the asyncio reactor

    class BenchServer(Server):  # type: ignore[misc]
        # Daphne takes endpoint strings, and Twisted's have no way to adopt
        # a listening socket, so it listens on a port of its own.
        def listen_success(self, port: Any) -> None:
            super().listen_success(port)
            _nodelay(port.socket)
            print(port.getHost().port, flush=True)

    sock.close()
    server = BenchServer(
        asgi_app,
        endpoints=[f"tcp:port=0:interface={HOST}:backlog=4096"],
        signal_handlers=True,
        verbosity=0,
    )
    server.run()


def asgi_hypercorn(framework: str, sock: socket.socket) -> None:
    """Serve ``asgi_app`` with Hypercorn on the stdlib asyncio loop."""
    if framework != "asyncio":
        raise SystemExit(f"Hypercorn is measured on asyncio, not {framework!r}")
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.loglevel = "WARNING"

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        _ready(sock)
        await serve(asgi_app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    asyncio.run(run())


def asgi_native(framework: str, sock: socket.socket) -> None:
    """Serve the ASGI app's bytes with ``framework``'s fastest server of its own."""
    if framework in ("twisted", "tornado"):
        http_native(framework, sock)
    elif framework == "gevent":
        # pywsgi is gevent's own HTTP server, and it speaks WSGI.
        http_wsgi(framework, sock)
    else:
        raise SystemExit(f"no native HTTP server for {framework!r}")


def serves_websocket(impl: str, framework: str) -> bool:
    """Tell whether the ``asgi`` server ``impl`` on ``framework`` echoes at ``/ws``."""
    # twisted.web needs Autobahn for WebSocket, and pywsgi gevent-websocket:
    # neither is the framework's own, so those native rows have no WS figure.
    return not (impl == "native" and framework in ("twisted", "gevent"))


SERVERS: dict[tuple[str, str], Callable[[str, socket.socket], None]] = {
    ("echo", "protoshim"): echo_protoshim,
    ("echo", "native"): echo_native,
    ("http", "protoshim"): http_protoshim,
    ("http", "wsgi"): http_wsgi,
    ("http", "native"): http_native,
    ("asgi", "protoshim"): asgi_protoshim,
    ("asgi", "uvicorn"): asgi_uvicorn,
    ("asgi", "daphne"): asgi_daphne,
    ("asgi", "hypercorn"): asgi_hypercorn,
    ("asgi", "native"): asgi_native,
}


def main(argv: list[str]) -> None:
    """Serve ``KIND IMPL FRAMEWORK`` until SIGTERM."""
    kind, impl, framework = argv
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The scale runs hold tens of thousands of connections open; the
    # harness raised the hard limit as far as it could.
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    SERVERS[kind, impl](framework, _listening_socket())


if __name__ == "__main__":
    main(sys.argv[1:])
