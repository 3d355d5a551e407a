"""The pyuv adapter: libuv handles behind the primitives, and sharing a pyuv.Loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
import threading
from typing import Any

import pytest

import protoshim

pyuv = pytest.importorskip("pyuv")

from protoshim.adapters.pyuv import (  # noqa: E402 - only importable with pyuv
    PyuvEventLoop,
    attach,
    new_event_loop,
)

#: Seconds any single expected event may take.
WAIT = 5.0
FRAMEWORK = "pyuv"  # for the ``loop`` fixture


class Peer(asyncio.Protocol):
    """Keep the transport; collect data; resolve futures on EOF and loss."""

    def __init__(self, *, paused: bool = False) -> None:
        self.paused = paused
        self.transport: Any = None
        self.data = bytearray()
        self.arrived = asyncio.Event()
        self.made = asyncio.get_running_loop().create_future()
        self.eof = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.paused:
            transport.pause_reading()
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.arrived.set()

    async def received(self, size: int) -> bytes:
        """Wait until ``size`` bytes have arrived; return them."""
        async with asyncio.timeout(WAIT):
            while len(self.data) < size:
                self.arrived.clear()
                await self.arrived.wait()
        return bytes(self.data)

    def eof_received(self) -> bool:
        self.eof.set_result(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@contextlib.asynccontextmanager
async def tcp_pair(*, server_paused: bool = False) -> Any:
    """Yield (client, server) protocols of one loopback connection."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Peer] = loop.create_future()

    def factory() -> Peer:
        peer = Peer(paused=server_paused)
        accepted.set_result(peer)
        return peer

    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        _, client = await loop.create_connection(Peer, "127.0.0.1", port)
        peer = await asyncio.wait_for(accepted, WAIT)
        await asyncio.wait_for(peer.made, WAIT)
        try:
            yield client, peer
        finally:
            for end in (client, peer):
                end.transport.abort()
                await asyncio.wait_for(end.lost, WAIT)
    finally:
        server.close()
        await server.wait_closed()


def handle_on(loop: PyuvEventLoop, fileobj: Any) -> Any:
    """Return the open libuv handle of ``loop`` on ``fileobj``'s descriptor, or None."""
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    for handle in loop.uv_loop.handles:
        if hasattr(handle, "fileno") and not handle.closed and handle.fileno() == fd:
            return handle
    return None


# -- the registry --------------------------------------------------------------


def test_adapter_is_registered_and_lacks_nothing() -> None:
    adapter = protoshim.get_adapter("pyuv")
    assert adapter.available()
    assert adapter.version() == pyuv.__version__
    assert dict(adapter.missing) == {}
    loop = protoshim.new_event_loop("pyuv")
    try:
        assert isinstance(loop, PyuvEventLoop)
        assert isinstance(loop.uv_loop, pyuv.Loop)
    finally:
        loop.close()


# -- transports are libuv handles ---------------------------------------------


def test_tcp_and_unix_streams_are_libuv_handles(loop: PyuvEventLoop, tmp_path: Any) -> None:
    async def main() -> None:
        async with tcp_pair() as (client, _):
            sock = client.transport.get_extra_info("socket")
            assert isinstance(handle_on(loop, sock), pyuv.TCP)
        left, right = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(Peer, left)
        try:
            assert isinstance(handle_on(loop, left), pyuv.Pipe)
        finally:
            transport.abort()
            right.close()
            await asyncio.sleep(0)

    loop.run_until_complete(main())


def test_closing_a_stream_closes_its_descriptor_once(loop: PyuvEventLoop) -> None:
    async def main() -> None:
        async with tcp_pair() as (client, peer):
            sock = client.transport.get_extra_info("socket")
            fd = sock.fileno()
            client.transport.close()
            await asyncio.wait_for(peer.eof, WAIT)  # libuv really closed it
            await asyncio.wait_for(client.lost, WAIT)
            # The socket object forgot the number, so it cannot close it again.
            assert sock.fileno() == -1
            assert handle_on(loop, fd) is None

    loop.run_until_complete(main())


def test_a_program_closing_a_stream_handle_releases_its_socket(loop: PyuvEventLoop) -> None:
    # A program sharing its pyuv loop may close every handle on it, with
    # pyuv's close(callback); the socket must then forget the descriptor too.
    async def main() -> None:
        async with tcp_pair() as (client, peer):
            sock = client.transport.get_extra_info("socket")
            handle = handle_on(loop, sock)
            closed: asyncio.Future[Any] = loop.create_future()
            handle.close(closed.set_result)
            assert await asyncio.wait_for(closed, WAIT) is handle
            assert sock.fileno() == -1
            await asyncio.wait_for(peer.eof, WAIT)

    loop.run_until_complete(main())


