"""Fixtures shared by the adapter tests."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import protoshim
from protoshim.conformance._helpers import free_port


@pytest.fixture
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """A new loop of the module's ``FRAMEWORK``, its executor shut down and closed after."""
    new_loop = protoshim.new_event_loop(request.module.FRAMEWORK)
    try:
        yield new_loop
    finally:
        new_loop.run_until_complete(new_loop.shutdown_default_executor())
        new_loop.close()


@pytest.fixture
def free_ports() -> Callable[[], int]:
    """Return a function giving a TCP port on 127.0.0.1 that nothing listens on now."""
    return free_port


def wait_for_port(
    port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 20
) -> None:
    """Wait until something accepts on 127.0.0.1:``port``; fail at once if ``proc`` ends."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


#: How long a test waits for a server's line before it fails.
LINE_TIMEOUT = 30.0


@dataclass
class ProcessOutput:
    """A server process and every line it printed, read by a thread as they come.

    Start ``threading.Thread(target=output.read, daemon=True)`` once the
    process runs; :meth:`wait_for` then waits for lines without polling.
    """

    proc: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    ended: bool = False

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def matches(self, pattern: str) -> list[str]:
        with self.changed:
            # Every match, several on a line: workers' lines may run together.
            found = (m for line in self.lines for m in re.finditer(pattern, line))
            return [m.group(1) if m.groups() else m.group(0) for m in found]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = LINE_TIMEOUT) -> list[str]:
        """Wait until ``pattern`` matched ``count`` lines; return each first group."""
        with self.changed:
            self.changed.wait_for(
                lambda: self.ended or len(self.matches(pattern)) >= count, timeout
            )
        found = self.matches(pattern)
        if len(found) < count:
            raise AssertionError(f"no {count} x {pattern!r} in:\n" + "\n".join(self.lines))
        return found
class CliServer:
    """A ``protoshim serve`` subprocess, its port and its stdout lines as they come."""

    def __init__(self, proc: subprocess.Popen[str], stdout: queue.Queue[str | None]) -> None:
        self.proc = proc
        self._stdout = stdout
        #: every stdout line read so far
        self.lines: list[str] = []
        self.port = 0

    def wait_line(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """Return the match of the first stdout line (read or to come) matching ``pattern``."""
        regex = re.compile(pattern)
        for line in self.lines:
            if match := regex.search(line):
                return match
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._stdout.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if match := regex.search(line):
                return match
        gone = self.proc.poll() is not None and self.proc.stderr is not None
        stderr = self.proc.stderr.read() if gone and self.proc.stderr else ""
        raise AssertionError(f"no stdout line matched {pattern!r}: {self.lines}\n{stderr}")

    def stop(self, timeout: float = 30) -> str:
        """SIGTERM the server, wait for it to exit 0 and return its stderr."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=timeout) == 0
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


@pytest.fixture
def cli_server(tmp_path: Path) -> Iterator[Callable[..., CliServer]]:
    """Start ``protoshim serve ARGS`` in ``tmp_path`` on a free port; kill it after the test.

    Unless ``ready=False``, wait for the startup line and read the port from it.
    """
    started: list[CliServer] = []
    readers: list[threading.Thread] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True) -> CliServer:
        proc = subprocess.Popen(
            [sys.executable, "-m", "protoshim", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=tmp_path,
            env={**os.environ, **(env or {})},
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        server = CliServer(proc, lines)
        readers.append(reader)
        started.append(server)
        if ready:
            server.port = int(server.wait_line(r"serving .* at \S*?:(\d+)").group(1))
        return server

    try:
        yield start
    finally:
        for server in started:
            if server.proc.poll() is None:
                server.proc.kill()
            server.proc.wait(timeout=30)
        for reader in readers:
            reader.join(timeout=10)  # at the end of stdout, now that the server is gone
        for server in started:
            for stream in (server.proc.stdout, server.proc.stderr):
                if stream is not None:
                    stream.close()
