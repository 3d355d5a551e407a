"""Living inside a Twisted application: attach, Deferred <-> Future, ProtocolFactory."""

from __future__ import annotations

import asyncio
import warnings

import pytest

pytest.importorskip("twisted", reason="the Twisted adapter needs Twisted installed")

from twisted.internet import defer, endpoints, task

from protoshim.adapters.twisted import (
    ProtocolFactory,
    as_deferred,
    as_future,
    attach,
)
from protoshim.adapters.twisted._compat import close_reactor
from protoshim.adapters.twisted._loop import new_reactor

TIMEOUT = 10.0


async def eventually(predicate, timeout: float = TIMEOUT) -> None:
    """Let the loop run until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0)


def run_attached(make_coro, timeout: float = TIMEOUT, reactor=None):
    """Run ``make_coro(loop, reactor)`` as a task inside ``reactor.run()``.

    The reactor is a private one unless given, never the global reactor.
    """
    private = reactor is None
    if private:
        reactor = new_reactor()
    loop = attach(reactor)
    outcome: dict[str, asyncio.Task] = {}

    def start():
        main = loop.create_task(asyncio.wait_for(make_coro(loop, reactor), timeout))

        def finished(done):
            outcome["task"] = done
            reactor.stop()

        main.add_done_callback(finished)

    reactor.callWhenRunning(start)
    guard = reactor.callLater(timeout + 5, reactor.stop)  # a bug must not hang the run
    try:
        with warnings.catch_warnings():
            # Twisted before 22.1 calls threading.currentThread() in run().
            warnings.filterwarnings("ignore", "currentThread", DeprecationWarning)
            reactor.run(installSignalHandlers=False)
    finally:
        if guard.active():
            guard.cancel()
        if private:
            close_reactor(reactor)
    assert loop.is_closed(), "the reactor's shutdown closes the attached loop"
    assert "task" in outcome, "the reactor stopped before the coroutine finished"
    return outcome["task"].result()


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def test_attach_runs_coroutines_on_the_running_reactor():
    async def main(loop, reactor):
        assert asyncio.get_running_loop() is loop
        assert attach(reactor) is loop
        nested = asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            loop.run_until_complete(nested)  # run_forever cannot nest in reactor.run()
        nested.close()
        loop.stop()  # the application stops its reactor, not the loop
        await asyncio.sleep(0)
        assert loop.is_running()
        fired = loop.create_future()
        reactor.callLater(0.01, fired.set_result, "twisted timer")
        assert await asyncio.wait_for(fired, TIMEOUT) == "twisted timer"
        return await loop.run_in_executor(None, sum, [1, 2, 3])

    assert run_attached(main) == 6


def test_as_future_follows_a_deferred():
    async def main(loop, reactor):
        assert await as_future(task.deferLater(reactor, 0.01, lambda: 42)) == 42
        with pytest.raises(ZeroDivisionError):
            await as_future(task.deferLater(reactor, 0, lambda: 1 / 0))
        cancelled = []
        pending = defer.Deferred(canceller=cancelled.append)
        future = as_future(pending, loop)
        future.cancel()
        await asyncio.sleep(0)
        assert cancelled == [pending]
        return True

    assert run_attached(main)


def test_as_deferred_follows_a_coroutine_and_cancels_it():
    async def main(loop, reactor):
        async def answer():
            await asyncio.sleep(0.01)
            return "answer"

        assert await as_future(as_deferred(answer())) == "answer"

        started = loop.create_future()

        async def forever():
            started.set_result(None)
            await asyncio.sleep(3600)

        running = loop.create_task(forever())
        deferred = as_deferred(running)
        await started
        errors = []
        deferred.addErrback(errors.append)
        deferred.cancel()
        await asyncio.gather(running, return_exceptions=True)
        assert running.cancelled()
        await asyncio.sleep(0)  # the Deferred fires from the Task's done callback
        # Deferred.fromFuture's convention: the Future's own CancelledError
        assert errors and errors[0].check(asyncio.CancelledError)
        return True

    assert run_attached(main)


def test_protocol_factory_serves_an_asyncio_protocol_through_an_endpoint():
    async def main(loop, reactor):
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = await as_future(endpoint.listen(ProtocolFactory(Echo, loop)))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port.getHost().port)
            payload = bytes(range(256)) * 2048
            writer.write(payload)
            writer.write_eof()
            # Echo returns None from eof_received: the server closes after flushing.
            echoed = await reader.read()
            writer.close()
            await writer.wait_closed()
        finally:
            await as_future(defer.maybeDeferred(port.stopListening))
        return echoed == payload

    assert run_attached(main)


def test_protocol_factory_keeps_the_write_side_open_after_eof():
    class Answer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.received = b""

        def data_received(self, data):
            self.received += data

        def eof_received(self):
            self.transport.write(b"got " + self.received)
            self.transport.close()
            return True

    async def main(loop, reactor):
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = await as_future(endpoint.listen(ProtocolFactory(Answer, loop)))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port.getHost().port)
            writer.write(b"question")
            writer.write_eof()
            answer = await reader.read()
            writer.close()
            await writer.wait_closed()
        finally:
            await as_future(defer.maybeDeferred(port.stopListening))
        return answer

    assert run_attached(main) == b"got question"


def test_protocol_factory_rejects_a_foreign_loop():
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(TypeError):
            ProtocolFactory(Echo, loop)
    finally:
        loop.close()


def test_attach_works_on_twisteds_asyncio_reactor():
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    asyncio_loop = asyncio.new_event_loop()
    try:
        reactor = AsyncioSelectorReactor(asyncio_loop)

        async def main(loop, reactor):
            assert loop is not asyncio_loop
            endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
            port = await as_future(endpoint.listen(ProtocolFactory(Echo, loop)))
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port.getHost().port)
                writer.write(b"through two loops")
                echoed = await reader.readexactly(len(b"through two loops"))
                writer.close()
                await writer.wait_closed()
            finally:
                await as_future(defer.maybeDeferred(port.stopListening))
            return echoed

        assert run_attached(main, reactor=reactor) == b"through two loops"
    finally:
        asyncio_loop.close()


def test_async_generators_are_finalized_on_an_attached_loop():
    async def main(loop, reactor):
        closed = loop.create_future()

        async def numbers():
            try:
                yield 1
                yield 2
            finally:
                await asyncio.sleep(0)  # needs the loop's finalizer to run
                closed.set_result(True)

        generator = numbers()
        assert await generator.__anext__() == 1
        # Only a generator whose first iteration met the loop's hooks is closed here.
        await loop.shutdown_asyncgens()
        return await asyncio.wait_for(closed, 5)

    assert run_attached(main)


def test_protocol_factory_over_a_transport_that_is_not_a_socket():
    from twisted.internet.testing import StringTransport

    events: list[object] = []

    class Record(Echo):
        def eof_received(self):
            events.append("eof")
            return True

        def pause_writing(self):
            events.append("pause_writing")

        def resume_writing(self):
            events.append("resume_writing")

        def connection_lost(self, exc):
            events.append(("lost", exc))

    protocols: list[Record] = []

    def record() -> Record:
        protocols.append(Record())
        return protocols[-1]

    async def main(loop, reactor):
        twisted_protocol = ProtocolFactory(record, loop).buildProtocol(None)
        transport = StringTransport()
        twisted_protocol.makeConnection(transport)
        assert transport.producerState == "paused", "reading waits for connection_made"
        await eventually(lambda: transport.producerState == "producing")
        twisted_protocol.dataReceived(b"ping")
        await eventually(lambda: transport.value() == b"ping")
        # The transport says its buffer is full, then drained: water marks follow.
        stream = transport.producer
        stream.pauseProducing()
        twisted_protocol.dataReceived(b"x" * 70000)
        assert events == ["pause_writing"]
        stream.resumeProducing()
        await eventually(lambda: events == ["pause_writing", "resume_writing"])
        twisted_protocol.readConnectionLost()
        await eventually(lambda: events[-1] == "eof")
        protocols[0].transport.close()
        await eventually(lambda: events[-1] == ("lost", None))
        assert transport.disconnecting
        assert transport.producer is None, "unregistered before loseConnection"
        return True

    assert run_attached(main)


def test_protocol_factory_serves_tls_with_asyncios_implementation():
    trustme = pytest.importorskip("trustme", reason="the TLS test makes certificates with trustme")
    import ssl

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_context)

    async def main(loop, reactor):
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        factory = ProtocolFactory(Echo, loop, ssl=server_context)
        port = await as_future(endpoint.listen(factory))
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port.getHost().port, ssl=client_context, server_hostname="localhost"
            )
            assert writer.get_extra_info("ssl_object") is not None
            writer.write(b"secret")
            echoed = await reader.readexactly(6)
            writer.close()
            await writer.wait_closed()
        finally:
            await as_future(defer.maybeDeferred(port.stopListening))
        return echoed

    assert run_attached(main) == b"secret"


def test_protocol_factory_rejects_a_non_context_ssl():
    with pytest.raises(TypeError):
        ProtocolFactory(Echo, ssl=True)
