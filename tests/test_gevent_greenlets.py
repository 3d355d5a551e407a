"""Greenlets next to a gevent loop: they keep running, wait for it, and it waits for them."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

pytest.importorskip("gevent", reason="the gevent adapter needs gevent installed")

import gevent
from gevent import socket as gsocket
from gevent.event import Event

import protoshim
from protoshim.adapters.gevent import GreenletRunner, wait_future, wait_greenlet

FRAMEWORK = "gevent"  # for the ``loop`` fixture
WAIT = 5.0

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def test_greenlets_keep_running_while_the_loop_serves(loop):
    ticks: list[int] = []
    stop = Event()

    def ticker():
        while not stop.is_set():
            ticks.append(len(ticks))
            gevent.sleep(0.001)

    def client(port):
        # A plain gevent client in its own greenlet.
        with gsocket.create_connection(("127.0.0.1", port)) as sock:
            for i in range(20):
                message = b"ping %d" % i
                sock.sendall(message)
                assert sock.recv(100) == message
        return "done"

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tick_greenlet = gevent.spawn(ticker)
        try:
            result = await wait_greenlet(gevent.spawn(client, port))
            seen = len(ticks)
            await asyncio.sleep(0.02)
            return result, seen, len(ticks)
        finally:
            stop.set()
            await wait_greenlet(tick_greenlet)
            server.close()
            await server.wait_closed()

    result, seen, later = loop.run_until_complete(asyncio.wait_for(main(), WAIT))
    assert result == "done"
    assert seen > 0
    assert later > seen  # still ticking while the loop waits in asyncio.sleep


def test_wait_future_returns_the_result(loop):
    future = loop.create_future()
    waiter = gevent.spawn(wait_future, future)

    async def main():
        await asyncio.sleep(0.01)
        future.set_result("value")
        return await wait_greenlet(waiter)

    assert loop.run_until_complete(main()) == "value"


def test_wait_future_runs_a_coroutine_and_raises_its_exception(loop):
    async def fails():
        await asyncio.sleep(0)
        raise ValueError("from the coroutine")

    def in_greenlet():
        with pytest.raises(ValueError, match="from the coroutine"):
            wait_future(fails(), loop=loop)
        return wait_future(asyncio.sleep(0, "slept"), loop=loop)

    assert loop.run_until_complete(wait_greenlet(gevent.spawn(in_greenlet))) == "slept"


def test_wait_future_timeout_cancels_the_future(loop):
    future = loop.create_future()

    def in_greenlet():
        with pytest.raises(TimeoutError):
            wait_future(future, timeout=0.01)
        return "timed out"

    async def main():
        result = await wait_greenlet(gevent.spawn(in_greenlet))
        await asyncio.sleep(0)
        return result

    assert loop.run_until_complete(main()) == "timed out"
    assert future.cancelled()


def test_killing_a_waiting_greenlet_cancels_the_future(loop):
    future = loop.create_future()

    async def main():
        waiter = gevent.spawn(wait_future, future)
        await asyncio.sleep(0.01)
        waiter.kill(block=False)
        await wait_greenlet(waiter)
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert future.cancelled()


def test_wait_future_refuses_to_block_the_loop_it_waits_for(loop):
    async def main():
        with pytest.raises(RuntimeError, match="await"):
            wait_future(loop.create_future())

    loop.run_until_complete(main())


def test_wait_future_needs_the_loop_of_a_coroutine():
    coro = asyncio.sleep(0)
    with pytest.raises(ValueError, match="loop="):
        wait_future(coro)
    coro.close()


def test_wait_future_ends_when_the_loop_is_closed_first():
    loop = protoshim.new_event_loop("gevent")
    waiter = gevent.spawn(wait_future, loop.create_future())
    gevent.sleep(0)  # the greenlet waits
    loop.close()
    with pytest.raises(ConnectionAbortedError):
        waiter.get(timeout=WAIT)


def test_greenlet_runner_runs_blocking_code_that_waits_for_the_loop(loop):
    runner = GreenletRunner()

    async def double(value):
        await asyncio.sleep(0)
        return 2 * value

    def blocking():
        return runner.call(loop, double(21))

    assert loop.run_until_complete(asyncio.wait_for(runner.run(loop, blocking), WAIT)) == 42


def test_greenlet_runner_refuses_a_closed_loop_and_closes_the_coroutine():
    loop = protoshim.new_event_loop("gevent")
    loop.close()
    # An unclosed coroutine would warn that it was never awaited (an error here).
    with pytest.raises(ConnectionAbortedError):
        GreenletRunner().call(loop, asyncio.sleep(0))


def test_wait_greenlet_raises_the_greenlet_exception(loop):
    def fails():
        raise LookupError("from the greenlet")

    async def main():
        with pytest.raises(LookupError, match="from the greenlet"):
            await wait_greenlet(gevent.spawn(fails))
        return await wait_greenlet(gevent.spawn(lambda: 7))

    assert loop.run_until_complete(main()) == 7


@pytest.mark.parametrize("kill", [True, False], ids=["kill", "keep"])
def test_cancelling_wait_greenlet(loop, kill):
    glet = gevent.spawn(gevent.sleep, WAIT)

    async def main():
        task = asyncio.ensure_future(wait_greenlet(glet, kill_on_cancel=kill))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        loop.run_until_complete(main())
        if kill:
            glet.join(WAIT)
        assert glet.dead is kill
    finally:
        glet.kill()


def test_contextvars_stay_per_task_and_per_greenlet(loop):
    seen: dict[str, str] = {}

    def greenlet_body():
        seen["greenlet sees"] = var.get()
        var.set("greenlet")
        gevent.sleep(0.01)
        seen["greenlet keeps"] = var.get()

    async def task(name):
        var.set(name)
        await asyncio.sleep(0.005)
        gevent.sleep(0)  # let the greenlets run in between
        await asyncio.sleep(0.005)
        seen[name] = var.get()

    async def main():
        var.set("main")
        glet = gevent.spawn(greenlet_body)
        await asyncio.gather(task("a"), task("b"))
        await wait_greenlet(glet)
        seen["main"] = var.get()

    loop.run_until_complete(main())
    assert seen == {
        "greenlet sees": "unset",
        "greenlet keeps": "greenlet",
        "a": "a",
        "b": "b",
        "main": "main",
    }


def test_other_greenlets_see_no_running_loop(loop):
    def probe():
        with pytest.raises(RuntimeError, match="no running event loop"):
            asyncio.get_running_loop()
        return asyncio._get_running_loop()

    async def main():
        assert asyncio.get_running_loop() is loop
        # while the loop waits in the hub
        waiting = await wait_greenlet(gevent.spawn(probe))
        # while a coroutine of the loop blocks in a gevent call
        blocked = gevent.spawn(probe).get(timeout=WAIT)
        assert asyncio.get_running_loop() is loop
        return waiting, blocked

    assert loop.run_until_complete(main()) == (None, None)


def test_two_loops_run_in_two_greenlets_of_one_thread(loop):
    other = protoshim.new_event_loop("gevent")
    order: list[str] = []

    async def beat(name, current):
        for _ in range(3):
            assert asyncio.get_running_loop() is current
            order.append(name)
            await asyncio.sleep(0.005)
        return name

    try:
        glet = gevent.spawn(other.run_until_complete, beat("other", other))

        async def main():
            mine = await beat("main", loop)
            return mine, await wait_greenlet(glet)

        assert loop.run_until_complete(main()) == ("main", "other")
        assert sorted(order) == ["main"] * 3 + ["other"] * 3
        assert order != sorted(order)  # they interleaved
    finally:
        other.close()


def test_a_second_loop_can_run_while_a_callback_of_the_first_blocks(loop):
    def nested():
        return protoshim.run(asyncio.sleep(0, "nested"), framework="gevent")

    async def main():
        glet = gevent.spawn(nested)
        glet.join(WAIT)  # blocks this loop; the other loop runs meanwhile
        return glet.get(block=False)

    assert loop.run_until_complete(main()) == "nested"