@pytest.mark.parametrize(
    ("module", "handle", "kind", "open_"),
    [
        # A stream is its handle, of the adapter's own subclass of pyuv.TCP.
        ("protoshim.adapters.pyuv._driver", "UvTcpStream", socket.SOCK_STREAM, "open_stream"),
        ("pyuv", "UDP", socket.SOCK_DGRAM, "open_datagram"),
    ],
)
def test_a_socket_libuv_refuses_is_closed(
    loop: PyuvEventLoop,
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    handle: str,
    kind: int,
    open_: str,
) -> None:
    # The primitive owns the socket it was given, even when it cannot use it:
    # an accepted connection must not stay open with nobody to close it.
    namespace = sys.modules[module]

    class Refusing(getattr(namespace, handle)):  # type: ignore[misc]
        __slots__ = ()

        def open(self, fd: int) -> None:
            raise pyuv.error.UVError(9, "EBADF: bad file descriptor")

    monkeypatch.setattr(namespace, handle, Refusing)
    sock = socket.socket(socket.AF_INET, kind)
    fd = sock.fileno()
    with pytest.raises(OSError):
        getattr(loop.driver, open_)(sock)
    assert sock.fileno() == -1
    with pytest.raises(OSError):
        os.fstat(fd)  # closed, not merely forgotten


def test_queued_counts_libuv_write_queue(loop: PyuvEventLoop) -> None:
    async def main() -> None:
        async with tcp_pair(server_paused=True) as (client, _):
            transport = client.transport
            block = b"x" * 65536
            for _ in range(1024):
                if transport.get_write_buffer_size():
                    break
                transport.write(block)
            handle = handle_on(loop, transport.get_extra_info("socket"))
            assert handle.write_queue_size > 0
            assert transport.get_write_buffer_size() == handle.write_queue_size

    loop.run_until_complete(main())


def test_pause_reading_stops_libuv_from_reading(loop: PyuvEventLoop) -> None:
    async def main() -> None:
        # If libuv kept reading into a buffer of its own, the kernel buffers
        # would never fill and the writer would never have to queue.
        async with tcp_pair(server_paused=True) as (client, peer):
            block = b"y" * 65536
            for _ in range(1024):
                if client.transport.get_write_buffer_size():
                    break
                client.transport.write(block)
                await asyncio.sleep(0)
            assert client.transport.get_write_buffer_size() > 0
            assert not peer.data

    loop.run_until_complete(main())


def test_eof_keeps_the_write_side_open(loop: PyuvEventLoop) -> None:
    async def main() -> None:
        async with tcp_pair() as (client, peer):
            client.transport.write_eof()
            await asyncio.wait_for(peer.eof, WAIT)
            peer.transport.write(b"after eof")
            assert await client.received(9) == b"after eof"

    loop.run_until_complete(main())


def test_datagram_endpoint_is_a_udp_handle_and_keeps_reuseaddr_off(loop: PyuvEventLoop) -> None:
    async def main() -> None:
        received: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

        class Sink(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                received.put_nowait((data, addr))

        server, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
        client, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=server.get_extra_info("sockname")
        )
        try:
            sock = server.get_extra_info("socket")
            assert isinstance(handle_on(loop, sock), pyuv.UDP)
            # libuv sets SO_REUSEADDR when it opens a UDP socket; asyncio does not.
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
            client.sendto(b"ping")
            data, addr = await asyncio.wait_for(received.get(), WAIT)
            assert data == b"ping"
            assert addr == client.get_extra_info("sockname")
        finally:
            client.close()
            server.close()
            await asyncio.sleep(0)

    loop.run_until_complete(main())


def test_add_reader_refuses_a_transport_descriptor(loop: PyuvEventLoop) -> None:
    async def main() -> None:
        async with tcp_pair() as (client, _):
            fd = client.transport.get_extra_info("socket").fileno()
            with pytest.raises(RuntimeError, match="is used by transport"):
                loop.add_reader(fd, lambda: None)

    loop.run_until_complete(main())


def test_add_reader_on_a_closed_descriptor_raises(loop: PyuvEventLoop) -> None:
    left, right = socket.socketpair()
    fd = left.fileno()
    left.close()
    right.close()
    with pytest.raises(OSError):
        loop.add_reader(fd, lambda: None)
    assert not loop.remove_reader(fd)
    assert handle_on(loop, fd) is None


