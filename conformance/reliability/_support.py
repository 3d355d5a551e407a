"""Measurements, abrupt closes and subprocess servers shared by the reliability tests.

Like the rest of the suite, both ends of a connection run on the loop under
test; only the tests that need a separate process (descriptor limits,
signals) start ``protoshim serve`` and talk to it from that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "ServeProcess",
    "cpu_seconds",
    "fd_count",
    "fds_left_open",
    "need_proc",
    "reset",
    "rss",
    "serve_process",
]

_PROC = Path("/proc")


def need_proc() -> None:
    """Skip unless ``/proc`` describes processes (RSS, CPU time, descriptors)."""
    if not (_PROC / "self" / "status").is_file():
        pytest.skip("needs /proc to measure memory, CPU time and descriptors")


def rss(pid: int | str = "self") -> int:
    """Return a process's resident set size in bytes."""
    for line in (_PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/PID/status")


def cpu_seconds(pid: int | str = "self") -> float:
    """Return the CPU time (user + system) a process has used so far."""
    stat = (_PROC / str(pid) / "stat").read_text()
    # The command name in parentheses may contain spaces: split after it.
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def fd_count(pid: int | str = "self") -> int:
    """Return how many descriptors a process has open."""
    return len(os.listdir(_PROC / str(pid) / "fd"))


async def fds_left_open(before: int, settle: float = 2.0) -> int:
    """Return how many more descriptors are open than ``before``, once closes settle.

    Some frameworks close a descriptor from a later callback, so the count
    gets ``settle`` seconds (with garbage collection) to come down, as the
    conformance plugin's own check does.
    """
    deadline = time.monotonic() + settle
    while (extra := fd_count() - before) > 0 and time.monotonic() < deadline:
        gc.collect()
        await asyncio.sleep(0.02)
    return extra


def reset(transport: asyncio.WriteTransport) -> None:
    """Close ``transport`` with a TCP reset (SO_LINGER 0), as a crashed peer does."""
    sock = transport.get_extra_info("socket")
    assert sock is not None, "the transport gives no socket"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@dataclass
class ServeProcess:
    """A ``protoshim serve`` child process and where it listens."""

    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    @property
    def pid(self) -> int:
        """Return the child's process id."""
        return self.process.pid

    def stderr(self) -> str:
        """Return what the child has written to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def stdout_lines(self, timeout: float) -> list[str]:
        """Return the lines the child writes to stdout until it exits (bounded)."""
        assert self.process.stdout is not None
        out, _ = self.process.communicate(timeout=timeout)
        return out.decode(errors="replace").splitlines()

    def terminate(self) -> None:
        """Send SIGTERM."""
        self.process.send_signal(signal.SIGTERM)


_SERVING = re.compile(r"serving .* at \S*?:(\d+)")
#: Seconds the child may take to import its framework and start listening.
START_TIMEOUT = 30.0


@contextlib.contextmanager
def serve_process(framework: str, wsgi_app: str, *options: str) -> Iterator[ServeProcess]:
    """Run ``protoshim serve --wsgi wsgi_app [options]`` on an ephemeral port; kill it after."""
    with tempfile.TemporaryDirectory(prefix="ps-serve-") as tmp:
        stderr_path = Path(tmp) / "stderr"
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "protoshim._cli", "serve", "--framework", framework),
                    *("--host", "127.0.0.1", "--port", "0", "--wsgi", wsgi_app, *options),
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
            )
        try:
            port = _wait_for_port(process, stderr_path)
            yield ServeProcess(process, port, stderr_path)
        finally:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                process.communicate(timeout=10)


def _wait_for_port(process: subprocess.Popen[bytes], stderr_path: Path) -> int:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + START_TIMEOUT
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or process.poll() is not None:
            raise AssertionError(
                f"protoshim serve did not start: {stderr_path.read_text(errors='replace')!r}"
            )
        ready, _, _ = select.select([fd], [], [], min(left, 0.1))
        if ready:
            byte = os.read(fd, 1)
            if not byte:
                continue  # closed: poll() tells at the next turn
            line += byte
    match = _SERVING.search(line.decode(errors="replace"))
    assert match, f"unexpected first line from protoshim serve: {line!r}"
    return int(match.group(1))
