"""Existing Twisted protocols run unchanged as PEP 3156 protocols on the stdlib loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

pytest.importorskip("twisted", reason="from_twisted needs Twisted installed")

from twisted.internet import address, error, interfaces, protocol
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from protoshim.adapters.twisted import from_twisted

WAIT = 5.0


class Shout(LineReceiver):
    """A LineReceiver that only talks to its transport."""

    delimiter = b"\n"

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.factory.peers.append(peer)
        self.factory.hosts.append(self.transport.getHost())
        self.sendLine(b"hello")

    def lineReceived(self, line):
        if line == b"quit":
            self.transport.writeSequence([b"bye", self.delimiter])
            self.transport.loseConnection()
        else:
            self.sendLine(line.upper())

    def connectionLost(self, reason):
        self.factory.reasons.append(reason)


class ShoutFactory(protocol.Factory):
    protocol = Shout

    def __init__(self):
        self.peers = []
        self.hosts = []
        self.reasons = []


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 2 * WAIT))


def test_line_receiver_runs_on_the_stdlib_loop():
    factory = ShoutFactory()

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(from_twisted(factory), "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"one\ntwo\nquit\nignored after quit\n")
            answer = await asyncio.wait_for(reader.read(), WAIT)
            writer.close()
            await writer.wait_closed()
            client_port = writer.get_extra_info("sockname")[1]
        return answer, port, client_port

    answer, port, client_port = run(main())
    assert answer == b"hello\nONE\nTWO\nbye\n"
    assert factory.peers == [address.IPv4Address("TCP", "127.0.0.1", client_port)]
    assert factory.hosts == [address.IPv4Address("TCP", "127.0.0.1", port)]
    assert len(factory.reasons) == 1
    assert factory.reasons[0].check(error.ConnectionDone)


def test_from_twisted_needs_no_reactor():
    script = (
        "import asyncio, sys\n"
        "from twisted.internet import protocol\n"
        "from protoshim.adapters.twisted import from_twisted\n"
        "class Hi(protocol.Protocol):\n"
        "    def connectionMade(self):\n"
        "        self.transport.write(b'hi')\n"
        "        self.transport.loseConnection()\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    factory = from_twisted(protocol.Factory.forProtocol(Hi))\n"
        "    server = await loop.create_server(factory, '127.0.0.1', 0)\n"
        "    port = server.sockets[0].getsockname()[1]\n"
        "    reader, writer = await asyncio.open_connection('127.0.0.1', port)\n"
        "    data = await reader.read()\n"
        "    writer.close()\n"
        "    server.close()\n"
        "    await server.wait_closed()\n"
        "    return data\n"
        "print(asyncio.run(main()), 'twisted.internet.reactor' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "b'hi' False"


@implementer(interfaces.IHalfCloseableProtocol)
class CountThenAnswer(protocol.Protocol):
    """Answer with the byte count once the peer has shut its write side."""

    def connectionMade(self):
        self.count = 0

    def dataReceived(self, data):
        self.count += len(data)

    def readConnectionLost(self):
        self.transport.write(b"%d" % self.count)
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


def test_half_closeable_protocol_hears_read_connection_lost():
    async def main():
        loop = asyncio.get_running_loop()
        factory = protocol.Factory.forProtocol(CountThenAnswer)
        server = await loop.create_server(from_twisted(factory), "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x" * 1000)
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), WAIT)
            writer.close()
            await writer.wait_closed()
        return answer

    assert run(main()) == b"1000"


@implementer(interfaces.IPushProducer)
class Flood:
    """A streaming producer that writes as fast as it is allowed to."""

    def __init__(self, transport):
        self.transport = transport
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.sent = 0

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        self.resumes += 1
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def stopProducing(self):
        pass

    def flood(self):
        chunk = b"x" * 65536
        for _ in range(4096):  # bounded: 256 MiB at most
            if self.paused:
                return
            self.transport.write(chunk)
            self.sent += len(chunk)
        raise AssertionError("the producer was never paused")


class Streamer(protocol.Protocol):
    def connectionMade(self):
        self.flood = Flood(self.transport)
        self.factory.floods.append(self.flood)
        self.transport.registerProducer(self.flood, True)
        self.flood.flood()


def test_streaming_producer_follows_the_water_marks():
    factory = protocol.Factory.forProtocol(Streamer)
    factory.floods = []

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(from_twisted(factory), "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=65536)
            # The reader stops reading at its limit, so the server must pause.
            while not factory.floods or not factory.floods[0].paused:
                await asyncio.sleep(0.01)
            received = len(await asyncio.wait_for(reader.read(), WAIT))
            writer.close()
            await writer.wait_closed()
        return received

    received = run(main())
    flood = factory.floods[0]
    assert flood.pauses == 1
    assert flood.resumes == 1
    assert received == flood.sent