def test_a_watcher_left_on_a_reused_descriptor_gives_way_to_a_transport(
    loop: PyuvEventLoop,
) -> None:
    async def main() -> None:
        left, right = socket.socketpair()
        fd = left.fileno()
        loop.add_reader(fd, lambda: None)
        # Closed without remove_reader(): the number is free for a new socket.
        left.close()
        right.close()
        mine, theirs = socket.socketpair()
        try:
            if fd not in (mine.fileno(), theirs.fileno()):
                pytest.skip("the descriptor number was not reused")
            if theirs.fileno() == fd:
                mine, theirs = theirs, mine
            transport, peer = await loop.connect_accepted_socket(Peer, mine)
            theirs.send(b"ping")
            assert await peer.received(4) == b"ping"
            transport.write(b"pong")
            theirs.settimeout(WAIT)
            assert theirs.recv(4) == b"pong"
            transport.abort()
            await asyncio.wait_for(peer.lost, WAIT)
        finally:
            theirs.close()

    loop.run_until_complete(main())


def test_fd_watchers_follow_readiness(loop: PyuvEventLoop) -> None:
    left, right = socket.socketpair()
    left.setblocking(False)

    async def main() -> None:
        readable = loop.create_future()
        writable = loop.create_future()
        loop.add_writer(left, lambda: writable.done() or writable.set_result(None))
        await asyncio.wait_for(writable, WAIT)
        assert loop.remove_writer(left)
        loop.add_reader(left, lambda: readable.done() or readable.set_result(left.recv(10)))
        right.send(b"ready")
        assert await asyncio.wait_for(readable, WAIT) == b"ready"
        assert loop.remove_reader(left)
        assert not loop.remove_reader(left)

    try:
        loop.run_until_complete(main())
    finally:
        left.close()
        right.close()


# -- scheduling ---------------------------------------------------------------


def test_zero_delay_timer_chain_does_not_starve_io(loop: PyuvEventLoop) -> None:
    # libuv runs a timer that is already due, started from a timer callback,
    # in the same pass: without care a call_later(0) chain never polls I/O.
    left, right = socket.socketpair()
    left.setblocking(False)
    ticks = 0

    async def main() -> int:
        seen = loop.create_future()

        def chain() -> None:
            nonlocal ticks
            ticks += 1
            if not seen.done() and ticks < 100_000:
                loop.call_later(0, chain)

        loop.add_reader(left, lambda: seen.done() or seen.set_result(ticks))
        right.send(b"x")
        loop.call_later(0, chain)
        try:
            return await asyncio.wait_for(seen, WAIT)
        finally:
            loop.remove_reader(left)

    try:
        assert loop.run_until_complete(main()) < 100_000
    finally:
        left.close()
        right.close()


def test_call_soon_threadsafe_wakes_a_blocked_loop(loop: PyuvEventLoop) -> None:
    async def main() -> str:
        fut = loop.create_future()
        thread = threading.Thread(target=lambda: loop.call_soon_threadsafe(fut.set_result, "woken"))
        thread.start()
        try:
            return await asyncio.wait_for(fut, WAIT)
        finally:
            thread.join()

    assert loop.run_until_complete(main()) == "woken"


def test_python_signal_handlers_run_while_libuv_blocks(loop: PyuvEventLoop) -> None:
    # A signal only reaches Python code when a callback runs; the loop polls
    # the interpreter's wakeup fd so a handler raising KeyboardInterrupt (as
    # the default SIGINT handler does) stops a loop blocked in libuv.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, interrupt)
    sender = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
    guard = loop.call_later(WAIT, loop.stop)
    try:
        sender.start()
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
    finally:
        sender.join()
        guard.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert signal.set_wakeup_fd(-1) == -1  # the loop gave its wakeup fd back


def test_closed_loop_releases_its_descriptors() -> None:
    def count() -> int:
        gc.collect()
        return len(os.listdir("/proc/self/fd"))

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to count descriptors")
    new_event_loop().close()  # libuv's process-wide resources
    before = count()
    for _ in range(5):
        loop = new_event_loop()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    assert count() <= before


# -- sharing a pyuv.Loop -------------------------------------------------------


def test_shared_uv_loop_runs_program_handles_and_survives_close() -> None:
    uv = pyuv.Loop()
    fired: list[str] = []
    timer = pyuv.Timer(uv)
    timer.start(lambda handle: fired.append("program timer"), 0.01, 0.0)
    loop = new_event_loop(uv)
    try:
        assert loop.uv_loop is uv
        loop.run_until_complete(asyncio.sleep(0.05))
        assert fired == ["program timer"]
    finally:
        loop.close()
    # The program's loop and handles outlive the asyncio loop.
    timer.start(lambda handle: fired.append("again"), 0.0, 0.0)
    uv.run()
    assert fired == ["program timer", "again"]
    assert "excepthook" not in uv.__dict__
    timer.close()
    uv.run()


