"""Pipes and subprocesses: ``connect_read_pipe``, ``connect_write_pipe``, ``subprocess_exec``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from subprocess import PIPE
from typing import Any

import pytest

from protoshim.conformance._helpers import wait
from protoshim.conformance.plugin import RunCoroutine

pytestmark = pytest.mark.requires("subprocess")

#: a child that upper-cases its stdin to stdout, says "bye" on stderr and exits 3
UPPER = (
    "import sys\n"
    "sys.stdout.buffer.write(sys.stdin.buffer.read().upper())\n"
    "sys.stderr.write('bye')\n"
    "sys.exit(3)\n"
)


async def _python(code: str, **pipes: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-c", code, **pipes)


def _file(fd: int, mode: str) -> Any:
    """Wrap one end of a pipe; whoever takes it (a transport, mostly) closes it."""
    return open(fd, mode, buffering=0)


class PipeRecorder(asyncio.Protocol):
    """Record the events of one pipe transport, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        if self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self) -> None:
        self.events.append("eof")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


class ChildRecorder(asyncio.SubprocessProtocol):
    """Record what a child's transport reports, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.events: list[str] = []
        self.output: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.output[fd] += data

    def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
        self.events.append(f"pipe {fd} lost")

    def process_exited(self) -> None:
        self.events.append("exited")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


# -- pipes -----------------------------------------------------------------------


def test_read_pipe_delivers_data_then_eof_then_lost(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        read_fd, write_fd = os.pipe()
        transport, protocol = await loop.connect_read_pipe(
            lambda: PipeRecorder(loop), _file(read_fd, "rb")
        )
        try:
            os.write(write_fd, b"through the pipe")
        finally:
            os.close(write_fd)
        assert await wait(asyncio.shield(protocol.lost), "the read pipe to close") is None
        assert protocol.events == ["made", "data", "eof", "lost"]
        assert bytes(protocol.data) == b"through the pipe"
        assert transport.is_closing()

    run(main())


def test_read_pipe_pause_reading_holds_data_back(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        read_fd, write_fd = os.pipe()
        transport, protocol = await loop.connect_read_pipe(
            lambda: PipeRecorder(loop), _file(read_fd, "rb")
        )
        transport.pause_reading()
        assert not transport.is_reading()
        os.write(write_fd, b"held")
        await asyncio.sleep(0.05)
        assert protocol.data == b""
        transport.resume_reading()
        os.close(write_fd)
        await wait(asyncio.shield(protocol.lost), "the read pipe to close")
        assert bytes(protocol.data) == b"held"

    run(main())


def test_write_pipe_writes_everything_then_closes(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        transport, protocol = await loop.connect_write_pipe(
            lambda: PipeRecorder(loop), _file(write_fd, "wb")
        )
        # More than a pipe holds (64 KiB on Linux), so the transport must buffer.
        payload = os.urandom(256 * 1024)
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        transport.close()
        received = bytearray()
        reader_done = loop.create_future()

        def drain() -> None:
            chunk = os.read(read_fd, 65536)
            received.extend(chunk)
            if not chunk:
                loop.remove_reader(read_fd)
                reader_done.set_result(None)

        loop.add_reader(read_fd, drain)
        try:
            await wait(asyncio.shield(reader_done), "the write pipe's data")
        finally:
            loop.remove_reader(read_fd)
            os.close(read_fd)
        assert bytes(received) == payload
        assert await wait(asyncio.shield(protocol.lost), "the write pipe to close") is None
        assert protocol.events == ["made", "lost"]

    run(main())


def test_write_pipe_reports_the_reader_going_away(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        read_fd, write_fd = os.pipe()
        reader = _file(read_fd, "rb")
        transport, protocol = await loop.connect_write_pipe(
            lambda: PipeRecorder(loop), _file(write_fd, "wb")
        )
        # Closed as a file, as a reader usually is; a monkey-patched
        # os.close() may defer the close until the loop next wakes.
        reader.close()
        # The transport watches for the reader's end closing, so it learns of
        # it without writing; a write would then fail with EPIPE.
        exc = await wait(asyncio.shield(protocol.lost), "the write pipe to notice")
        assert exc is None or isinstance(exc, BrokenPipeError)
        assert transport.is_closing()

    run(main())


# -- subprocesses ----------------------------------------------------------------


def test_subprocess_exec_streams_round_trip(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        process = await _python(UPPER, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        out, err = await wait(process.communicate(b"shout it"), "the child to finish")
        assert (out, err) == (b"SHOUT IT", b"bye")
        assert process.returncode == 3

    run(main())


def test_subprocess_protocol_sees_pipes_and_exit_before_connection_lost(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        transport, protocol = await loop.subprocess_exec(
            lambda: ChildRecorder(loop),
            sys.executable,
            "-c",
            UPPER,
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
        )
        try:
            stdin: Any = transport.get_pipe_transport(0)
            stdin.write(b"abc")
            stdin.close()
            assert await wait(asyncio.shield(protocol.lost), "the child to finish") is None
            assert transport.get_returncode() == 3
            assert bytes(protocol.output[1]) == b"ABC"
            assert bytes(protocol.output[2]) == b"bye"
            assert protocol.events[0] == "made"
            assert protocol.events[-1] == "lost"
            assert sorted(protocol.events[1:-1]) == [
                "exited",
                "pipe 0 lost",
                "pipe 1 lost",
                "pipe 2 lost",
            ]
        finally:
            transport.close()

    run(main())


def test_subprocess_shell_runs_through_the_shell(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        process = await asyncio.create_subprocess_shell("echo $((6 * 7)); exit 5", stdout=PIPE)
        out, _ = await wait(process.communicate(), "the shell to finish")
        assert out == b"42\n"
        assert process.returncode == 5

    run(main())


def test_subprocess_terminate_reports_the_signal(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        process = await _python("import time; print('up', flush=True); time.sleep(60)", stdout=PIPE)
        assert process.stdout is not None
        assert await wait(process.stdout.readline(), "the child to start") == b"up\n"
        process.terminate()
        assert await wait(process.wait(), "the child to exit") == -signal.SIGTERM

    run(main())


def test_subprocess_exec_of_a_missing_program_raises(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/protoshim-no-such-program")

    run(main())
