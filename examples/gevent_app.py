"""A gevent service that serves a PEP 3156 protocol next to a WSGI front end.

The protocol (:class:`Shout`) is plain asyncio code: it knows nothing of
gevent.  :class:`~protoshim.adapters.gevent.ProtocolStreamServer` serves it
exactly where a gevent service would have put its ``StreamServer``, so the
service's set-up (address, ``spawn`` pool, ``serve_forever``, ``stop``) does
not change.  The WSGI front end, a ``gevent.pywsgi`` server, runs in the same
hub; each request asks the Shout server through an asyncio client coroutine,
which the request's greenlet waits for with
:func:`~protoshim.adapters.gevent.wait_future`.

Run it with ``python -m protoshim.examples.gevent_app``, then try
``nc 127.0.0.1 8891`` or ``curl 'http://127.0.0.1:8892/?text=hello'``.
Ctrl-C stops both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from gevent.pool import Pool  # type: ignore[import-untyped]
from gevent.pywsgi import WSGIServer  # type: ignore[import-untyped]

from protoshim.adapters.gevent import ProtocolStreamServer, wait_future
from protoshim.examples.shout import Shout, ask

__all__ = ["Shout", "ask", "main", "make_app", "start"]

StartResponse = Callable[..., Any]


def make_app(
    loop: asyncio.AbstractEventLoop, host: str, port: int
) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """Return a WSGI app that answers ``?text=...`` through the Shout server."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        text = query.get("text", ["say something"])[0].encode()
        # This greenlet blocks; the hub, the loop and other requests do not.
        reply = wait_future(ask(host, port, text), loop=loop, timeout=10)
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return [reply + b"\n"]

    return app


def start(host: str, protocol_port: int, http_port: int) -> tuple[ProtocolStreamServer, WSGIServer]:
    """Start the Shout server and the WSGI front end; return both."""
    shout = ProtocolStreamServer((host, protocol_port), Shout, spawn=Pool(1000))
    shout.start()
    app = make_app(shout.protocol_loop, host, shout.server_port)
    front = WSGIServer((host, http_port), app, log=None)
    front.start()
    return shout, front


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--protocol-port", type=int, default=8891)
    parser.add_argument("--http-port", type=int, default=8892)
    args = parser.parse_args(argv)
    shout, front = start(args.host, args.protocol_port, args.http_port)
    print(
        f"shout on {args.host}:{shout.server_port}, http on {args.host}:{front.server_port}",
        flush=True,
    )
    try:
        shout.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        front.stop()
        shout.stop()


if __name__ == "__main__":
    main()