def test_attach_runs_asyncio_inside_the_programs_uv_run() -> None:
    uv = pyuv.Loop()
    results: list[Any] = []

    async def main() -> str:
        assert asyncio.get_running_loop() is loop
        async with tcp_pair() as (client, peer):
            client.transport.write(b"hello")
            results.append(await peer.received(5))
        return await loop.run_in_executor(None, str, "done")

    hooks = sys.get_asyncgen_hooks()
    with attach(uv) as loop:
        assert loop.is_running()
        assert sys.get_asyncgen_hooks() != hooks
        nap = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already running"):
            loop.run_until_complete(nap)
        nap.close()
        task = loop.create_task(main())
        task.add_done_callback(lambda _: loop.stop())
        guard = pyuv.Timer(uv)
        guard.start(lambda handle: uv.stop(), WAIT, 0.0)
        uv.run()  # returns once loop.stop() is called
        guard.close()
        assert task.result() == "done"
        assert results == [b"hello"]
        # Stopping did not detach: the loop still runs in the next uv.run().
        later = loop.create_task(asyncio.sleep(0, "later"))
        later.add_done_callback(lambda _: loop.stop())
        uv.run()
        assert later.result() == "later"
    assert loop.is_closed()
    assert not loop.is_running()
    assert sys.get_asyncgen_hooks() == hooks
    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop()
        pytest.fail("the loop is still the running loop after detaching")
    uv.run()  # our handles are closed: nothing keeps the loop alive


def test_closing_an_attached_loop_gives_the_program_its_uv_loop_back() -> None:
    uv = pyuv.Loop()
    seen: list[BaseException] = []

    def program_hook(typ: type[BaseException], value: BaseException, tb: Any) -> None:
        seen.append(value)

    uv.excepthook = program_hook
    loop = new_event_loop(uv)
    loop.attach()
    loop.close()  # without detach()
    assert not loop.is_running()
    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop()
        pytest.fail("the closed loop is still the running loop")

    def fail(handle: Any) -> None:
        raise ValueError("the program's own")

    timer = pyuv.Timer(uv)
    timer.start(fail, 0.0, 0.0)
    uv.run()  # the attached loop's handles are gone: only the program's timer runs
    timer.close()
    uv.run()
    assert [type(exc) for exc in seen] == [ValueError]


def test_attach_runs_what_an_interrupted_run_left_ready() -> None:
    uv = pyuv.Loop()
    ran: list[str] = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    loop = new_event_loop(uv)
    loop.call_soon(interrupt)
    loop.call_soon(ran.append, "left ready")
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    loop.attach()
    try:
        uv.run(pyuv.UV_RUN_NOWAIT)  # one iteration, which runs core's tick
        assert ran == ["left ready"]
    finally:
        loop.detach()
        loop.close()


def test_attach_carries_keyboard_interrupt_out_of_the_block() -> None:
    uv = pyuv.Loop()

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), attach(uv) as loop:
        loop.call_soon(interrupt)
        uv.run()  # the interrupt stops the pyuv loop
    uv.run()


def test_attached_loop_runs_callbacks_left_over_by_stop_in_the_next_run() -> None:
    uv = pyuv.Loop()
    ran: list[str] = []
    trigger = pyuv.Timer(uv)
    guard = pyuv.Timer(uv)
    with attach(uv) as loop:

        def leftover() -> None:
            ran.append("leftover")
            loop.stop()

        def stop_from_the_program(handle: Any) -> None:
            # The tick that handles stop() schedules ``leftover``, which must
            # wait for the next uv.run() and then run without further help.
            loop.stop()
            loop.call_soon(loop.call_soon, leftover)

        trigger.start(stop_from_the_program, 0.001, 0.0)
        guard.start(lambda handle: uv.stop(), WAIT, 0.0)
        uv.run()
        assert ran == []
        uv.run()
        assert ran == ["leftover"]
    trigger.close()
    guard.close()
    uv.run()


def test_a_kept_traceback_does_not_keep_a_closed_loop_open() -> None:
    # A traceback keeps every frame down to the driver's run() alive, as a
    # logged exception does; the closed loop's descriptors must still go.
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to count descriptors")
    kept: list[BaseException] = []

    async def fail() -> None:
        try:
            raise RuntimeError("kept")
        except RuntimeError as exc:
            kept.append(exc)

    new_event_loop().close()  # libuv's process-wide resources
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    loop = new_event_loop()
    loop.run_until_complete(fail())
    loop.close()
    gc.collect()
    assert kept
    assert len(os.listdir("/proc/self/fd")) <= before
