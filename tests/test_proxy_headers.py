"""Proxy headers: the client address and scheme a trusted proxy gives.

The rule on its own (``forwarded_client``), then through ``protoshim serve``
for ASGI (``scope["client"]``, ``scope["scheme"]``, ``wss``), WSGI
(``REMOTE_ADDR``, ``wsgi.url_scheme``) and the access log.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protoshim.protocols.http import TrustedProxies, forwarded_client

from .conftest import CliServer

PEER = ("127.0.0.1", 5000)
LOCAL = TrustedProxies("127.0.0.1")


def resolve(
    headers: dict[str, str], trusted: TrustedProxies = LOCAL, peer: tuple[str, int] = PEER
) -> tuple[tuple[str, int] | None, str]:
    fields = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return forwarded_client(fields, peer, "http", trusted)


def test_x_forwarded_for_and_proto_from_a_trusted_peer() -> None:
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    assert resolve(headers) == (("203.0.113.7", 0), "https")


def test_an_untrusted_peer_changes_nothing() -> None:
    headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    assert resolve(headers, TrustedProxies("10.0.0.0/8")) == (PEER, "http")
    assert resolve(headers, TrustedProxies("")) == (PEER, "http")


def test_the_client_is_the_rightmost_address_no_trusted_proxy_vouches_for() -> None:
    chain = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.0.0.2"}
    # 10.0.0.2 is a trusted inner proxy; 203.0.113.7 is who connected to it,
    # and whatever it claims (198.51.100.1) is not believed.
    assert resolve(chain, TrustedProxies("127.0.0.1, 10.0.0.0/8"))[0] == ("203.0.113.7", 0)
    assert resolve(chain)[0] == ("10.0.0.2", 0)
    assert resolve(chain, TrustedProxies("*"))[0] == ("198.51.100.1", 0)


def test_trusted_networks_in_both_families_and_mapped_v4() -> None:
    trusted = TrustedProxies("192.168.0.0/16,::1")
    assert "192.168.4.5" in trusted
    assert "::ffff:192.168.4.5" in trusted
    assert "::1" in trusted
    assert "192.169.0.1" not in trusted
    assert "not-an-address" not in trusted
    with pytest.raises(ValueError, match="not an IP address or network: 'x'"):
        TrustedProxies("127.0.0.1,x")


def test_rfc_7239_forwarded() -> None:
    value = 'for=192.0.2.60;proto=https;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"'
    assert resolve({"Forwarded": value}) == (("2001:db8:cafe::17", 0), "http")
    everyone = TrustedProxies("*")
    assert resolve({"Forwarded": value}, everyone) == (("192.0.2.60", 0), "https")
    assert resolve({"Forwarded": 'For="192.0.2.1:80";Proto=HTTPS'}) == (
        ("192.0.2.1", 0),
        "https",
    )
    # "unknown" (or an obfuscated name) leaves no address to give.
    assert resolve({"Forwarded": "for=unknown;proto=https"}) == (None, "https")


def test_x_forwarded_headers_win_over_forwarded_and_junk_is_ignored() -> None:
    headers = {"X-Forwarded-For": "203.0.113.7", "Forwarded": "for=192.0.2.60"}
    assert resolve(headers)[0] == ("203.0.113.7", 0)
    assert resolve({"X-Forwarded-Proto": "gopher"}) == (PEER, "http")
    # The trusted proxy says the client is not the peer, and names no address.
    assert resolve({"X-Forwarded-For": "not an address"})[0] is None


APPS = """
import json

def wsgi(environ, start_response):
    body = json.dumps([environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT"),
                       environ["wsgi.url_scheme"]]).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]

async def asgi(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept", "headers": [
            (b"x-seen", json.dumps([scope["client"], scope["scheme"]]).encode())]})
        await send({"type": "websocket.close"})
        return
    if scope["type"] != "http":
        return
    body = json.dumps([scope["client"], scope["scheme"]]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""

Start = Callable[..., CliServer]
SPOOF = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


@pytest.fixture
def apps(tmp_path: Path) -> Path:
    (tmp_path / "apps.py").write_text(APPS)
    return tmp_path


def seen(port: int, headers: dict[str, str], path: str = "/") -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        conn.close()


def test_asgi_sees_the_forwarded_client_and_scheme(apps: Path, cli_server: Start) -> None:
    server = cli_server("--asgi", "apps:asgi", "--proxy-headers")
    assert seen(server.port, SPOOF) == [["203.0.113.7", 0], "https"]
    assert seen(server.port, {})[1] == "http"
    line = server.wait_line(r'"GET / HTTP/1.1" 200').string
    assert line.startswith("203.0.113.7 - - [")
    server.stop()


def test_websocket_scheme_is_wss_behind_a_tls_proxy(apps: Path, cli_server: Start) -> None:
    server = cli_server("--asgi", "apps:asgi", "--proxy-headers")
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "X-Forwarded-For: 198.51.100.9\r\nX-Forwarded-Proto: https\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            assert data, head
            head += data
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b'x-seen: [["198.51.100.9", 0], "wss"]' in head.lower()
    server.stop()


def test_wsgi_sees_the_forwarded_client_and_scheme(apps: Path, cli_server: Start) -> None:
    server = cli_server("--wsgi", "apps:wsgi", "--proxy-headers")
    assert seen(server.port, SPOOF) == ["203.0.113.7", "0", "https"]
    server.stop()


def test_without_proxy_headers_or_trust_nothing_changes(apps: Path, cli_server: Start) -> None:
    plain = cli_server("--wsgi", "apps:wsgi")
    address, _, scheme = seen(plain.port, SPOOF)
    assert (address, scheme) == ("127.0.0.1", "http")
    plain.stop()
    distrust = cli_server(
        "--asgi", "apps:asgi", "--proxy-headers", "--forwarded-allow-ips", "10.1.2.3"
    )
    client, scheme = seen(distrust.port, SPOOF)
    assert (client[0], scheme) == ("127.0.0.1", "http")
    distrust.stop()


def test_forwarded_allow_ips_comes_from_the_environment(apps: Path, cli_server: Start) -> None:
    server = cli_server(
        "--asgi", "apps:asgi", "--proxy-headers", env={"FORWARDED_ALLOW_IPS": "10.1.2.3"}
    )
    client, _ = seen(server.port, SPOOF)
    assert client[0] == "127.0.0.1"  # the variable does not trust this peer
    server.stop()
    env = {"FORWARDED_ALLOW_IPS": "10.1.2.3, 127.0.0.0/8"}
    trusted = cli_server("--asgi", "apps:asgi", "--proxy-headers", env=env)
    client, _ = seen(trusted.port, SPOOF)
    assert client[0] == "203.0.113.7"
    trusted.stop()
