"""``gunicorn -k protoshim.gunicorn.Worker``: real gunicorn arbiters, on every framework."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

import protoshim
from protoshim.protocols.echo import EchoServer

from .conftest import ProcessOutput, free_port

pytest.importorskip("gunicorn", reason="the gunicorn worker needs gunicorn (the test extra)")

import protoshim.gunicorn
from protoshim.gunicorn import detect_interface

TIMEOUT = 30.0

WSGI_APP = """
import os, sys, time

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        sys.stdout.write(f"slow request in {os.getpid()}\\n")  # one write: threads share stdout
        sys.stdout.flush()
        time.sleep(0.5)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

ASGI_APP = """
import os, sys

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            phase = message["type"].removeprefix("lifespan.")
            if phase == "startup":
                scope["state"]["started"] = "yes"
            sys.stdout.write(f"lifespan {phase} {os.getpid()}\\n")  # one write: see above
            sys.stdout.flush()
            await send({"type": f"lifespan.{phase}.complete"})
            if phase == "shutdown":
                return
    body = f"{os.getpid()} {scope['state'].get('started', 'no')}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


class Arbiter(ProcessOutput):
    """A gunicorn master process and every line it and its workers printed."""

    def serving(self, count: int) -> set[int]:
        return {int(pid) for pid in self.wait_for(r"\[(\d+)\] \[INFO\] protoshim: serving", count)}

    def stop(self) -> None:
        """SIGTERM the master; it must exit 0 (see :meth:`stopped`)."""
        self.proc.send_signal(signal.SIGTERM)

    def stopped(self) -> None:
        assert self.proc.wait(timeout=TIMEOUT) == 0, "\n".join(self.lines)
        with self.changed:
            self.changed.wait_for(lambda: self.ended, TIMEOUT)


@contextmanager
def gunicorn(
    tmp_path: Path, framework: str, app: str, *args: str, worker: str = "Worker", **env: str
) -> Iterator[Arbiter]:
    """Run gunicorn with ``protoshim.gunicorn.<worker>`` on ``framework``."""
    port = free_port()
    runtime = tmp_path / f"run-{port}"
    runtime.mkdir()
    env = {
        **os.environ,
        "PROTOSHIM_FRAMEWORK": framework,
        # gunicorn 25+ opens a control socket there: one per arbiter, not one per user
        "XDG_RUNTIME_DIR": str(runtime),
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", f"protoshim.gunicorn.{worker}",
         "-b", f"127.0.0.1:{port}", "--chdir", str(tmp_path), *args, app],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
    )  # fmt: skip
    arbiter = Arbiter(proc, port)
    reader = threading.Thread(target=arbiter.read, daemon=True)
    reader.start()
    try:
        yield arbiter
    finally:
        if proc.poll() is None:
            proc.kill()  # gunicorn's workers notice their parent changed and leave
        proc.wait(timeout=TIMEOUT)
        reader.join(TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()


def get(port: int, path: str = "/") -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("framework", sorted(protoshim.frameworks()))
def test_gunicorn_serves_wsgi_asgi_and_a_protocol(tmp_path, framework: str) -> None:
    trustme = pytest.importorskip("trustme", reason="the TLS check makes certificates with trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    (tmp_path / "wsgi_app.py").write_text(WSGI_APP)
    (tmp_path / "asgi_app.py").write_text(ASGI_APP)
    with ExitStack() as stack:
        # Three arbiters at once: their startups overlap.
        wsgi = stack.enter_context(
            gunicorn(tmp_path, framework, "wsgi_app:app", "-w", "2",
                     "--max-requests", "3", "--graceful-timeout", "10")
        )  # fmt: skip
        # --timeout 1: a worker that missed its heartbeat would be killed within a second.
        asgi = stack.enter_context(
            gunicorn(tmp_path, framework, "asgi_app:app", "-w", "2", "--timeout", "1")
        )
        # The framework's own class this time, and no PROTOSHIM_FRAMEWORK.
        echo = stack.enter_context(
            gunicorn(tmp_path, "nonexistent", "protoshim.protocols.echo:EchoServer", "-w", "2",
                     "--certfile", str(tmp_path / "server.pem"),
                     worker=f"{framework.capitalize()}Worker")
        )  # fmt: skip

        # A protocol factory, the echo protocol, over gunicorn's TLS settings.
        echo.serving(2)
        assert echo.matches(rf"\(protocol\) on {framework}$") != []
        with (
            socket.create_connection(("127.0.0.1", echo.port), timeout=TIMEOUT) as raw,
            client_tls.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            conn.sendall(b"ping")
            assert conn.recv(4) == b"ping"
        echo.stop()  # the three stop at once; each is waited for below

        # ASGI: the lifespan runs in each worker, and requests see its state.
        asgi_workers = asgi.serving(2)
        asgi_started = time.monotonic()
        assert {int(pid) for pid in asgi.wait_for(r"lifespan startup (\d+)", 2)} == asgi_workers
        pid, started = get(asgi.port).split()
        assert (int(pid) in asgi_workers, started) == (True, b"yes")

        # WSGI, and max_requests: each worker leaves after 3 requests and is replaced.
        first = wsgi.serving(2)
        seen: set[int] = set()
        deadline = time.monotonic() + TIMEOUT
        while not seen - first:
            assert time.monotonic() < deadline, seen
            seen.add(int(get(wsgi.port)))
        wsgi.wait_for(r"Autorestarting worker after current request")
        # SIGTERM with requests in flight: each gets its whole response.
        results: list[bytes | BaseException] = []

        def slow() -> None:
            try:
                results.append(get(wsgi.port, "/slow"))
            except BaseException as exc:
                results.append(exc)

        threads = [threading.Thread(target=slow) for _ in range(2)]
        for thread in threads:
            thread.start()
        wsgi.wait_for(r"slow request in (\d+)", 2)
        wsgi.stop()
        wsgi.stopped()
        for thread in threads:
            thread.join(TIMEOUT)
        assert all(isinstance(result, bytes) and result.isdigit() for result in results), results
        assert len(results) == 2
        echo.stopped()

        # The heartbeat: what is checked here is time passing, so it is waited out.
        time.sleep(max(0.0, 2.5 - (time.monotonic() - asgi_started)))
        asgi.stop()
        asgi.stopped()
        assert not asgi.matches("WORKER TIMEOUT")
        # The workers that started are the ones whose lifespan shut down.
        assert {int(pid) for pid in asgi.matches(r"lifespan shutdown (\d+)")} == asgi_workers


def test_gunicorn_worker_reopens_logs_on_sigusr1_and_sigquit_is_quick(tmp_path) -> None:
    (tmp_path / "wsgi_app.py").write_text(WSGI_APP)
    log = tmp_path / "error.log"
    with gunicorn(tmp_path, "asyncio", "wsgi_app:app", "--log-file", str(log)) as arbiter:
        deadline = time.monotonic() + TIMEOUT
        while "protoshim: serving" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "the worker never served"
            time.sleep(0.05)  # polled: the lines go to the file, not to a pipe
        (pid,) = {
            int(p) for p in re.findall(r"\[(\d+)\] \[INFO\] protoshim: serving", log.read_text())
        }
        log.rename(tmp_path / "error.log.1")  # as logrotate does
        os.kill(pid, signal.SIGUSR1)
        while not log.exists():
            assert time.monotonic() < deadline, "SIGUSR1 did not reopen the log file"
            time.sleep(0.05)
        # SIGQUIT: the arbiter and its worker stop at once, in-flight requests cut.
        failed: list[BaseException] = []

        def slow() -> None:
            try:
                get(arbiter.port, "/slow")
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=slow)
        thread.start()
        arbiter.wait_for(r"slow request in (\d+)")
        arbiter.proc.send_signal(signal.SIGQUIT)
        thread.join(TIMEOUT)
        assert arbiter.proc.wait(timeout=TIMEOUT) == 0
        assert len(failed) == 1, "the request in flight was not cut"


FAILING_ASGI_APP = """
async def app(scope, receive, send):
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})
"""


@pytest.mark.parametrize(
    ("env", "error"),
    [
        (
            {"PROTOSHIM_INTERFACE": "bogus"},
            "PROTOSHIM_INTERFACE='bogus': give asgi, wsgi or protocol",
        ),
        ({}, "application startup failed: no database"),
    ],
    ids=["bad-interface", "failed-lifespan"],
)
def test_a_worker_that_cannot_boot_stops_gunicorn(
    tmp_path, env: dict[str, str], error: str
) -> None:
    (tmp_path / "failing_app.py").write_text(FAILING_ASGI_APP)
    with gunicorn(tmp_path, "asyncio", "failing_app:app", **env) as arbiter:
        # gunicorn's status for a worker that failed to boot, not a restart loop
        assert arbiter.proc.wait(timeout=TIMEOUT) == 3
        arbiter.wait_for("Reason: Worker failed to boot")
    assert len(arbiter.matches(f"protoshim: {re.escape(error)}")) >= 1
    assert not arbiter.matches("protoshim: serving")


def test_each_framework_has_its_worker_class() -> None:
    for name in protoshim.frameworks():
        assert getattr(protoshim.gunicorn, f"{name.capitalize()}Worker").framework == name


async def asgi_function(scope: object, receive: object, send: object) -> None:
    pass


class ASGIObject:
    async def __call__(self, scope: object, receive: object, send: object) -> None:
        pass


def wsgi_function(environ: object, start_response: object) -> list[bytes]:
    return []


@pytest.mark.parametrize(
    ("app", "interface"),
    [
        (asgi_function, "asgi"),
        (ASGIObject(), "asgi"),
        (wsgi_function, "wsgi"),
        (EchoServer, "protocol"),
    ],
    ids=["asgi-function", "asgi-object", "wsgi", "protocol"],
)
def test_the_interface_is_detected(app: object, interface: str) -> None:
    assert detect_interface(app) == interface
