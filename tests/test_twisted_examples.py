"""The Twisted example application runs and relays lines through the asyncio protocol."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

pytest.importorskip("twisted", reason="the example needs Twisted installed")


def test_twisted_app_relays_lines_through_shout():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "protoshim.examples.twisted_app",
            "--shout-port",
            "0",
            "--line-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        match = re.search(r"lines on 127\.0\.0\.1:(\d+)", banner)
        assert match, f"unexpected banner: {banner!r}"
        with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=10) as sock:
            sock.sendall(b"hello\nworld\n")
            received = b""
            while received.count(b"\n") < 2:
                chunk = sock.recv(4096)
                assert chunk, f"connection closed after {received!r}"
                received += chunk
        assert received == b"HELLO\nWORLD\n"
    finally:
        process.terminate()
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
