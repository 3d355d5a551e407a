"""A Tornado web application and a PEP 3156 protocol, served by one process.

The protocol (:class:`Shout`) is plain asyncio code: it knows nothing of
Tornado.  :class:`~protoshim.adapters.tornado.ProtocolServer` serves it the
way a ``TCPServer`` is used, next to a ``tornado.web`` application, on the
same IOLoop.  The ``/ask`` page goes the other way: a
Tornado handler opens an asyncio client connection to the protocol, on the
protoshim loop attached to the IOLoop.

Run it with ``python -m protoshim.examples.tornado_app``, then try
``curl 'http://127.0.0.1:8888/ask?text=hello'`` or ``nc 127.0.0.1 8889``.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

import tornado.httpserver
import tornado.web
from tornado.netutil import bind_sockets

from protoshim.adapters.tornado import ProtocolServer, attach
from protoshim.examples.shout import Shout, ask

__all__ = ["Running", "Shout", "main", "start"]


class HomeHandler(tornado.web.RequestHandler):
    """Say where the protocol listens."""

    def initialize(self, shout_port: int) -> None:
        self.shout_port = shout_port

    def get(self) -> None:
        self.write(f"tornado.web here; the Shout protocol listens on port {self.shout_port}\n")


class AskHandler(tornado.web.RequestHandler):
    """Relay ``?text=`` to the Shout protocol through an asyncio client connection."""

    def initialize(self, host: str, shout_port: int) -> None:
        self.host = host
        self.shout_port = shout_port

    async def get(self) -> None:
        text = self.get_argument("text", "hello").encode()
        # The client runs on the protoshim loop attached to this IOLoop.
        reply = await attach().submit(ask(self.host, self.shout_port, text))
        self.set_header("Content-Type", "text/plain")
        self.write(reply)


@dataclass
class Running:
    """The two servers of :func:`start`, and the ports they listen on."""

    http: tornado.httpserver.HTTPServer
    shout: ProtocolServer
    http_port: int
    shout_port: int

    def stop(self) -> None:
        """Stop accepting on both; the attached loop is closed too."""
        self.http.stop()
        self.shout.stop()
        attach().close()


async def start(host: str = "127.0.0.1", http_port: int = 0, shout_port: int = 0) -> Running:
    """Start the web application and the Shout server on the running IOLoop."""
    shout = ProtocolServer(Shout)
    shout_sockets = bind_sockets(shout_port, host)
    shout.add_sockets(shout_sockets)
    bound_shout = shout_sockets[0].getsockname()[1]
    app = tornado.web.Application(
        [
            (r"/", HomeHandler, {"shout_port": bound_shout}),
            (r"/ask", AskHandler, {"host": host, "shout_port": bound_shout}),
        ]
    )
    http_sockets = bind_sockets(http_port, host)
    http = tornado.httpserver.HTTPServer(app)
    http.add_sockets(http_sockets)
    return Running(http, shout, http_sockets[0].getsockname()[1], bound_shout)


async def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8888, help="HTTP port")
    parser.add_argument("--shout-port", type=int, default=8889, help="Shout protocol port")
    args = parser.parse_args(argv)
    running = await start(args.host, args.port, args.shout_port)
    print(f"http://{args.host}:{running.http_port}/  and  tcp {args.host}:{running.shout_port}")
    try:
        await asyncio.Event().wait()
    finally:
        running.stop()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
