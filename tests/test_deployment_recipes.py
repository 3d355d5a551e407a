"""The recipes of docs/deployment.md, run as written, with only paths and ports changed.

Each block after a ``<!-- recipe: NAME -->`` line is read from the page, so
a recipe that stops working fails here rather than for the reader.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "deployment.md"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
)

#: What the recipes serve as ``main:app``: it answers with what it was told
#: about the request, and echoes WebSocket messages.
MAIN = """
import asyncio, json, os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": scope["scheme"] + " " + message["text"]})
        await send({"type": "websocket.close"})
        return
    seen = {
        "client": scope["client"][0] if scope["client"] else None,
        "scheme": scope["scheme"],
        "server_port": scope["server"][1] if scope["server"] else None,
        # protoshim's loop names its framework's driver; asyncio's is itself
        "driver": type(getattr(asyncio.get_running_loop(), "_driver", None)).__name__,
        "pid": os.getpid(),
    }
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(seen).encode()})
"""


#: the driver class each framework's loop runs on
DRIVERS = {"twisted": "TwistedDriver", "tornado": "TornadoDriver", "pyuv": "PyuvDriver"}


def recipe(name: str) -> str:
    """The code block that follows ``<!-- recipe: name -->`` in the page."""
    text = PAGE.read_text()
    match = re.search(rf"<!-- recipe: {re.escape(name)} -->\n```\w*\n(.*?)\n```", text, re.S)
    assert match, f"docs/deployment.md has no recipe {name!r}"
    return match.group(1)


def command(line: str, **changes: str) -> list[str]:
    """A ``protoshim`` or ``gunicorn`` command line of a recipe, run by this Python."""
    words = shlex.split(line)
    for old, new in changes.items():
        words = [new if word == old else word for word in words]
    program = Path(words[0]).name
    return [sys.executable, "-m", program, *words[1:]]


def get(port: int, *, tls: bool = False, timeout: float = 10) -> dict[str, Any]:
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the certificate is made up for the test
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        seen: dict[str, Any] = json.loads(response.read())
        return seen
    finally:
        conn.close()


def answered(port: int, *, tls: bool = False, timeout: float = 30) -> dict[str, Any]:
    """Poll until the server answers: starting takes its own time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get(port, tls=tls, timeout=5)
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "main.py").write_text(MAIN)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(tmp_path / "app.key"),
         "-out", str(tmp_path / "app.pem")],
        check=True, capture_output=True, timeout=60,
    )
    return tmp_path


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], cwd: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, **kwargs,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()


def test_systemd_socket_activation(site: Path, processes: Callable[..., Any]) -> None:
    assert re.search(r"^ListenStream=\d+$", recipe("systemd-socket"), re.M)
    service = recipe("systemd-service")
    exec_start = re.search(r"^ExecStart=(.*)$", service, re.M).group(1)  # type: ignore[union-attr]
    assert re.search(r"^KillSignal=SIGTERM$", service, re.M)
    # What systemd does: the socket on descriptor 3, LISTEN_PID the server's own.
    listener = socket.create_server(("127.0.0.1", 0))  # the recipe's port may be taken here
    port = listener.getsockname()[1]
    launcher = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); "
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
        "os.execv(sys.argv[2], sys.argv[2:])"
    )
    with listener:
        proc = processes(
            [sys.executable, "-c", launcher, str(listener.fileno()), *command(exec_start)],
            cwd=site, pass_fds=(listener.fileno(),),
        )
    pids = {answered(port)["pid"] for _ in range(20)}
    assert os.getpid() not in pids and proc.pid not in pids  # workers answered
    proc.send_signal(signal.SIGHUP)  # ExecReload
    deadline = time.monotonic() + 30
    while answered(port)["pid"] in pids:  # until a new worker answers
        assert time.monotonic() < deadline, "SIGHUP did not start new workers"
        time.sleep(0.05)
    stop(proc)


def nginx_config(site: Path, port: int, upstreams: list[int]) -> str:
    """The recipe's configuration, as a whole nginx.conf running in ``site``."""
    block = recipe("nginx")
    servers = "".join(f"    server 127.0.0.1:{upstream};\n" for upstream in upstreams)
    block = re.sub(r"    server 127\.0\.0\.1:8000;\n", servers, block)
    block = block.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    block = block.replace("/etc/ssl/", f"{site}/")
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read files under site
    temp = "".join(
        f"    {kind}_temp_path {site}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}\nworker_processes 1;\npid {site}/nginx.pid;\nerror_log {site}/error.log;\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{\n    access_log off;\n{temp}{block}\n}}\n"
    )


@pytest.mark.skipif(
    NGINX is None and not os.environ.get("CI"),
    reason="nginx is not installed (apt-get install nginx-light; the tests session installs it)",
)
def test_nginx_in_front_of_two_frameworks(site: Path, processes: Callable[..., Any]) -> None:
    assert NGINX is not None, "nginx is not installed (the tests nox session installs it)"
    line = recipe("behind-nginx")
    backends = []
    for framework in ("twisted", "tornado"):
        port = free_port()
        proc = processes(
            command(line, **{"8000": str(port), "tornado": framework}), cwd=site
        )
        backends.append((proc, port))
    for _, port in backends:
        answered(port)
    port = free_port()
    (site / "nginx.conf").write_text(nginx_config(site, port, [p for _, p in backends]))
    nginx = processes(
        [NGINX, "-p", str(site), "-e", str(site / "error.log"), "-c", str(site / "nginx.conf"),
         "-g", "daemon off;"],
        cwd=site,
    )
    seen = [answered(port, tls=True) for _ in range(6)]
    # Both machines of the pool answered, each on its own framework, and each
    # saw the browser's address and scheme, not nginx's.
    assert {s["server_port"] for s in seen} == {p for _, p in backends}
    assert {s["driver"] for s in seen} == {"TwistedDriver", "TornadoDriver"}
    assert all(s["client"] == "127.0.0.1" and s["scheme"] == "https" for s in seen)
    from websockets.sync.client import connect

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with connect(f"wss://127.0.0.1:{port}/ws", ssl=context, open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "wss hello"
    nginx.terminate()
    nginx.communicate(timeout=30)
    for proc, _ in backends:
        stop(proc)


def test_tls_without_a_proxy(site: Path, processes: Callable[..., Any]) -> None:
    port = free_port()
    line = recipe("tls").replace("/etc/ssl/", f"{site}/")
    proc = processes(command(line, **{"0.0.0.0:8443": f"127.0.0.1:{port}"}), cwd=site)
    seen = answered(port, tls=True)
    assert seen["scheme"] == "https"
    stop(proc)


def test_gunicorn(site: Path, processes: Callable[..., Any]) -> None:
    pytest.importorskip("gunicorn", reason="the gunicorn extra is not installed")
    conf = recipe("gunicorn")
    run = re.search(r"run with: (.*)$", conf, re.M).group(1)  # type: ignore[union-attr]
    port = free_port()
    (site / "gunicorn.conf.py").write_text(conf.replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
    proc = processes(command(run), cwd=site)
    seen = [answered(port) for _ in range(20)]
    assert proc.pid not in {s["pid"] for s in seen}  # gunicorn's workers answered
    framework = re.search(r"PROTOSHIM_FRAMEWORK=(\w+)", conf).group(1)  # type: ignore[union-attr]
    assert {s["driver"] for s in seen} == {DRIVERS[framework]}
    stop(proc)
