"""``protoshim serve --workers N``: the supervisor, run as a user would run it."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import protoshim

from .conftest import ProcessOutput, free_port

TIMEOUT = 30.0

PID_APP = """
import os, sys, time

def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        # One write per line: the app's threads share stdout.
        sys.stdout.write(f"slow request in {os.getpid()}\\n")
        sys.stdout.flush()
        time.sleep(0.5)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

LIFESPAN_APP = """
import os, sys

FAIL = {fail}
VERSION = {version}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            phase = message["type"].removeprefix("lifespan.")
            if phase == "startup" and FAIL:
                await send({{"type": "lifespan.startup.failed", "message": "no database"}})
                return
            sys.stdout.write(f"lifespan {{phase}} {{os.getpid()}}\\n")  # one write per line
            sys.stdout.flush()
            await send({{"type": f"lifespan.{{phase}}.complete"}})
            if phase == "shutdown":
                return
    body = str(VERSION if scope["path"] == "/version" else os.getpid()).encode()
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": body}})
"""


class Supervised(ProcessOutput):
    """A ``protoshim serve --workers`` process and every line it printed."""

    def workers(self) -> set[int]:
        return {int(pid) for pid in self.matches(r"worker (\d+) is serving")}


@contextmanager
def supervised(tmp_path: Path, command: str, *args: str) -> Iterator[Supervised]:
    """Run ``protoshim COMMAND --port P ARGS...`` from ``tmp_path``."""
    (tmp_path / "pid_app.py").write_text(PID_APP)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "protoshim", command, "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    server = Supervised(proc, port)
    reader = threading.Thread(target=server.read, daemon=True)
    reader.start()
    try:
        yield server
    finally:
        # Workers have their own process group: kill them by pid as well.
        for pid in [proc.pid, *server.workers()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=TIMEOUT)
        reader.join(TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()


def get(port: int, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        return int(response.read())
    finally:
        conn.close()


def answering(port: int, wanted: Callable[[set[int]], bool]) -> set[int]:
    """Open new connections until the pids that answered satisfy ``wanted``."""
    seen: set[int] = set()
    deadline = time.monotonic() + TIMEOUT
    while not wanted(seen):
        assert time.monotonic() < deadline, f"only {seen} answered"
        seen.add(get(port))
    return seen


@dataclass
class Connection:
    """One keep-alive client connection: the pids that answered, and how it ended."""

    pids: list[int] = field(default_factory=list)
    failed: BaseException | None = None


class Load:
    """Client threads sending requests on keep-alive connections, reconnecting on failure."""

    def __init__(self, port: int, clients: int, *, keep_alive: bool = True) -> None:
        self.port = port
        self.keep_alive = keep_alive
        self.connections: list[Connection] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def client(self) -> None:
        while not self.stop.is_set():
            record = Connection()
            self.connections.append(record)
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
            try:
                while not self.stop.is_set():
                    conn.request("GET", "/")
                    response = conn.getresponse()
                    body = response.read()
                    assert response.status == 200, response.status
                    record.pids.append(int(body))
                    if not self.keep_alive:
                        break
            except Exception as exc:
                record.failed = exc
            finally:
                conn.close()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT)
            assert not thread.is_alive()


@pytest.mark.parametrize("framework", sorted(protoshim.frameworks()))
def test_workers_replace_a_killed_one_and_drain_on_sigterm(tmp_path, framework: str) -> None:
    args = ("--framework", framework, "--workers", "2", "--wsgi", "pid_app:app")
    with supervised(tmp_path, "serve", *args) as server:
        first = {int(pid) for pid in server.wait_for(r"worker (\d+) is serving", 2)}
        # Both workers accept from the one port.
        assert answering(server.port, lambda seen: seen == first) == first

        # kill -9 one worker while clients keep sending requests.
        clients = 6
        load = Load(server.port, clients)
        try:
            answering(server.port, lambda seen: seen == first)
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            server.wait_for(rf"worker {victim} was killed by SIGKILL; starting another")
            server.wait_for(r"worker (\d+) is serving", 3)
            (new,) = server.workers() - first
            answering(server.port, lambda seen: new in seen)
        finally:
            load.finish()
        for conn in load.connections:
            # A connection stays with the process that accepted it.
            assert len(set(conn.pids)) <= 1, conn.pids
            if conn.failed is not None:
                # Only a connection the killed worker held may fail.
                assert set(conn.pids) <= {victim}, (conn.pids, conn.failed)
        failed = [conn for conn in load.connections if conn.failed is not None]
        # Each client had one connection open when the worker died.
        assert len(failed) <= clients
        survivors = first - {victim} | {new}
        assert any(set(conn.pids) & survivors for conn in load.connections)

        # SIGTERM with requests in flight: each gets its whole response.
        results: list[int | BaseException] = []

        def slow() -> None:
            try:
                results.append(get(server.port, "/slow"))
            except BaseException as exc:
                results.append(exc)

        in_flight = [threading.Thread(target=slow) for _ in range(4)]
        for thread in in_flight:
            thread.start()
        server.wait_for(r"slow request in (\d+)", 4)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=TIMEOUT) == 0
        assert time.monotonic() - started < 5  # well within the default --grace
        for thread in in_flight:
            thread.join(TIMEOUT)
        assert sorted(map(type, results), key=str) == [int] * 4, results
        assert set(results) <= survivors
        server.wait_for(r"stopping 2 workers")


