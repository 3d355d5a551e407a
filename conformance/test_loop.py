"""Loop basics: callbacks, timers, threads, context variables, tasks, loop life cycle."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import protoshim
from protoshim.conformance._helpers import wait
from protoshim.conformance.plugin import RunCoroutine

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("conformance_var", default="unset")


# -- callbacks and timers ------------------------------------------------------


def test_call_soon_runs_callbacks_in_fifo_order(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        order: list[int] = []
        done = loop.create_future()
        for i in range(100):
            loop.call_soon(order.append, i)
        loop.call_soon(done.set_result, None)
        await done
        assert order == list(range(100))

    run(main())


def test_call_soon_passes_arguments(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        done = loop.create_future()
        loop.call_soon(lambda *args: done.set_result(args), 1, "two", None)
        assert await done == (1, "two", None)

    run(main())


def test_call_later_runs_in_deadline_order(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        order: list[str] = []
        done = loop.create_future()
        loop.call_later(0.06, order.append, "c")
        loop.call_later(0.02, order.append, "a")
        loop.call_later(0.04, order.append, "b")
        loop.call_later(0.08, done.set_result, None)
        await done
        assert order == ["a", "b", "c"]

    run(main())


def test_call_at_uses_loop_time_and_deadline_order(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        order: list[str] = []
        done = loop.create_future()
        now = loop.time()
        loop.call_at(now + 0.04, order.append, "b")
        loop.call_at(now + 0.02, order.append, "a")
        handle = loop.call_at(now + 0.06, done.set_result, None)
        # a loop may keep its clock in milliseconds, as libuv does
        assert handle.when() == pytest.approx(now + 0.06, abs=0.001)
        await done
        assert order == ["a", "b"]

    run(main())


def test_cancelled_timers_and_callbacks_do_not_run(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        ran: list[str] = []
        done = loop.create_future()
        soon = loop.call_soon(ran.append, "soon")
        later = loop.call_later(0.01, ran.append, "later")
        at = loop.call_at(loop.time() + 0.01, ran.append, "at")
        for handle in (soon, later, at):
            handle.cancel()
            assert handle.cancelled()
        loop.call_later(0.05, done.set_result, None)
        await done
        assert ran == []

    run(main())


def test_exception_in_callback_reaches_the_exception_handler(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine, expect_exceptions: list[dict[str, Any]]
) -> None:
    def explode() -> None:
        raise ZeroDivisionError("from a callback")

    async def main() -> None:
        loop.call_soon(explode)
        after = loop.create_future()
        loop.call_soon(after.set_result, None)  # the loop keeps going
        await after
        assert len(expect_exceptions) == 1
        assert isinstance(expect_exceptions[0].get("exception"), ZeroDivisionError)

    run(main())


# -- threads -------------------------------------------------------------------


@pytest.mark.requires("threads")
def test_call_soon_threadsafe_from_another_thread(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        ran_on: asyncio.Future[int] = loop.create_future()
        loop_thread = threading.get_ident()

        def from_thread() -> None:
            loop.call_soon_threadsafe(lambda: ran_on.set_result(threading.get_ident()))

        thread = threading.Thread(target=from_thread)
        thread.start()
        try:
            assert await wait(ran_on, "the thread's callback") == loop_thread
        finally:
            thread.join(5)

    run(main())


@pytest.mark.requires("threads")
def test_run_in_executor_runs_in_a_worker_thread(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        worker = await loop.run_in_executor(None, threading.get_ident)
        assert worker != threading.get_ident()
        assert await loop.run_in_executor(None, pow, 2, 10) == 1024

    run(main())


@pytest.mark.requires("threads")
def test_run_in_executor_propagates_exceptions(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        empty: dict[str, int] = {}
        with pytest.raises(KeyError, match="missing"):
            await loop.run_in_executor(None, empty.__getitem__, "missing")

    run(main())


def _post_until_closed(
    loop: asyncio.AbstractEventLoop, posting: threading.Event, unexpected: list[BaseException]
) -> None:
    try:
        for n in itertools.count():
            loop.call_soon_threadsafe(lambda: None)
            posting.set()
            if n % 100 == 99:
                time.sleep(0)  # lets green threads switch too
    except RuntimeError as exc:
        if "closed" not in str(exc):
            unexpected.append(exc)
    except BaseException as exc:
        unexpected.append(exc)


@pytest.mark.requires("threads")
def test_call_soon_threadsafe_racing_close_raises_only_closed(
    adapter: protoshim.Adapter, fd_guard: None
) -> None:
    # A worker (a child watcher, an executor) may post its result just as the
    # loop thread closes the loop: it is told "closed", or nothing at all.
    for _ in range(60):
        each = adapter.new_event_loop()
        each.run_until_complete(asyncio.sleep(0))
        unexpected: list[BaseException] = []
        posting = threading.Event()
        thread = threading.Thread(target=_post_until_closed, args=(each, posting, unexpected))
        thread.start()
        try:
            assert posting.wait(5), "the thread never posted"
        finally:
            each.close()
            thread.join(5)
        assert not thread.is_alive()
        assert unexpected == []


# -- context variables ---------------------------------------------------------


def test_callbacks_run_in_the_context_passed(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        VAR.set("scheduled")
        given = contextvars.copy_context()
        VAR.set("current")
        seen: list[str] = []
        done = loop.create_future()
        loop.call_soon(lambda: seen.append(VAR.get()), context=given)
        loop.call_later(0.01, lambda: seen.append(VAR.get()), context=given)
        loop.call_at(loop.time() + 0.02, lambda: seen.append(VAR.get()), context=given)
        loop.call_later(0.04, done.set_result, None)
        await done
        assert seen == ["scheduled"] * 3

    run(main())


def test_callbacks_without_context_see_a_copy_taken_when_scheduled(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        seen: list[str] = []
        done = loop.create_future()
        VAR.set("at scheduling")

        def look_then_change() -> None:
            seen.append(VAR.get())
            VAR.set("changed by callback")

        loop.call_soon(lambda: seen.append(VAR.get()))
        loop.call_later(0.01, look_then_change)
        VAR.set("later")
        loop.call_later(0.03, done.set_result, None)
        await done
        assert seen == ["at scheduling", "at scheduling"]
        assert VAR.get() == "later"

    run(main())


def test_tasks_copy_the_current_context(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def child() -> str:
        seen = VAR.get()
        VAR.set("set by child")
        return seen

    async def main() -> None:
        VAR.set("parent")
        assert await loop.create_task(child()) == "parent"
        assert VAR.get() == "parent"

    run(main())


# -- coroutines and tasks --------------------------------------------------------


def test_gather_returns_results_in_argument_order(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def value_after(value: int, delay: float) -> int:
        assert asyncio.get_running_loop() is loop
        await asyncio.sleep(delay)
        return value

    async def main() -> None:
        results = await asyncio.gather(
            value_after(1, 0.03), value_after(2, 0.0), value_after(3, 0.01)
        )
        assert list(results) == [1, 2, 3]

    run(main())


def test_cancelling_a_task_raises_cancelled_error_inside_it(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        started = loop.create_future()
        inside: list[str] = []

        async def sleeper() -> None:
            started.set_result(None)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                inside.append("cancelled")
                raise

        task = loop.create_task(sleeper())
        await started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert inside == ["cancelled"]

    run(main())


def test_sleep_and_wait_for_timeout(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        assert await asyncio.sleep(0.01, result="slept") == "slept"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(3600), 0.02)

    run(main())


def test_future_callbacks_run_through_the_loop(
    loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        future = loop.create_future()
        seen: list[object] = []
        future.add_done_callback(lambda f: seen.append(f.result()))
        future.set_result("value")
        assert seen == []  # done callbacks are scheduled, never called inline
        await asyncio.sleep(0)
        assert seen == ["value"]

    run(main())


# -- loop life cycle --------------------------------------------------------------


def test_many_loops_can_be_created_and_closed(adapter: protoshim.Adapter, fd_guard: None) -> None:
    for i in range(20):
        each = adapter.new_event_loop()
        try:
            assert not each.is_running()
            assert each.run_until_complete(asyncio.sleep(0, result=i)) == i
        finally:
            each.close()
        assert each.is_closed()
        each.close()  # closing twice is allowed


def test_new_event_loop_ignores_the_installed_policy(
    adapter: protoshim.Adapter, fd_guard: None
) -> None:
    # A policy that asks protoshim for its loops (the way to make unchanged
    # code use a framework) must not be asked back: that would recurse.
    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return protoshim.new_event_loop(adapter.name)

    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(Policy())
    try:
        each = asyncio.get_event_loop_policy().new_event_loop()
        try:
            assert each.run_until_complete(asyncio.sleep(0, result="ran")) == "ran"
        finally:
            each.close()
    finally:
        asyncio.set_event_loop_policy(previous)


def test_asyncio_runner_accepts_protoshim_loop_factory(
    adapter: protoshim.Adapter, fd_guard: None
) -> None:
    probe = adapter.new_event_loop()
    loop_type = type(probe)
    probe.close()

    async def current_loop() -> asyncio.AbstractEventLoop:
        await asyncio.sleep(0)
        return asyncio.get_running_loop()

    with asyncio.Runner(loop_factory=protoshim.loop_factory(adapter.name)) as runner:
        first = runner.run(current_loop())
        assert first is runner.get_loop()
        assert type(first) is loop_type
        assert runner.run(current_loop()) is first
    assert first.is_closed()


def test_protoshim_run_uses_the_framework(adapter: protoshim.Adapter, fd_guard: None) -> None:
    probe = adapter.new_event_loop()
    loop_type = type(probe)
    probe.close()

    async def current_loop_type() -> type[asyncio.AbstractEventLoop]:
        return type(asyncio.get_running_loop())

    assert protoshim.run(current_loop_type(), framework=adapter.name) is loop_type


# -- signals ------------------------------------------------------------------------


@pytest.fixture
def sigusr1_net() -> Iterator[list[int]]:
    """Catch SIGUSR1 in Python during the test so a broken adapter cannot kill pytest."""
    caught: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.requires("signals")
def test_signal_handler_runs_on_the_loop(
    sigusr1_net: list[int], loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        ran_on: asyncio.Future[tuple[int, tuple[object, ...]]] = loop.create_future()

        def handler(*args: object) -> None:
            if not ran_on.done():
                ran_on.set_result((threading.get_ident(), args))

        loop.add_signal_handler(signal.SIGUSR1, handler, "arg")
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            thread, args = await wait(ran_on, "the SIGUSR1 handler")
            assert thread == threading.get_ident()
            assert args == ("arg",)
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        assert sigusr1_net == [], "the signal reached Python's handler, not the loop's"

    run(main())


@pytest.mark.requires("signals")
def test_remove_signal_handler_reports_whether_one_was_set(
    sigusr1_net: list[int], loop: asyncio.AbstractEventLoop, run: RunCoroutine
) -> None:
    async def main() -> None:
        assert loop.remove_signal_handler(signal.SIGUSR1) is False
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
        assert loop.remove_signal_handler(signal.SIGUSR1) is False

    run(main())
