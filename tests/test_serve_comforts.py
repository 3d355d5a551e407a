"""``--reload``, ``--app-dir`` and ``PROTOSHIM_*`` variables, through the real command."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import protoshim

APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"{word}"]
'''


def get(port: int, timeout: float = 5) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def wait_for(port: int, word: str, timeout: float = 30) -> None:
    """Poll until the server answers ``word``: a reload takes its own time."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        try:
            seen = get(port, timeout=2)
        except OSError:
            seen = None
        if seen == word:
            return
        time.sleep(0.1)
    pytest.fail(f"the server answered {seen!r}, not {word!r}, after {timeout} s")


def start(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "protoshim", "serve", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def write_app(folder: Path, word: str) -> None:
    path = folder / "reload_app.py"
    path.write_text(APP.format(word=word))
    # Some file systems keep whole seconds: make the change visible regardless.
    os.utime(path, (time.time() + 1, time.time() + 1))


@pytest.mark.parametrize("framework", sorted(protoshim.frameworks()))
def test_reload_serves_the_changed_code_and_stops_cleanly(
    framework: str, tmp_path: Path, stop: list[subprocess.Popen[str]],
    free_ports: Callable[[], int]
) -> None:
    write_app(tmp_path, "one")
    port = free_ports()
    proc = start(
        tmp_path, "--framework", framework, "--port", str(port), "--reload",
        "--wsgi", "reload_app:app",
    )
    stop.append(proc)
    wait_for(port, "one")
    write_app(tmp_path, "two")
    wait_for(port, "two")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "reload_app.py changed, reloading" in err
    # The old child and the new one each served, and each shut down.
    assert out.count(f"serving reload_app:app on {framework}") == 2, out
    assert out.count("shutting down") == 2, out
    with pytest.raises(OSError):
        get(port, timeout=2)


def test_reload_keeps_the_old_code_serving_while_the_new_is_broken(
    tmp_path: Path, stop: list[subprocess.Popen[str]],
    free_ports: Callable[[], int]
) -> None:
    write_app(tmp_path, "one")
    port = free_ports()
    proc = start(tmp_path, "--port", str(port), "--reload", "--wsgi", "reload_app:app")
    stop.append(proc)
    wait_for(port, "one")
    (tmp_path / "reload_app.py").write_text("def (\n")
    deadline = time.monotonic() + 30
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "failed to start: it exited with status 2; kept the others" in line:
            break
    else:
        pytest.fail("the broken module was not reported")
    assert get(port) == "one"  # the worker that runs the last good code
    write_app(tmp_path, "fixed")
    wait_for(port, "fixed")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_app_dir_is_searched_first(tmp_path: Path, stop: list[subprocess.Popen[str]],
    free_ports: Callable[[], int]) -> None:
    (tmp_path / "src").mkdir()
    write_app(tmp_path / "src", "from src")
    port = free_ports()
    proc = start(tmp_path, "--port", str(port), "--app-dir", "src", "--wsgi", "reload_app:app")
    stop.append(proc)
    wait_for(port, "from src")


def test_a_missing_app_dir_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "protoshim", "serve", "--app-dir", "nowhere", "--wsgi", "m:app"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "protoshim: error: --app-dir: nowhere is not a directory\n"


def test_options_come_from_the_environment_and_the_command_line_wins(
    tmp_path: Path, stop: list[subprocess.Popen[str]],
    free_ports: Callable[[], int]
) -> None:
    write_app(tmp_path, "env")
    port, other = free_ports(), free_ports()
    env = {"PROTOSHIM_PORT": str(other), "PROTOSHIM_FRAMEWORK": "selectors",
           "PROTOSHIM_WSGI": "reload_app:app"}
    proc = start(tmp_path, "--port", str(port), env=env)
    stop.append(proc)
    wait_for(port, "env")
    assert proc.stdout is not None
    assert "on selectors at" in proc.stdout.readline()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PROTOSHIM_PORT", "http", "PROTOSHIM_PORT: not a port number: 'http'"),
        ("PROTOSHIM_LIFESPAN", "maybe", "PROTOSHIM_LIFESPAN: 'maybe' is not one of auto, on, off"),
        ("PROTOSHIM_RELOAD", "perhaps", "PROTOSHIM_RELOAD: expected 1 or 0, true or false"),
    ],
)
def test_a_bad_environment_value_is_one_line(name: str, value: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "protoshim", "serve", "protoshim.protocols.echo:EchoServer"],
        env={**os.environ, name: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"protoshim: error: {message}")
    assert result.stderr.count("\n") == 1


def test_reload_and_workers_together_are_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "protoshim", "serve", "--reload", "--workers", "2",
         "protoshim.protocols.echo:EchoServer"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "protoshim: error: --reload and --workers cannot be combined\n"


def test_reload_without_watchfiles_says_how_to_install_it(tmp_path: Path) -> None:
    write_app(tmp_path, "one")
    code = (
        "import sys; sys.modules['watchfiles'] = None; from protoshim._cli import main; "
        "sys.exit(main(['serve', '--port', '0', '--reload', '--wsgi', 'reload_app:app']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "protoshim: error: --reload needs watchfiles: pip install 'protoshim[reload]'\n"
    )
