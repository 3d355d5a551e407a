"""``twistd protoshim``: the IServiceMaker plugin, its discovery and a real twistd run."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("twisted", reason="the twistd plugin needs Twisted installed")

from twisted.application import internet
from twisted.python import usage

import protoshim.adapters.twisted as twisted_adapter
from protoshim.adapters.twisted._twistd import Options, serviceMaker

ECHO = "protoshim.protocols.echo:EchoServer"
# <root>/protoshim/adapters/twisted/__init__.py -> <root>/twisted/plugins/...
ROOT = pathlib.Path(twisted_adapter.__file__).parents[3]
DROPIN = ROOT / "twisted" / "plugins" / "protoshim_twistd.py"
START_TIMEOUT = 30.0


def test_options_take_a_port_number_or_an_endpoint_description():
    options = Options()
    options.parseOptions(["--port", "8081", ECHO])
    assert options["port"] == "tcp:8081"
    assert callable(options["factory"])
    options = Options()
    options.parseOptions(["--port", "unix:/tmp/echo.sock", ECHO])
    assert options["port"] == "unix:/tmp/echo.sock"


@pytest.mark.parametrize("spec", ["no_colon", "protoshim.no_such_module:X", "protoshim:nothing"])
def test_options_reject_a_bad_factory(spec):
    with pytest.raises(usage.UsageError):
        Options().parseOptions([spec])


def test_make_service_returns_a_strports_service():
    options = Options()
    options.parseOptions(["--port", "tcp:0:interface=127.0.0.1", ECHO])
    service = serviceMaker.makeService(options)
    assert isinstance(service, internet.StreamServerEndpointService)


def test_plugin_is_discovered_on_the_package_plugin_path():
    script = (
        "import os, twisted.plugins\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        f"twisted.plugins.__path__.append({str(DROPIN.parent)!r})\n"
        "print(sorted(p.tapname for p in getPlugins(IServiceMaker) if p.tapname == 'protoshim'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "['protoshim']"


def _echo_over_unix(path: str, process: subprocess.Popen[str]) -> bytes:
    deadline = time.monotonic() + START_TIMEOUT
    while not os.path.exists(path):
        if process.poll() is not None or time.monotonic() > deadline:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"twistd did not start listening on {path}: {output}")
        time.sleep(0.05)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b"ping over twistd")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    return received


def _run_twistd(command: list[str], env: dict[str, str]) -> None:
    directory = tempfile.mkdtemp(prefix="ps-")
    path = os.path.join(directory, "echo.sock")
    process = subprocess.Popen(
        [*command, "-n", "--pidfile=", "protoshim", "--port", f"unix:{path}", ECHO],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=directory,
    )
    try:
        assert _echo_over_unix(path, process) == b"ping over twistd"
    finally:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        shutil.rmtree(directory, ignore_errors=True)
    # Recent twistd re-raises the signal it stopped on, older ones exit 0.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Server Shut Down" in output


def test_python_m_runs_twistd_with_the_plugin():
    _run_twistd([sys.executable, "-m", "protoshim.adapters.twisted"], dict(os.environ))


def test_plain_twistd_finds_the_dropin_in_a_twisted_plugins_directory():
    # What an installed wheel would provide, if it shipped the drop-in as
    # twisted/plugins/protoshim_twistd.py.
    twistd = shutil.which("twistd", path=os.path.dirname(sys.executable))
    if twistd is None:
        pytest.skip("no twistd script next to this interpreter")
    site = tempfile.mkdtemp(prefix="ps-site-")
    try:
        plugins = pathlib.Path(site, "twisted", "plugins")
        plugins.mkdir(parents=True)
        shutil.copy(DROPIN, plugins / DROPIN.name)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")]))
        _run_twistd([twistd], env)
    finally:
        shutil.rmtree(site, ignore_errors=True)
