"""``protoshim serve`` and ``demo`` listeners: TLS, Unix sockets, inherited
descriptors, systemd socket activation and several ``--bind``s, each run as
a real command on every framework."""

from __future__ import annotations

import fcntl
import os
import re
import selectors
import signal
import socket
import ssl
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

import protoshim

FRAMEWORKS = sorted(protoshim.frameworks())
ECHO = "protoshim.protocols.echo:EchoServer"
TIMEOUT = 30
STARTUP = re.compile(r"protoshim: serving .* at (.*) \(Ctrl-C to stop\)")

# A WSGI and an ASGI app that say which scheme they were reached by.
SCHEME_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["wsgi.url_scheme"].encode()]

async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["scheme"].encode()})
"""

# An echo server that first says what it found of systemd's variables.
ENV_ECHO = """
import asyncio, os

class EnvEcho(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        found = (os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS"))
        transport.write(repr(found).encode() + b"\\n")

    def data_received(self, data):
        self.transport.write(data)
"""


@dataclass(frozen=True)
class PKI:
    ca: Path
    cert: Path
    key: Path
    encrypted_key: Path  # the same key, encrypted with PASSWORD
    client: Path  # a client certificate and key, signed by the CA
    context: ssl.SSLContext  # a client context trusting the CA


PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    server.private_key_pem.write_to_path(str(folder / "key.pem"))
    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), None)
    (folder / "encrypted.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD.encode()),
        )
    )
    ca.issue_cert("client@example.com").private_key_and_cert_chain_pem.write_to_path(
        str(folder / "client.pem")
    )
    context = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    context.set_alpn_protocols(["h2", "http/1.1"])
    return PKI(
        folder / "ca.pem",
        folder / "cert.pem",
        folder / "key.pem",
        folder / "encrypted.pem",
        folder / "client.pem",
        context,
    )


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "protoshim", *args]


@contextmanager
def serving(argv: list[str], **popen: object) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start a server; yield it with the addresses of its startup line; kill it after."""
    proc = subprocess.Popen(  # type: ignore[call-overload]
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, **popen,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        with selectors.DefaultSelector() as waiting:
            waiting.register(proc.stdout, selectors.EVENT_READ)
            ready = waiting.select(TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        found = STARTUP.match(line)
        if found is None:
            proc.kill()
            pytest.fail(f"no startup line: {line!r} {proc.stderr.read()}")
        yield proc, found[1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 0


def tcp_ports(addresses: str) -> list[int]:
    return [int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)", addresses)]


def connect_unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    sock.connect(str(path))
    return sock


def connect_tcp(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def echoes(sock: socket.socket, data: bytes = b"ping") -> bool:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(len(data) - len(received))
        if not chunk:
            break
        received += chunk
    return received == data


def http_get(sock: ssl.SSLSocket, path: str = "/") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    response = b""
    while chunk := sock.recv(65536):
        response += chunk
    return response


def listen_backlog(sock: socket.socket) -> int:
    """The backlog a listening TCP socket was given, as Linux reports it.

    For a listener, ``struct tcp_info``'s ``tcpi_sacked`` holds the maximum
    accept queue (after eight one-byte fields and five 32-bit ones).
    """
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    backlog: int = struct.unpack_from("I", info, 28)[0]
    return backlog


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_tls_echo_requires_a_client_certificate(framework: str, pki: PKI) -> None:
    argv = command(
        "serve", "--framework", framework, "--port", "0", ECHO,
        "--certfile", str(pki.cert), "--keyfile", str(pki.key),
        "--ca-certs", str(pki.ca), "--cert-reqs", "2",
    )  # fmt: skip
    with serving(argv) as (proc, addresses):
        (port,) = tcp_ports(addresses)
        with_cert = ssl.create_default_context(cafile=str(pki.ca))
        with_cert.set_alpn_protocols(["http/1.1"])
        with_cert.load_cert_chain(pki.client)
        with with_cert.wrap_socket(connect_tcp(port), server_hostname="localhost") as tls:
            assert echoes(tls)
            # A protocol factory is not HTTP: no ALPN protocol is offered.
            assert tls.selected_alpn_protocol() is None
        anonymous = ssl.create_default_context(cafile=str(pki.ca))
        with anonymous.wrap_socket(connect_tcp(port), server_hostname="localhost") as tls:
            # TLS 1.3 finishes the client's handshake before the server has
            # checked it: the refusal comes as an alert or a closed connection.
            try:
                tls.sendall(b"ping")
                refused = tls.recv(4) == b""
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                refused = True
            assert refused
        stop(proc)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_wsgi_over_https_on_tcp_and_unix_negotiates_http_1_1(
    framework: str, pki: PKI, tmp_path: Path
) -> None:
    (tmp_path / "scheme_app.py").write_text(SCHEME_APP)
    path = tmp_path / "https.sock"
    argv = command(
        "serve", "--framework", framework, "--wsgi", "scheme_app:app",
        "--bind", "127.0.0.1:0", "--bind", f"unix:{path}",
        "--certfile", str(pki.cert), "--keyfile", str(pki.encrypted_key),
        "--keyfile-password", PASSWORD,
    )  # fmt: skip
    with serving(argv, cwd=tmp_path) as (proc, addresses):
        assert str(path) in addresses
        (port,) = tcp_ports(addresses)
        for raw in (connect_tcp(port), connect_unix(path)):
            with pki.context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.selected_alpn_protocol() == "http/1.1"
                response = http_get(tls)
            assert response.startswith(b"HTTP/1.1 200 "), response
            assert response.endswith(b"\r\n\r\nhttps"), response
        stop(proc)
    assert not path.exists()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_asgi_over_https_on_a_unix_socket(framework: str, pki: PKI, tmp_path: Path) -> None:
    (tmp_path / "scheme_app.py").write_text(SCHEME_APP)
    path = tmp_path / "asgi.sock"
    argv = command(
        "serve", "--framework", framework, "--asgi", "scheme_app:asgi", "--uds", str(path),
        "--certfile", str(pki.cert), "--keyfile", str(pki.key),
    )  # fmt: skip
    with serving(argv, cwd=tmp_path) as (proc, addresses):
        assert addresses == str(path)
        with pki.context.wrap_socket(connect_unix(path), server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            response = http_get(tls)
        assert response.startswith(b"HTTP/1.1 200 "), response
        assert response.endswith(b"\r\n\r\nhttps"), response
        stop(proc)
    assert not path.exists()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_tcp_and_unix_binds_are_served_and_socket_files_removed_on_sigterm(
    framework: str, tmp_path: Path
) -> None:
    bound, stale = tmp_path / "bind.sock", tmp_path / "uds.sock"
    # A socket file left by a server that died: nobody listens on it.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))
    argv = command(
        "serve", "--framework", framework, ECHO,
        "--bind", f"unix:{bound}", "--bind", "127.0.0.1:0", "--uds", str(stale),
    )  # fmt: skip
    with serving(argv) as (proc, addresses):
        (port,) = tcp_ports(addresses)
        # TCP first, whatever the order given, so that tools parsing the
        # startup line for its first port find one.
        line = f"protoshim: serving {ECHO} on {framework} at {addresses} (Ctrl-C to stop)"
        assert re.search(r"serving .* at \S*?:(\d+)", line)[1] == str(port)  # type: ignore[index]
        assert addresses.split(", ")[1:] == [str(bound), str(stale)]
        for sock in (connect_tcp(port), connect_unix(bound), connect_unix(stale)):
            with sock:
                assert echoes(sock)
        stop(proc)
    assert not bound.exists() and not stale.exists()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_inherited_fd_and_socket_activation_with_a_backlog(
    framework: str, tmp_path: Path
) -> None:
    (tmp_path / "env_echo.py").write_text(ENV_ECHO)
    activated, passed = (socket.create_server(("127.0.0.1", 0)) for _ in range(2))
    with activated, passed:
        # Numbers above 3, so that moving one to 3 cannot overwrite the other.
        a_fd, p_fd = (fcntl.fcntl(s, fcntl.F_DUPFD_CLOEXEC, 10) for s in (activated, passed))
        try:
            serve = command(
                "serve", "--framework", framework, "env_echo:EnvEcho",
                "--fd", str(p_fd), "--backlog", "7",
            )  # fmt: skip
            # As systemd does: the socket at 3, and LISTEN_PID set to the pid
            # of the process that will serve (exec keeps the pid).
            launcher = (
                "import os, sys\n"
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
                f"os.dup2({a_fd}, 3)\n"
                f"os.close({a_fd})\n"
                "os.execv(sys.executable, sys.argv[1:])\n"
            )
            argv = [sys.executable, "-c", launcher, *serve]
            with serving(argv, cwd=tmp_path, pass_fds=(a_fd, p_fd)) as (proc, addresses):
                ports = {s.getsockname()[1] for s in (activated, passed)}
                assert set(tcp_ports(addresses)) == ports
                for port in ports:
                    with connect_tcp(port) as sock:
                        # The variables are gone, for the processes the app starts.
                        assert sock.makefile("rb").readline() == b"(None, None)\n"
                        assert echoes(sock)
                # Our copies share the sockets the server listens on.
                assert listen_backlog(activated) == listen_backlog(passed) == 7
                stop(proc)
        finally:
            os.close(a_fd)
            os.close(p_fd)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_demo_serves_https_on_a_unix_socket(framework: str, pki: PKI, tmp_path: Path) -> None:
    path = tmp_path / "demo.sock"
    argv = command(
        "demo", "--framework", framework, "--uds", str(path),
        "--certfile", str(pki.cert), "--keyfile", str(pki.key),
    )  # fmt: skip
    with serving(argv) as (proc, addresses):
        assert addresses == str(path)
        with pki.context.wrap_socket(connect_unix(path), server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"
            response = http_get(tls)
        assert response.startswith(b"HTTP/1.1 200 "), response[:200]
        assert b"<title>Echo Test</title>" in response
        stop(proc)
    assert not path.exists()


def one_line_error(argv: list[str], **run: object) -> str:
    result = subprocess.run(  # type: ignore[call-overload]
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT,
        check=False, **run,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("protoshim: error: ")
    message: str = lines[0].removeprefix("protoshim: error: ")
    return message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backlog", "0"], "--backlog must be a whole number >= 1, got '0'"),
        (["--backlog", "many"], "--backlog must be a whole number >= 1, got 'many'"),
        (["--bind", "localhost"], "--bind localhost: expected HOST:PORT, [V6]:PORT, unix:PATH"),
        (["--bind", "127.0.0.1:70000"], "--bind 127.0.0.1:70000: not a port"),
        (["--bind", "fd://three"], "--bind fd://three: not a file descriptor number"),
        (["--bind", "unix:"], "--bind unix:: unix: needs a path"),
        (["--fd", "x"], "--fd: not a file descriptor number: 'x'"),
        (["--fd", "987"], "cannot listen on fd://987: no such open descriptor"),
        (["--fd", "0"], "cannot listen on fd://0: it is not a socket"),
        (["--uds", "/no/such/folder/s.sock"], "cannot listen on unix:/no/such/folder/s.sock: No "),
        (["--keyfile", "key.pem"], "--keyfile needs --certfile"),
        (["--cert-reqs", "required"], "--cert-reqs needs --certfile"),
        (["--certfile", "missing.pem"], "cannot read --certfile missing.pem: No such file"),
    ],
)
def test_bad_listener_options_are_one_line(args: list[str], message: str) -> None:
    assert message in one_line_error(command("serve", ECHO, *args))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keyfile", "{encrypted_key}"], "the key in {encrypted_key} is encrypted: give "),
        (
            ["--keyfile", "{encrypted_key}", "--keyfile-password", "wrong"],
            "--keyfile-password does not decrypt the key in {encrypted_key}",
        ),
        (["--keyfile", "{ca}"], "cannot load the certificate and key from {cert} and {ca}"),
        (["--keyfile", "{key}", "--cert-reqs", "5"], "--cert-reqs: expected 0/none, 1/opt"),
        (["--keyfile", "{key}", "--cert-reqs", "2"], "--cert-reqs optional/required needs --ca"),
        (
            ["--keyfile", "{key}", "--cert-reqs", "optional", "--ca-certs", "{key}"],
            "--ca-certs {key}: no certificate or crl found",
        ),
    ],
)
def test_bad_tls_files_are_one_line(args: list[str], message: str, pki: PKI) -> None:
    files = {name: str(getattr(pki, name)) for name in ("ca", "cert", "key", "encrypted_key")}
    given = [arg.format(**files) for arg in args]
    found = one_line_error(command("demo", "--certfile", files["cert"], *given))
    assert message.format(**files) in found


def test_a_regular_file_or_a_live_socket_is_not_replaced(tmp_path: Path) -> None:
    regular = tmp_path / "notes.txt"
    regular.write_text("keep me")
    message = one_line_error(command("serve", ECHO, "--uds", str(regular)))
    assert message == f"cannot listen on unix:{regular}: the file exists and is not a socket"
    assert regular.read_text() == "keep me"
    live = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(live))
        other.listen()
        message = one_line_error(command("serve", ECHO, "--bind", f"unix:{live}"))
        assert message == f"cannot listen on unix:{live}: a server is listening on it"
        assert live.exists()


def test_bad_socket_activation_variables_are_one_line() -> None:
    env = dict(os.environ, LISTEN_PID="1", LISTEN_FDS="all")
    message = one_line_error(command("serve", ECHO), env=env)
    assert message == "socket activation: LISTEN_PID='1', LISTEN_FDS='all': not numbers"
