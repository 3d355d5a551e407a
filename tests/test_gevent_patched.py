"""The gevent adapter in monkey-patched processes, and Ctrl-C; each case runs in a child.

Monkey-patching is process-wide and cannot be undone, so every case here
runs a small script in a new interpreter and checks what it prints.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("gevent", reason="the gevent adapter needs gevent installed")

#: Seconds a child may take; a hang fails the test instead of the run.
CHILD_TIMEOUT = 60

COOPERATION = """
from gevent import monkey

monkey.patch_all()

import asyncio
import json
import time
import urllib.request

import gevent
from gevent.pywsgi import WSGIServer

import protoshim
from protoshim.adapters.gevent import ThreadExecutor, wait_future, wait_greenlet

real_get_ident = monkey.get_original("_thread", "get_ident")
real_sleep = monkey.get_original("time", "sleep")


def app(environ, start_response):
    time.sleep(0.01)  # patched: lets the hub run
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi ok"]


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def main():
    loop = asyncio.get_running_loop()
    report = {"executor": type(loop._default_executor).__name__}
    wsgi = WSGIServer(("127.0.0.1", 0), app, log=None)
    wsgi.start()
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    naps = []

    def napper():
        for i in range(5):
            time.sleep(0.01)  # patched
            naps.append(i)

    def fetch():
        url = f"http://127.0.0.1:{wsgi.server_port}/"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    napping = gevent.spawn(napper)
    fetching = gevent.spawn(fetch)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(10):
        writer.write(b"line %d\\n" % i)
        assert await reader.readline() == b"line %d\\n" % i
    report["wsgi"] = await wait_greenlet(fetching)
    await wait_greenlet(napping)
    report["naps"] = naps

    # A truly blocking call in the executor runs in another OS thread, and
    # the greenlets of this thread keep running meanwhile.
    ticks = []

    def ticker():
        while len(ticks) < 1000:
            ticks.append(1)
            gevent.sleep(0.001)

    ticking = gevent.spawn(ticker)

    def blocking():
        real_sleep(0.1)
        return real_get_ident()

    worker = await loop.run_in_executor(None, blocking)
    report["other_thread"] = worker != real_get_ident()
    report["ticked_meanwhile"] = len(ticks) > 0
    ticking.kill()

    # A patched threading.Thread is a greenlet: it can wait for the loop.
    import threading

    box = []

    def in_thread():
        box.append(wait_future(asyncio.sleep(0, "t"), loop=loop))

    thread = threading.Thread(target=in_thread)
    thread.start()
    await asyncio.sleep(0.01)
    report["thread"] = box

    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    wsgi.stop()
    return report


print(json.dumps(protoshim.run(main(), framework="gevent")))
"""

INTERRUPT = """
import sys

if sys.argv[1] == "patched":
    from gevent import monkey

    monkey.patch_all()

import asyncio
import signal

import protoshim

mode = sys.argv[2]


def ready():
    print("ready", flush=True)


if mode == "run_forever":
    loop = protoshim.new_event_loop("gevent")
    loop.call_soon(ready)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(3)
elif mode == "run":

    async def main():
        ready()
        await asyncio.sleep(60)

    try:
        protoshim.run(main(), framework="gevent")
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(3)
elif mode == "signal_handler":
    loop = protoshim.new_event_loop("gevent")
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    loop.call_soon(ready)
    loop.run_forever()
    loop.close()
    print("stopped", flush=True)
"""


def run_child(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )


def test_patched_process_runs_loop_pywsgi_and_blocking_greenlets_together():
    child = run_child(COOPERATION)
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report == {
        "executor": "ThreadExecutor",
        "wsgi": "wsgi ok",
        "naps": [0, 1, 2, 3, 4],
        "other_thread": True,
        "ticked_meanwhile": True,
        "thread": ["t"],
    }


@pytest.mark.parametrize("patched", ["plain", "patched"])
@pytest.mark.parametrize(
    ("mode", "returncode", "last_line"),
    [
        ("run_forever", 3, "interrupted"),
        ("run", 3, "interrupted"),
        ("signal_handler", 0, "stopped"),
    ],
)
def test_ctrl_c_stops_the_loop(patched, mode, returncode, last_line):
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(INTERRUPT), patched, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == returncode, err
    assert out.strip().splitlines()[-1] == last_line
