"""``protoshim serve --proxy-headers`` behind a real nginx, on every framework.

nginx terminates TLS and connects to the server from 127.0.0.2, the only
trusted proxy; the client connects to nginx from 127.0.0.3.  The
application must see 127.0.0.3 and ``https``, whatever the client claims in
its own headers, and a client that connects to the server directly must not
be able to claim anything.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import protoshim

from .conftest import CliServer, free_port, wait_for_port

NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(path)), None
)
if NGINX is None and not os.environ.get("CI"):
    pytest.skip(
        "nginx is not installed (apt-get install nginx-light; CI installs it)",
        allow_module_level=True,
    )

PROXY = "127.0.0.2"
CLIENT = "127.0.0.3"

APPS = """
import json

def wsgi(environ, start_response):
    body = json.dumps([environ.get("REMOTE_ADDR"), environ["wsgi.url_scheme"]]).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]

async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps([scope["client"][0], scope["scheme"]]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""

CONFIG = """
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {tmp}/cert.pem;
        ssl_certificate_key {tmp}/key.pem;
        location / {{
            proxy_pass http://127.0.0.1:{app_port};
            proxy_bind {proxy};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[int], int]]:
    """Start nginx in front of the given port; return the port nginx listens on."""
    assert NGINX is not None, "nginx is not installed (the tests nox session installs it)"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    procs: list[subprocess.Popen[str]] = []

    def start(app_port: int) -> int:
        port = free_port()
        config = tmp_path / "nginx.conf"
        config.write_text(
            CONFIG.format(
                # Run as root (CI's containers), nginx's workers would drop to
                # nobody and could not read the files under tmp_path.
                user="user root;" if os.geteuid() == 0 else "",
                tmp=tmp_path,
                port=port,
                app_port=app_port,
                proxy=PROXY,
            )
        )
        proc = subprocess.Popen(
            [
                NGINX,
                "-p",
                str(tmp_path),
                "-e",
                str(tmp_path / "error.log"),
                "-c",
                str(config),
                "-g",
                "daemon off;",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        try:
            wait_for_port(port, proc)
        except OSError:
            proc.kill()
            _, stderr = proc.communicate(timeout=20)
            log = tmp_path / "error.log"
            errors = log.read_text() if log.exists() else ""
            raise AssertionError(f"nginx did not start: {stderr}\n{errors}") from None
        return port

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)
            if proc.stderr is not None:
                proc.stderr.close()


def seen(port: int, headers: dict[str, str], source: str, tls: bool = False) -> Any:
    """GET / from ``source`` and return what the application saw."""
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # nginx's certificate is made up for the test
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=10, source_address=(source, 0), context=context
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        return json.loads(body)
    finally:
        conn.close()


SPOOF = {
    "X-Forwarded-For": "203.0.113.66",
    "X-Forwarded-Proto": "https",
    "Forwarded": "for=1.2.3.4;proto=https",
}


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
@pytest.mark.parametrize("framework", sorted(protoshim.frameworks()))
def test_the_app_sees_the_client_behind_nginx_and_no_one_can_spoof_it(
    framework: str,
    kind: str,
    tmp_path: Path,
    cli_server: Callable[..., CliServer],
    nginx: Callable[[int], int],
) -> None:
    (tmp_path / "apps.py").write_text(APPS)
    server = cli_server(
        f"--{kind}",
        f"apps:{kind}",
        "--framework",
        framework,
        "--proxy-headers",
        "--forwarded-allow-ips",
        PROXY,
    )
    front = nginx(server.port)
    # Through nginx: the real client and the scheme it used.
    assert seen(front, {}, CLIENT, tls=True) == [CLIENT, "https"]
    # What the client claims itself is kept by nginx but not believed: the
    # client is the rightmost address that no trusted proxy vouches for.
    assert seen(front, SPOOF, CLIENT, tls=True) == [CLIENT, "https"]
    # Straight to the server, from a peer that is not the trusted proxy.
    assert seen(server.port, SPOOF, CLIENT) == [CLIENT, "http"]
    access = server.wait_line(rf"^{CLIENT} - - \[").string
    assert '"GET / HTTP/1.1" 200' in access
    server.stop()