def test_a_worker_that_exits_on_its_own_is_replaced(tmp_path) -> None:
    with supervised(tmp_path, "serve", "--workers", "2", "--wsgi", "pid_app:app") as server:
        first = {int(pid) for pid in server.wait_for(r"worker (\d+) is serving", 2)}
        leaving = max(first)
        os.kill(leaving, signal.SIGTERM)  # it drains and exits 0, as after --limit-max-requests
        server.wait_for(rf"worker {leaving} exited with status 0; starting another")
        server.wait_for(r"worker (\d+) is serving", 3)
        assert len(server.workers() - first) == 1
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=TIMEOUT) == 0


def running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie no longer does)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_workers_leave_when_the_parent_dies(tmp_path) -> None:
    with supervised(tmp_path, "serve", "--workers", "2", "--wsgi", "pid_app:app") as server:
        workers = {int(pid) for pid in server.wait_for(r"worker (\d+) is serving", 2)}
        server.proc.kill()
        server.proc.wait(timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while any(running(pid) for pid in workers):
            assert time.monotonic() < deadline, "the workers outlived their parent"
            time.sleep(0.05)  # polled: no event tells another process's exit
        # Each stopped as on SIGTERM, not killed.
        server.wait_for("shutting down", 2)


def test_sigttin_adds_a_worker_and_sigttou_retires_the_oldest(tmp_path) -> None:
    with supervised(tmp_path, "serve", "--workers", "2", "--wsgi", "pid_app:app") as server:
        first = [int(pid) for pid in server.wait_for(r"worker (\d+) is serving", 2)]
        server.proc.send_signal(signal.SIGTTIN)
        server.wait_for("running 3 workers")
        workers = {int(pid) for pid in server.wait_for(r"worker (\d+) is serving", 3)}
        (added,) = workers - set(first)
        # One at a time: the kernel merges a signal sent while one is pending.
        for line, times in (
            ("running 2 workers", 1),
            ("running 1 worker$", 1),
            ("running 1 worker$", 2),
        ):
            server.proc.send_signal(signal.SIGTTOU)  # never fewer than one
            server.wait_for(line, times)
        deadline = time.monotonic() + TIMEOUT
        while running(first[0]) or running(first[1]):
            assert time.monotonic() < deadline, "the oldest workers were not retired"
            time.sleep(0.05)  # polled: no event tells another process's exit
        assert running(added)
        assert get(server.port) == added
        assert not server.matches("starting another")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=TIMEOUT) == 0


