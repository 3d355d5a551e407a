"""``protoshim serve`` logging and HTTP limits, run as a user runs the command.

The access log, the error log, ``--log-level``, ``--log-config``, and the
HTTP group's ``--timeout-keep-alive``, ``--limit-concurrency``,
``--limit-max-requests`` and ``--root-path`` for WSGI.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import protoshim

from .conftest import CliServer, free_port, wait_for_port

APPS = """
import asyncio
from protoshim.protocols.http import http_server

def wsgi(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom in the app")
    body = ("%s|%s|%s" % (environ["SCRIPT_NAME"], environ["PATH_INFO"],
                          environ.get("QUERY_STRING", ""))).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]

async def asgi(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close"})
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(30)
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"created"})

async def echo(websocket):
    async for message in websocket:
        await websocket.send(message)

handlers = http_server(static={"/files": "static"}, websockets={"/ws": echo})
"""

#: ``HOST - - [day/Mon/year:h:m:s zone] "REQUEST" STATUS SIZE "REFERER" "AGENT"``
COMBINED = (
    r"^(?P<host>\S+) - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<size>\d+|-) "(?P<referer>[^"]*)" '
    r'"(?P<agent>(?:[^"\\]|\\.)*)"$'
)

Start = Callable[..., CliServer]


@pytest.fixture
def apps(tmp_path: Path) -> Path:
    (tmp_path / "apps.py").write_text(APPS)
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "hello.txt").write_bytes(b"hello, file\n")
    return tmp_path


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def upgrade(port: int, path: str) -> bytes:
    """Send a WebSocket handshake; return the response head."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            assert data, head
            head += data
    return head


def access_line(server: CliServer, request: str) -> re.Match[str]:
    line = server.wait_line(f'"{re.escape(request)}"').string
    match = re.match(COMBINED, line)
    assert match, line
    return match


def test_wsgi_requests_are_logged_in_the_combined_format(apps: Path, cli_server: Start) -> None:
    server = cli_server("--wsgi", "apps:wsgi")
    headers = {"Referer": "http://example.test/from", "User-Agent": 'agent "quoted"'}
    assert get(server.port, "/a/b?x=1", headers) == (200, b"|/a/b|x=1")
    line = access_line(server, "GET /a/b?x=1 HTTP/1.1")
    assert line["host"] == "127.0.0.1"
    assert (line["status"], line["size"]) == ("200", "9")
    assert line["referer"] == "http://example.test/from"
    assert line["agent"] == r"agent \"quoted\""
    server.stop()


def test_asgi_responses_and_websocket_upgrades_are_logged(apps: Path, cli_server: Start) -> None:
    server = cli_server("--asgi", "apps:asgi")
    assert get(server.port, "/made") == (201, b"created")
    line = access_line(server, "GET /made HTTP/1.1")
    assert (line["status"], line["size"], line["referer"]) == ("201", "7", "-")
    assert upgrade(server.port, "/socket").startswith(b"HTTP/1.1 101 ")
    line = access_line(server, "GET /socket HTTP/1.1")
    assert (line["status"], line["size"]) == ("101", "-")
    server.stop()


def test_static_files_and_handler_websockets_are_logged(apps: Path, cli_server: Start) -> None:
    server = cli_server("apps:handlers")
    assert get(server.port, "/files/hello.txt") == (200, b"hello, file\n")
    line = access_line(server, "GET /files/hello.txt HTTP/1.1")
    assert (line["status"], line["size"]) == ("200", "12")
    assert get(server.port, "/files/missing")[0] == 404
    assert access_line(server, "GET /files/missing HTTP/1.1")["status"] == "404"
    assert upgrade(server.port, "/ws").startswith(b"HTTP/1.1 101 ")
    assert access_line(server, "GET /ws HTTP/1.1")["status"] == "101"
    server.stop()


def test_no_access_log_leaves_only_the_server_lines(apps: Path, cli_server: Start) -> None:
    server = cli_server("--wsgi", "apps:wsgi", "--no-access-log")
    assert get(server.port, "/quiet")[0] == 200
    server.stop()
    server.wait_line("shutting down")
    assert all(line.startswith("protoshim: ") for line in server.lines), server.lines


def test_log_level_warning_hides_info_and_access_log_forces_it_on(
    apps: Path, cli_server: Start
) -> None:
    port = free_port()
    server = cli_server(
        "--wsgi",
        "apps:wsgi",
        "--log-level",
        "warning",
        "--access-log",
        "--port",
        str(port),
        ready=False,
    )
    wait_for_port(port)
    server.port = port
    assert get(port, "/forced")[0] == 200
    access_line(server, "GET /forced HTTP/1.1")
    server.stop()
    assert not any("serving" in line or "shutting down" in line for line in server.lines)


