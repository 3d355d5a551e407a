"""The ``protoshim`` command, run as a user would run it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import protoshim

from .conftest import free_port

ECHO = "protoshim.protocols.echo:EchoServer"


def protoshim_cmd(
    *args: str, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "protoshim", *args],
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--framework", "nope", ECHO], "unknown framework 'nope'"),
        (["serve", "no_such_module_xyz:Factory"], "cannot import 'no_such_module_xyz'"),
        (["serve", "protoshim.protocols.echo:Missing"], "has no attribute 'Missing'"),
        (["serve", "protoshim.protocols.echo"], "expected MODULE:NAME"),
        (["serve", "protoshim.protocols.echo:__doc__"], "is not callable"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = protoshim_cmd(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("protoshim: error: ")
    assert message in lines[0]


@pytest.mark.parametrize(
    ("source", "args", "message"),
    [
        ("raise RuntimeError('boom')\n", [], "RuntimeError: boom (app_mod.py, line 1)"),
        ("def (\n", [], "SyntaxError: invalid syntax (app_mod.py, line 1)"),
        ("app = 3\n", ["--wsgi"], "app_mod:app is not callable"),
        ("app = 3\n", ["--asgi"], "app_mod:app is not callable"),
    ],
)
def test_a_broken_app_module_is_one_line(
    source: str, args: list[str], message: str, tmp_path: Path
) -> None:
    # Run from the app's folder, as a user would: the folder is on the import path.
    (tmp_path / "app_mod.py").write_text(source)
    result = protoshim_cmd("serve", *args, "app_mod:app", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message.replace("app_mod.py", str(tmp_path / "app_mod.py")) in lines[0]


@pytest.mark.parametrize(
    "args", [[ECHO, "--wsgi", "os:getcwd"], ["--asgi", "a:b", "--wsgi", "c:d"]]
)
def test_a_factory_and_apps_together_are_refused(args: list[str]) -> None:
    result = protoshim_cmd("serve", *args)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "protoshim: error: give one of MODULE:FACTORY, --asgi MODULE:APP and --wsgi MODULE:APP"
    )


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_bad_port_is_a_usage_error(port: str) -> None:
    result = protoshim_cmd("serve", "--port", port, ECHO)
    assert result.returncode == 2
    assert "argument --port:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("framework", "hint"),
    [("gevent", "pip install 'protoshim[gevent]'"), ("pyuv", "protoshim install-pyuv")],
)
def test_a_framework_not_installed_says_how_to_install_it(
    framework: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protoshim.Adapter, "available", lambda self: self.name != framework)
    with pytest.raises(protoshim.UnknownFramework) as caught:
        protoshim.get_adapter(framework)
    assert str(caught.value).startswith(f"framework '{framework}' is not installed: {hint}")


@pytest.mark.parametrize(
    ("args", "hidden", "message"),
    [
        (["demo"], "flask", "the demo needs flask: pip install 'protoshim[http]'"),
        (["serve", "--wsgi", "os:getcwd"], "h11", "--wsgi needs h11: pip install "
         "'protoshim[http]'"),
    ],
)
def test_a_missing_http_package_says_how_to_install_it(
    args: list[str], hidden: str, message: str
) -> None:
    # Block the package, as if it were not installed.
    code = (
        f"import sys; sys.modules[{hidden!r}] = None; "
        f"from protoshim._cli import main; sys.exit(main({args!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"protoshim: error: {message}"


def test_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = protoshim_cmd("serve", "--port", str(port), ECHO)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_version_names_protoshim_python_and_the_frameworks() -> None:
    result = protoshim_cmd("--version")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("protoshim 0."), result.stdout
    for name, version in protoshim.frameworks().items():
        assert f"{name} {version}" in lines[0]


def test_frameworks_lists_installed_adapters() -> None:
    result = protoshim_cmd("frameworks")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == sorted(protoshim.frameworks())


@pytest.fixture(params=sorted(protoshim.frameworks()))
def server(request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "protoshim", "serve", "--framework", request.param,
         "--port", str(port), ECHO],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"on {request.param} at 127.0.0.1:{port}" in line, line + proc.stderr.read()
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve_echoes_and_a_signal_closes_every_connection(
    server: tuple[subprocess.Popen[str], int], sig: signal.Signals
) -> None:
    proc, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as busy:
        busy.sendall(b"ping")
        assert busy.recv(4) == b"ping"
        proc.send_signal(sig)
        # Both connections are closed by the server, not left hanging.
        assert idle.recv(1) == b""
        assert busy.recv(1) == b""
    assert proc.wait(timeout=30) == 0
    assert proc.stdout is not None
    assert "shutting down" in proc.stdout.read()


def test_run_uses_the_named_framework() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert protoshim.run(which(), framework="selectors") == "protoshim._loop"
    assert protoshim.run(which(), framework="asyncio").startswith("asyncio")


GRACEFUL = '''
import asyncio
import os

class Polite(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def begin_shutdown(self):
        # Finish "current work" a little later, then close.
        asyncio.get_running_loop().call_later(0.2, self.finish)

    def finish(self):
        self.transport.write(b"bye")
        self.transport.close()

class Stubborn(asyncio.Protocol):
    def begin_shutdown(self):
        pass
'''


def serve_module(tmp_path, factory: str, *extra: str) -> tuple[subprocess.Popen[str], int]:
    (tmp_path / "graceful_mod.py").write_text(GRACEFUL)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "protoshim", "serve", "--port", str(port), *extra,
         f"graceful_mod:{factory}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert proc.stdout is not None
    assert "serving" in proc.stdout.readline()
    return proc, port


def test_shutdown_lets_a_protocol_finish_its_work(tmp_path) -> None:
    proc, port = serve_module(tmp_path, "Polite")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            proc.send_signal(signal.SIGTERM)
            assert conn.recv(3) == b"bye"
            assert conn.recv(1) == b""
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_shutdown_aborts_what_outlives_the_grace_period(tmp_path) -> None:
    proc, port = serve_module(tmp_path, "Stubborn", "--grace", "0.3")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            proc.send_signal(signal.SIGTERM)
            assert conn.recv(1) == b""
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_negative_grace_is_a_usage_error() -> None:
    result = protoshim_cmd("serve", "--grace", "-1", ECHO)
    assert result.returncode == 2
    assert "--grace must be >= 0" in result.stderr


def test_a_reader_that_goes_away_is_not_an_error() -> None:
    # `protoshim frameworks | head -1`: the pipe is closed before the listing is written.
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    with os.fdopen(write_fd, "wb") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "protoshim", "frameworks"],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    assert (done.returncode, done.stderr) == (0, "")


ASGI_APP = '''
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            phase = message["type"].removeprefix("lifespan.")
            if phase == "startup" and FAIL:
                await send({"type": "lifespan.startup.failed", "message": "no database"})
                return
            if phase == "startup":
                scope["state"]["started"] = "yes"
            print("lifespan", phase, flush=True)
            await send({"type": f"lifespan.{phase}.complete"})
            if phase == "shutdown":
                return
    body = scope["state"].get("started", "no").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
'''


def write_asgi_app(tmp_path, fail: bool = False) -> None:
    (tmp_path / "asgi_mod.py").write_text(f"FAIL = {fail}\n" + ASGI_APP)


@pytest.mark.parametrize(("lifespan", "body"), [("auto", b"yes"), ("off", b"no")])
def test_serve_asgi_runs_lifespan_around_the_server(tmp_path, lifespan: str, body: bytes) -> None:
    write_asgi_app(tmp_path)
    port = free_port()
    # No PYTHONPATH: the app is found in the current directory, as with uvicorn.
    proc = subprocess.Popen(
        [sys.executable, "-m", "protoshim", "serve", "--asgi", "asgi_mod:app",
         "--port", str(port), "--lifespan", lifespan],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline()]
        if lifespan == "auto":
            lines.append(proc.stdout.readline())
        assert "serving asgi_mod:app" in lines[-1]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            response = b""
            while data := conn.recv(65536):
                response += data
        assert response.startswith(b"HTTP/1.1 200 ")
        assert f"content-length: {len(body)}\r\n".encode() in response.lower()
        assert response.endswith(b"\r\n\r\n" + body)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        started = "lifespan startup" in lines[0]
        assert started == (lifespan == "auto")
        assert ("lifespan shutdown" in out) == (lifespan == "auto")
    finally:
        proc.kill()
        proc.communicate()


def test_failed_asgi_startup_is_one_line_and_exit_3(tmp_path) -> None:
    write_asgi_app(tmp_path, fail=True)
    result = protoshim_cmd(
        *("serve", "--asgi", "asgi_mod:app", "--port", str(free_port()), "--lifespan", "on"),
        cwd=tmp_path,
    )
    assert result.returncode == 3
    assert result.stderr.strip() == "protoshim: error: application startup failed: no database"
    assert "serving" not in result.stdout