def test_sighup_replaces_workers_one_by_one_with_new_code(tmp_path) -> None:
    (tmp_path / "life_app.py").write_text(LIFESPAN_APP.format(fail=False, version=1))
    with supervised(tmp_path, "serve", "--workers", "2", "--asgi", "life_app:app") as server:
        first = {int(pid) for pid in server.wait_for(r"worker (\d+) is serving", 2)}
        # The lifespan runs in each worker.
        assert {int(p) for p in server.matches(r"lifespan startup (\d+)")} == first
        assert get(server.port, "/version") == 1
        # Another size: a cached .pyc of the same size and second would be reused.
        (tmp_path / "life_app.py").write_text(LIFESPAN_APP.format(fail=False, version=22))
        # New connections only: an idle keep-alive connection that a stopping
        # worker closes as the client reuses it is HTTP's own race.
        clients = 2
        load = Load(server.port, clients, keep_alive=False)
        try:
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for(r"replacing 2 workers one by one")
            shut = server.wait_for(r"lifespan shutdown (\d+)", 2)
            assert {int(pid) for pid in shut} == first
            server.wait_for(r"worker (\d+) is serving", 4)
            answering(server.port, lambda seen: bool(seen) and not seen & first)
        finally:
            load.finish()
        # The port answered throughout.  The one loss allowed: a connection
        # accepted in the instant its worker stops, closed before its request
        # was read (at most one per client for each of the two old workers).
        failed = [c for c in load.connections if c.failed is not None]
        assert all(not c.pids for c in failed), failed
        assert len(failed) <= clients * 2
        assert sum(len(c.pids) for c in load.connections) > len(failed)
        assert len(server.workers()) == 4
        # The new workers imported the application afresh.
        assert get(server.port, "/version") == 22
        # Broken code: the replacement fails to start, the running workers stay.
        (tmp_path / "life_app.py").write_text("raise RuntimeError('broken deploy')\n")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(r"failed to start: it exited with status 2; kept the others")
        assert get(server.port, "/version") == 22
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=TIMEOUT) == 0


def test_a_worker_failing_to_start_stops_the_supervisor(tmp_path) -> None:
    (tmp_path / "life_app.py").write_text(LIFESPAN_APP.format(fail=True, version=1))
    args = ("--workers", "2", "--asgi", "life_app:app", "--lifespan", "on")
    with supervised(tmp_path, "serve", *args) as server:
        assert server.proc.wait(timeout=TIMEOUT) == 3
    errors = [line for line in server.lines if line.startswith("protoshim: error: ")]
    assert "protoshim: error: application startup failed: no database" in errors
    # The supervisor's own report, once: no worker is started again in a loop.
    report = [e for e in errors if "failed to start" in e]
    assert len(report) == 1, server.lines
    assert re.fullmatch(
        r"protoshim: error: worker \d+ failed to start: it exited with status 3", report[0]
    )
    assert not server.workers()


def test_an_app_that_does_not_import_stops_the_supervisor(tmp_path) -> None:
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('boom')\n")
    with supervised(tmp_path, "serve", "--workers", "3", "--wsgi", "broken_app:app") as server:
        assert server.proc.wait(timeout=TIMEOUT) == 2
        server.wait_for("failed to start")
    # The first worker starts alone: one worker's line, then the supervisor's.
    errors = [line for line in server.lines if line.startswith("protoshim: error: ")]
    assert len(errors) == 2, server.lines
    assert "cannot import 'broken_app': RuntimeError: boom" in errors[0]
    assert re.fullmatch(
        r"protoshim: error: worker \d+ failed to start: it exited with status 2", errors[1]
    )


@pytest.mark.parametrize("count", ["0", "two"])
def test_a_bad_worker_count_is_a_usage_error(count: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "protoshim",
            "serve",
            "--workers",
            count,
            "protoshim.protocols.echo:EchoServer",
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert "argument --workers:" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_runs_with_workers(tmp_path) -> None:
    with supervised(tmp_path, "demo", "--workers", "2") as server:
        server.wait_for(r"worker (\d+) is serving", 2)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        conn.close()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=TIMEOUT) == 0