def test_application_errors_go_to_stderr_with_their_traceback(
    apps: Path, cli_server: Start
) -> None:
    server = cli_server("--wsgi", "apps:wsgi")
    assert get(server.port, "/boom")[0] == 500
    assert access_line(server, "GET /boom HTTP/1.1")["status"] == "500"
    stderr = server.stop()
    assert "Traceback (most recent call last)" in stderr
    assert "RuntimeError: boom in the app" in stderr
    assert not any("Traceback" in line for line in server.lines)


LOG_FILES = {
    "version": 1,
    "formatters": {"tagged": {"format": "%(name)s %(levelname)s %(message)s"}},
    "handlers": {
        "errors": {"class": "logging.FileHandler", "filename": "errors.log", "formatter": "tagged"},
        "access": {"class": "logging.FileHandler", "filename": "access.log", "formatter": "tagged"},
    },
    "loggers": {
        "protoshim.error": {"handlers": ["errors"], "level": "INFO"},
        "protoshim.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}

INI = """
[loggers]
keys=root,access
[handlers]
keys=file
[formatters]
keys=tagged
[logger_root]
handlers=
[logger_access]
qualname=protoshim.access
handlers=file
level=INFO
propagate=0
[handler_file]
class=FileHandler
args=("access.log",)
formatter=tagged
[formatter_tagged]
format=ini %(name)s %(message)s
"""


def test_a_json_log_config_sends_each_log_to_its_file(apps: Path, cli_server: Start) -> None:
    (apps / "logging.json").write_text(json.dumps(LOG_FILES))
    port = free_port()
    server = cli_server(
        "--wsgi", "apps:wsgi", "--log-config", "logging.json", "--port", str(port), ready=False
    )
    wait_for_port(port)
    assert get(port, "/boom")[0] == 500
    assert get(port, "/fine")[0] == 200
    server.stop()
    errors = (apps / "errors.log").read_text()
    assert "protoshim.error INFO protoshim: serving apps:wsgi" in errors
    assert "RuntimeError: boom in the app" in errors
    access = (apps / "access.log").read_text().splitlines()
    assert len(access) == 2, access
    assert access[1].startswith("protoshim.access INFO 127.0.0.1 - - [")
    assert '"GET /fine HTTP/1.1" 200 7 "-" "-"' in access[1]


def test_an_ini_log_config_goes_through_fileconfig(apps: Path, cli_server: Start) -> None:
    (apps / "logging.ini").write_text(INI)
    port = free_port()
    server = cli_server(
        "--wsgi", "apps:wsgi", "--log-config", "logging.ini", "--port", str(port), ready=False
    )
    wait_for_port(port)
    assert get(port, "/ini")[0] == 200
    server.stop()
    lines = (apps / "access.log").read_text().splitlines()
    assert lines and lines[0].startswith("ini protoshim.access 127.0.0.1 - - ["), lines


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("yaml") is None, reason="PyYAML is not installed"
)
def test_a_yaml_log_config_is_read_with_pyyaml(apps: Path, cli_server: Start) -> None:
    (apps / "logging.yaml").write_text(json.dumps(LOG_FILES))  # JSON is YAML
    port = free_port()
    server = cli_server(
        "--wsgi", "apps:wsgi", "--log-config", "logging.yaml", "--port", str(port), ready=False
    )
    wait_for_port(port)
    assert get(port, "/yaml")[0] == 200
    server.stop()
    assert '"GET /yaml HTTP/1.1" 200' in (apps / "access.log").read_text()


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``protoshim serve ARGS``, expect exit status 2; return its one stderr line."""
    result = subprocess.run(
        [sys.executable, "-m", "protoshim", "serve", "--port", "0", *args],
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("protoshim: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log-config", "missing.json"], "--log-config missing.json: No such file"),
        (["--log-config", "missing.ini"], "--log-config missing.ini: no such file"),
        (["--log-config", "broken.json"], "--log-config broken.json: JSONDecodeError"),
        (["--log-config", "wrong.json"], "--log-config wrong.json: ValueError"),
        (["--log-config", "logging.yaml"], "YAML needs PyYAML: pip install pyyaml"),
        (["--forwarded-allow-ips", "10.0.0.1,nonsense"], "not an IP address or network"),
        (["--timeout-keep-alive", "0"], "--timeout-keep-alive: keepalive_timeout must be"),
        (["--limit-concurrency", "0"], "--limit-concurrency: limit_concurrency must be"),
        (["--limit-max-requests", "0"], "--limit-max-requests must be at least 1"),
    ],
)
def test_bad_logging_and_http_options_are_one_line(
    apps: Path, args: list[str], message: str
) -> None:
    (apps / "broken.json").write_text("{")
    (apps / "wrong.json").write_text('{"version": 7}')
    (apps / "logging.yaml").write_text("version: 1\n")
    # Shadow any installed PyYAML: the error must be the same one line without it.
    (apps / "noyaml" / "yaml").mkdir(parents=True)
    (apps / "noyaml" / "yaml" / "__init__.py").write_text("raise ImportError('no yaml')\n")
    env = {"PYTHONPATH": str(apps / "noyaml")}
    assert message in run_cli(apps, "--wsgi", "apps:wsgi", *args, env=env)


def test_a_bad_forwarded_allow_ips_variable_is_one_line(apps: Path) -> None:
    env = {"FORWARDED_ALLOW_IPS": "nonsense"}
    line = run_cli(apps, "--wsgi", "apps:wsgi", "--proxy-headers", env=env)
    assert "FORWARDED_ALLOW_IPS" in line


def test_http_options_need_an_http_application(apps: Path) -> None:
    line = run_cli(apps, "protoshim.protocols.echo:EchoServer", "--limit-max-requests", "2")
    assert line.endswith("--limit-max-requests needs --asgi or --wsgi")
    line = run_cli(apps, "protoshim.protocols.echo:EchoServer", "--proxy-headers")
    assert line.endswith("--proxy-headers needs --asgi or --wsgi")


@pytest.mark.parametrize("framework", sorted(protoshim.frameworks()))
def test_limit_max_requests_stops_the_server_gracefully(
    framework: str, apps: Path, cli_server: Start
) -> None:
    server = cli_server(
        "--framework", framework, "--wsgi", "apps:wsgi", "--limit-max-requests", "3",
        "--timeout-keep-alive", "30", "--log-level", "info",
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for index in range(3):
            conn.request("GET", f"/n{index}", headers={"User-Agent": "counter"})
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, f"|/n{index}|".encode())
    finally:
        conn.close()
    assert server.proc.wait(timeout=30) == 0
    server.wait_line("served 3 requests")
    server.wait_line("shutting down")
    # One access-log line per request, on every framework.
    for index in range(3):
        line = access_line(server, f"GET /n{index} HTTP/1.1")
        assert (line["status"], line["agent"]) == ("200", "counter")


def test_limit_concurrency_answers_503_beyond_the_limit(apps: Path, cli_server: Start) -> None:
    server = cli_server("--asgi", "apps:asgi", "--limit-concurrency", "1")
    first = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        first.request("GET", "/one")
        response = first.getresponse()
        assert (response.status, response.read()) == (201, b"created")
        # The first connection is still open (kept alive): a second one is too many.
        status, body = get(server.port, "/two")
        assert status == 503
        assert b"concurrency limit" in body
        assert access_line(server, "GET /two HTTP/1.1")["status"] == "503"
    finally:
        first.close()
    # Once it has closed, the slot is free again (the server sees the close soon).
    deadline = time.monotonic() + 10
    while (status := get(server.port, "/three")[0]) == 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 201
    server.stop()


def test_timeout_keep_alive_closes_an_idle_connection(apps: Path, cli_server: Start) -> None:
    server = cli_server("--wsgi", "apps:wsgi", "--timeout-keep-alive", "0.3")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while not received.endswith(b"|/idle|"):
            data = sock.recv(4096)
            assert data, received
            received += data
        began = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server, well before the 5 s default
        assert time.monotonic() - began < 3
    server.stop()


def test_root_path_is_the_wsgi_script_name(apps: Path, cli_server: Start) -> None:
    server = cli_server("--wsgi", "apps:wsgi", "--root-path", "/mounted/")
    assert get(server.port, "/page?q=2") == (200, b"/mounted|/page|q=2")
    server.stop()


def test_a_request_refused_unparsed_is_logged_without_a_request_line(
    apps: Path, cli_server: Start
) -> None:
    server = cli_server("--wsgi", "apps:wsgi")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /\x01bad HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
    line = server.wait_line(r'"-" 400 \d+ "-" "-"$').string
    assert re.match(COMBINED, line), line
    server.stop()
