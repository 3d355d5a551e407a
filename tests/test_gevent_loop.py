"""The gevent driver's own rules: who runs callbacks, when, and how the loop stops."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

pytest.importorskip("gevent", reason="the gevent adapter needs gevent installed")

import gevent
from gevent.event import AsyncResult, Event

from protoshim.adapters.gevent import ThreadExecutor

FRAMEWORK = "gevent"  # for the ``loop`` fixture
WAIT = 5.0


def test_callbacks_run_in_the_greenlet_that_runs_the_loop(loop):
    async def where():
        return gevent.getcurrent()

    assert loop.run_until_complete(where()) is gevent.getcurrent()

    def in_greenlet():
        return loop.run_until_complete(where())

    runner = gevent.spawn(in_greenlet)
    assert runner.get(timeout=WAIT) is runner


def test_a_blocking_gevent_call_stalls_this_loop_only(loop):
    events: list[str] = []

    def other_greenlet():
        events.append("greenlet ran")

    async def main():
        loop.call_soon(events.append, "loop callback")
        gevent.spawn(other_greenlet)
        gevent.sleep(0.05)  # blocks this coroutine, and so this loop
        events.append("sleep returned")
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert events == ["greenlet ran", "sleep returned", "loop callback"]


def test_io_is_not_delivered_while_the_loop_is_stopped(loop):
    a, b = socket.socketpair()
    received: list[bytes] = []
    try:
        loop.add_reader(a, lambda: received.append(a.recv(100)))
        loop.run_until_complete(asyncio.sleep(0.01))
        b.send(b"early")
        hub = gevent.get_hub()
        start = hub.loop.iteration if hasattr(hub.loop, "iteration") else None
        gevent.sleep(0.1)  # the hub runs; the asyncio loop does not
        assert received == []
        if start is not None:
            # The readable descriptor is not watched until the loop runs
            # again, so the hub does not spin on it meanwhile.
            assert hub.loop.iteration - start < 100
        loop.run_until_complete(asyncio.sleep(0.01))
        assert received == [b"early"]
    finally:
        loop.remove_reader(a)
        a.close()
        b.close()


def test_idle_loop_keeps_running_until_another_thread_stops_it(loop):
    # No timer, no descriptor: only a wake-up from a thread can end this,
    # and the hub must not give up with LoopExit meanwhile.
    started = threading.Event()
    loop.call_soon(started.set)

    def stop_later():
        started.wait(WAIT)
        loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=stop_later)
    thread.start()
    loop.run_forever()
    thread.join()
    assert not loop.is_running()


def test_a_stopped_loop_does_not_keep_the_hub_alive(loop):
    loop.run_until_complete(asyncio.sleep(0))
    # gevent.wait() with no objects returns once nothing holds the hub.
    assert gevent.wait(timeout=WAIT) is True


def test_keyboard_interrupt_in_a_callback_leaves_run_forever(loop):
    def interrupt():
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    assert loop.run_until_complete(asyncio.sleep(0, "still usable")) == "still usable"


def test_gevent_timeout_interrupts_run_until_complete(loop):
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.05):
        loop.run_until_complete(asyncio.sleep(WAIT))
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, "still usable")) == "still usable"


def test_killing_the_runner_greenlet_stops_the_loop(loop):
    running = Event()
    loop.call_soon(running.set)
    runner = gevent.spawn(loop.run_forever)
    assert running.wait(WAIT)
    assert loop.is_running()
    runner.kill(timeout=WAIT)
    assert runner.dead
    assert not loop.is_running()


def test_running_inside_the_hub_is_refused(loop):
    outcome = AsyncResult()

    def in_hub():
        try:
            loop.run_until_complete(asyncio.sleep(0))
        except BaseException as exc:
            outcome.set(exc)
        else:
            outcome.set(None)

    gevent.get_hub().loop.run_callback(in_hub)
    error = outcome.get(timeout=WAIT)
    assert isinstance(error, RuntimeError)
    assert "hub" in str(error)


def test_running_in_another_thread_is_refused(loop):
    errors: list[BaseException] = []

    def in_thread():
        try:
            loop.run_until_complete(asyncio.sleep(0))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(WAIT)
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)


def test_call_later_fires_in_order(loop):
    fired: list[int] = []
    loop.call_later(0.03, fired.append, 3)
    loop.call_later(0.01, fired.append, 1)
    loop.call_later(0.02, fired.append, 2)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert fired == [1, 2, 3]


def test_run_in_executor_uses_another_os_thread(loop):
    async def main():
        return await loop.run_in_executor(None, threading.get_ident)

    assert loop.run_until_complete(main()) != threading.get_ident()


def test_executor_runs_a_blocking_call_while_greenlets_run():
    executor = ThreadExecutor(max_workers=2)
    gate = threading.Event()  # a real lock: this test is not monkey-patched
    ticks: list[int] = []

    def ticker():
        for i in range(3):
            ticks.append(i)
            gevent.sleep(0)
        gate.set()

    try:
        future = executor.submit(gate.wait, WAIT)
        gevent.spawn(ticker).join(WAIT)
        assert future.result(WAIT) is True
        assert ticks == [0, 1, 2]
    finally:
        executor.shutdown(wait=True)


def test_executor_cancels_a_call_that_has_not_started():
    executor = ThreadExecutor(max_workers=1)
    gate = threading.Event()
    ran: list[str] = []
    try:
        first = executor.submit(gate.wait, WAIT)
        second = executor.submit(ran.append, "second")
        assert second.cancel() is True
        assert second.cancelled()
        gate.set()
        assert first.result(WAIT) is True
        assert executor.submit(ran.append, "third").result(WAIT) is None
        assert ran == ["third"]
        assert first.cancel() is False  # done
    finally:
        executor.shutdown(wait=True)


def test_executor_does_not_cancel_a_running_call():
    executor = ThreadExecutor(max_workers=1)
    entered = threading.Event()
    gate = threading.Event()

    def work():
        entered.set()
        gate.wait(WAIT)
        return "finished"

    try:
        future = executor.submit(work)
        assert entered.wait(WAIT)
        assert future.running()
        assert future.cancel() is False
        gate.set()
        assert future.result(WAIT) == "finished"
    finally:
        executor.shutdown(wait=True)


def test_executor_shutdown_waits_for_queued_calls_and_refuses_new_ones():
    executor = ThreadExecutor(max_workers=1)
    done: list[int] = []
    futures = [executor.submit(done.append, i) for i in range(5)]
    executor.shutdown(wait=True)
    assert done == [0, 1, 2, 3, 4]
    # the results reach the futures in the hub's thread
    gevent.sleep(0)
    assert all(future.done() for future in futures)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(int)


def test_executor_shutdown_from_another_thread_waits_for_workers():
    executor = ThreadExecutor(max_workers=2)
    gate = threading.Event()
    executor.submit(gate.wait, WAIT)
    finished = threading.Event()

    def shut():
        executor.shutdown(wait=True)
        finished.set()

    thread = threading.Thread(target=shut)
    thread.start()
    assert not finished.wait(0.05)
    gate.set()
    thread.join(WAIT)
    assert finished.is_set()
