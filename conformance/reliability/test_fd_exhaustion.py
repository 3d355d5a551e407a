"""Descriptor exhaustion: ``protoshim serve`` runs out of descriptors and recovers.

The server runs in a child process whose soft ``RLIMIT_NOFILE`` is lowered
(with ``prlimit``) to what it has open plus ``HEADROOM``.  Clients open
connections until accepting fails with EMFILE; more clients then wait in
the listen backlog.  During that window the server must log the failure,
back off instead of spinning (its CPU time is measured), and stay alive;
once the held connections close it must accept and answer the waiting
clients, and new ones.
"""

from __future__ import annotations

import asyncio
import functools
import resource

import pytest

from protoshim import Adapter
from protoshim.conformance._helpers import wait, wait_until
from protoshim.conformance.http._support import Client, request
from protoshim.conformance.plugin import RunCoroutine
from protoshim.conformance.reliability._support import (
    ServeProcess,
    cpu_seconds,
    fd_count,
    need_proc,
    serve_process,
)

from .conftest import Figure

pytestmark = [pytest.mark.slow, pytest.mark.requires("tcp", "signals")]

HELLO_APP = "protoshim.conformance.reliability._apps:hello"
#: descriptors the server may open beyond those it has when the limit is set
HEADROOM = 8
#: clients that wait in the backlog while the server is out of descriptors
WAITING = 3
#: how long the server's CPU time is measured while it is out of descriptors
WINDOW = 2.0
#: the most CPU the server may use in that window: a spinning accept loop uses a whole CPU
CPU_BOUND = 0.25
EMFILE = "Too many open files"
#: sent on each held connection after its answer: a started head keeps it open
#: for the header timeout (10 s) instead of the keep-alive timeout (5 s)
PARTIAL_HEAD = b"GET / HTTP/1.1\r\n"


def _answered(client: Client) -> bool:
    return b"hello\n" in client.data


def _closed(client: Client) -> bool:
    return client.eof.done() or client.lost.done()


async def _connect(loop: asyncio.AbstractEventLoop, port: int) -> Client:
    _, client = await wait(
        loop.create_connection(functools.partial(Client, loop), "127.0.0.1", port),
        "a connection",
    )
    assert isinstance(client, Client)
    if not client.tr.is_closing():  # a server may close at once when out of descriptors
        client.send(request("GET", "/"))
    return client


async def _exhaust(
    loop: asyncio.AbstractEventLoop, child: ServeProcess
) -> tuple[list[Client], list[Client]]:
    """Open connections until the server fails to accept; return (held, waiting)."""
    held: list[Client] = []
    for _ in range(HEADROOM + 20):
        client = await _connect(loop, child.port)
        await wait_until(
            lambda c=client: _answered(c) or _closed(c) or EMFILE in child.stderr(),  # type: ignore[misc]
            "an answer or the server's report of EMFILE",
        )
        if not _answered(client):
            waiting = [client] + [await _connect(loop, child.port) for _ in range(WAITING - 1)]
            return held, waiting
        client.send(PARTIAL_HEAD)
        held.append(client)
    raise AssertionError(f"the server accepted {len(held)} connections without running out")


def test_server_backs_off_when_out_of_descriptors_and_recovers(
    adapter: Adapter, loop: asyncio.AbstractEventLoop, run: RunCoroutine, figure: Figure
) -> None:
    need_proc()
    if not hasattr(resource, "prlimit"):
        pytest.skip("needs resource.prlimit to lower the server's descriptor limit")
    with serve_process(adapter.name, HELLO_APP) as child:

        async def main() -> dict[str, float]:
            # Warm up: whatever the server opens once (threads, resolvers) is open now.
            for _ in range(2):
                warm = await _connect(loop, child.port)
                await wait_until(lambda: _answered(warm), "a first answer")  # noqa: B023
                warm.tr.close()
                await wait(asyncio.shield(warm.lost), "the warm-up connection to close")
            await asyncio.sleep(0.2)
            limit = fd_count(child.pid) + HEADROOM
            _, hard = resource.prlimit(child.pid, resource.RLIMIT_NOFILE)
            resource.prlimit(child.pid, resource.RLIMIT_NOFILE, (limit, hard))
            held, waiting = await _exhaust(loop, child)
            cpu_before = cpu_seconds(child.pid)
            await asyncio.sleep(WINDOW)
            cpu = (cpu_seconds(child.pid) - cpu_before) / WINDOW
            assert child.process.poll() is None, "the server died when out of descriptors"
            logged = EMFILE in child.stderr()
            for client in held:
                client.tr.close()
            released = loop.time()
            await wait_until(
                lambda: all(_answered(c) or _closed(c) for c in waiting),
                "the waiting clients to be answered",
                timeout=10,
            )
            recovered = loop.time() - released
            answered = sum(_answered(c) for c in waiting)
            fresh = await _connect(loop, child.port)
            await wait_until(lambda: _answered(fresh), "a new client to be answered")
            for client in [*held, *waiting, fresh]:
                client.tr.close()
                await wait(asyncio.shield(client.lost), "a client to close")
            return {
                "held": len(held),
                "cpu": cpu,
                "logged": logged,
                "recovered": recovered,
                "answered": answered,
            }

        result = run(main(), timeout=60)
        child.terminate()
        status = child.process.wait(timeout=15)
    figure("connections held", result["held"])
    figure("server CPU while out of descriptors", f"{result['cpu']:.0%}", headline=True)
    figure("waiting clients answered after release", f"{result['answered']}/{WAITING}")
    figure("answered after release", round(result["recovered"] * 1000), "ms")
    assert result["logged"], "the server did not log running out of descriptors"
    assert result["cpu"] <= CPU_BOUND
    assert result["answered"] == WAITING
    assert status == 0
