"""Graceful shutdown: SIGTERM to ``protoshim serve --wsgi`` while requests are in flight.

The listener must close at once (new connections are refused); requests in
flight must be answered in full if they end within the grace period
(``--grace``), and be cut off when it ends if they do not; either way the
process exits with status 0.
"""

from __future__ import annotations

import asyncio
import functools
import time

import pytest

from protoshim import Adapter
from protoshim.conformance._helpers import wait, wait_until
from protoshim.conformance.http._support import Client, request
from protoshim.conformance.plugin import RunCoroutine
from protoshim.conformance.reliability._support import ServeProcess, serve_process

from .conftest import Figure

pytestmark = [pytest.mark.slow, pytest.mark.requires("tcp", "signals")]

SLOW_APP = "protoshim.conformance.reliability._apps:slow"
#: requests in flight when the signal arrives
IN_FLIGHT = 4
#: margin for the process to exit after the grace period
EXIT_MARGIN = 5.0
COMPLETE = b"started\nfinished\n"


async def _connect(loop: asyncio.AbstractEventLoop, port: int) -> Client:
    _, client = await wait(
        loop.create_connection(functools.partial(Client, loop), "127.0.0.1", port),
        "a connection",
    )
    return client


async def _start_requests(
    loop: asyncio.AbstractEventLoop, child: ServeProcess, seconds: float
) -> list[Client]:
    """Send IN_FLIGHT requests that work for ``seconds``; return once all have started."""
    clients = [await _connect(loop, child.port) for _ in range(IN_FLIGHT)]
    for client in clients:
        client.send(request(target=f"/?seconds={seconds}"))
    await wait_until(
        lambda: all(b"started" in client.data for client in clients), "the requests to start"
    )
    return clients


async def _until_refused(loop: asyncio.AbstractEventLoop, port: int, within: float) -> float:
    """Connect until the server refuses; return how long that took."""
    start = loop.time()
    while loop.time() - start < within:
        try:
            late = await _connect(loop, port)
        except (ConnectionRefusedError, ConnectionResetError):
            # A connect racing the close can reach the backlog first; closing
            # the listener then resets it unaccepted, which is a refusal too.
            return loop.time() - start
        late.tr.abort()
        await wait(asyncio.shield(late.lost), "the late connection to close")
        await asyncio.sleep(0.01)
    raise AssertionError(f"the listener still accepts {within:g} s after SIGTERM")


def _wait_exit(child: ServeProcess, timeout: float) -> tuple[int, float, list[str]]:
    start = time.monotonic()
    try:
        status = child.process.wait(timeout=timeout)
    except Exception:
        raise AssertionError(
            f"protoshim serve still runs {timeout:g} s after SIGTERM: {child.stderr()[-2000:]!r}"
        ) from None
    return status, time.monotonic() - start, child.stdout_lines(timeout=5)


def test_requests_in_flight_finish_within_the_grace_period(
    adapter: Adapter, loop: asyncio.AbstractEventLoop, run: RunCoroutine, figure: Figure
) -> None:
    grace, seconds = 5.0, 1.5
    with serve_process(adapter.name, SLOW_APP, "--grace", str(grace)) as child:

        async def main() -> tuple[float, float, list[bytes]]:
            clients = await _start_requests(loop, child, seconds)
            child.terminate()
            signalled = loop.time()
            refused_after = await _until_refused(loop, child.port, seconds)
            bodies = []
            for client in clients:
                response = await client.response()
                assert response.status == 200
                bodies.append(response.body)
            answered_after = loop.time() - signalled
            for client in clients:
                await client.closed()  # the server closes each connection after its answer
                client.tr.close()
                await wait(asyncio.shield(client.lost), "the client to close")
            return refused_after, answered_after, bodies

        refused_after, answered_after, bodies = run(main(), timeout=grace + 10)
        status, exited_after, out = _wait_exit(child, grace + EXIT_MARGIN)
        stderr = child.stderr()
    complete = bodies.count(COMPLETE)
    figure("in-flight requests answered", f"{complete}/{IN_FLIGHT}")
    figure("listener closed after", round(refused_after * 1000), "ms", headline=True)
    figure("all answered after", round(answered_after * 1000), "ms")
    figure("exited after the answers", round(exited_after * 1000), "ms")
    assert bodies == [COMPLETE] * IN_FLIGHT
    assert status == 0, stderr
    assert "protoshim: shutting down" in out
    assert "Traceback" not in stderr


def test_requests_past_the_grace_are_cut_and_the_process_exits_0(
    adapter: Adapter, loop: asyncio.AbstractEventLoop, run: RunCoroutine, figure: Figure
) -> None:
    grace, seconds = 1.0, 30.0
    with serve_process(adapter.name, SLOW_APP, "--grace", str(grace)) as child:

        async def main() -> float:
            clients = await _start_requests(loop, child, seconds)
            child.terminate()
            signalled = loop.time()
            for client in clients:
                # Cut off: the connection ends without the rest of the response.
                await wait(asyncio.shield(client.lost), "the server to drop the request", grace + 5)
                assert b"finished" not in client.data
            return loop.time() - signalled

        cut_after = run(main(), timeout=grace + 15)
        status, exited_after, _ = _wait_exit(child, grace + EXIT_MARGIN)
        stderr = child.stderr()
    figure("requests cut after", round(cut_after * 1000), "ms")
    figure("exited after the cut", round(exited_after * 1000), "ms", headline=True)
    assert status == 0, stderr
    assert "Traceback" not in stderr
