"""A Twisted application that serves, and talks to, a PEP 3156 protocol.

The protocol (:class:`Shout`) is plain asyncio code: it knows nothing of
Twisted.  :class:`~protoshim.adapters.twisted.ProtocolFactory` serves it
through a Twisted endpoint, on the loop attached to the running reactor.
The line front end goes the other way: a Twisted ``LineReceiver`` relays
each line to the Shout protocol with an asyncio client coroutine, turned
into a Deferred by :func:`~protoshim.adapters.twisted.as_deferred`.

Run it with ``python -m protoshim.examples.twisted_app``, then try
``nc 127.0.0.1 8890`` (lines, answered through Shout) or ``nc 127.0.0.1 8889``.
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet import endpoints as _endpoints
from twisted.protocols.basic import LineReceiver

from protoshim.adapters.twisted import ProtocolFactory, as_deferred, as_future, attach
from protoshim.examples.shout import Shout, ask

__all__ = ["Relay", "RelayFactory", "Shout", "ask", "main", "start"]

# Twisted's endpoints and LineReceiver are not fully annotated.
endpoints: Any = _endpoints


class Relay(LineReceiver):
    """Answer each line with what the Shout protocol makes of it."""

    delimiter = b"\n"
    factory: RelayFactory

    def connectionMade(self) -> None:
        # One Deferred chain per connection keeps the answers in line order.
        self._pending: defer.Deferred[Any] = defer.succeed(None)

    def lineReceived(self, line: bytes) -> None:
        def relay(_: object) -> defer.Deferred[bytes]:
            return as_deferred(ask(self.factory.host, self.factory.shout_port, line))

        self._pending.addCallback(relay).addCallbacks(self._answer, self._failed)

    def _answer(self, reply: bytes) -> None:
        self._send(reply)

    def _failed(self, failure: Any) -> None:
        self._send(b"error: " + str(failure.value).encode())

    def _send(self, line: bytes) -> None:
        transport: Any = self.transport  # a zope interface, opaque to mypy
        transport.write(line + self.delimiter)


class RelayFactory(protocol.Factory):
    """Build :class:`Relay` protocols that know where Shout listens."""

    protocol = Relay  # type: ignore[assignment]

    def __init__(self, host: str, shout_port: int) -> None:
        self.host = host
        self.shout_port = shout_port


async def start(reactor: Any, host: str, shout_port: int, line_port: int) -> tuple[Any, Any]:
    """Listen with both servers on ``reactor``; return their Twisted ports."""
    loop = attach(reactor)
    shout_endpoint = endpoints.TCP4ServerEndpoint(reactor, shout_port, interface=host)
    shout = await as_future(shout_endpoint.listen(ProtocolFactory(Shout, loop)))
    line_endpoint = endpoints.TCP4ServerEndpoint(reactor, line_port, interface=host)
    relay = RelayFactory(host, shout.getHost().port)
    lines = await as_future(line_endpoint.listen(relay))
    return shout, lines


def main(argv: list[str] | None = None) -> None:
    """Serve until interrupted, on the global reactor."""
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--shout-port", type=int, default=8889)
    parser.add_argument("--line-port", type=int, default=8890)
    args = parser.parse_args(argv)

    def report(ports: tuple[Any, Any]) -> None:
        shout, lines = ports
        print(
            f"shout on {args.host}:{shout.getHost().port}, "
            f"lines on {args.host}:{lines.getHost().port}",
            flush=True,
        )

    def fail(failure: Any) -> None:
        print(f"cannot start: {failure.value}", flush=True)
        reactor.stop()

    def begin() -> defer.Deferred[None]:
        started = as_deferred(start(reactor, args.host, args.shout_port, args.line_port))
        return started.addCallbacks(report, fail)

    reactor.callWhenRunning(begin)
    reactor.run()


if __name__ == "__main__":
    main()
