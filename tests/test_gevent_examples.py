"""The gevent example service answers on both ports and stops on Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

pytest.importorskip("gevent", reason="the example needs gevent installed")

TIMEOUT = 30


def test_gevent_app_serves_shout_and_the_wsgi_front_end():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "protoshim.examples.gevent_app",
            "--protocol-port",
            "0",
            "--http-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        match = re.search(r"shout on 127\.0\.0\.1:(\d+), http on 127\.0\.0\.1:(\d+)", banner)
        assert match, f"unexpected banner: {banner!r}"
        shout_port, http_port = (int(port) for port in match.groups())

        with socket.create_connection(("127.0.0.1", shout_port), timeout=TIMEOUT) as sock:
            sock.sendall(b"quiet words")
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
        assert received == b"QUIET WORDS"

        url = f"http://127.0.0.1:{http_port}/?text=from+the+web"
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            assert response.read() == b"FROM THE WEB\n"

        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
