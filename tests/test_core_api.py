"""What core offers adapters (``protoshim.core``), checked on its own.

The descriptor table, the future relay and guest mode are written once in
core for every adapter; these tests pin their rules without a framework.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator

import pytest

import protoshim
from protoshim.core import READ, WRITE, EventLoop, Watch, WatchTable, on_settled, relay

# -- the descriptor table ----------------------------------------------------


class Framework:
    """Records what a table asks of it, and refuses descriptors on request."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, int, int]] = []
        self.refuse: set[int] = set()

    def apply(self, watch: Watch, previous: int) -> None:
        if watch.fd in self.refuse:
            raise OSError(9, "Bad file descriptor")
        self.applied.append((watch.fd, previous, watch.events))


def test_the_table_applies_only_changes_of_the_watched_events() -> None:
    framework = Framework()
    table = WatchTable(framework.apply)
    table.add_reader(5, lambda: None)
    table.add_reader(5, lambda: None)  # replaces the callback: no change to apply
    table.add_writer(5, lambda: None)
    assert table.remove_reader(5) is True
    assert table.remove_reader(5) is False
    assert table.remove_writer(5) is True
    assert framework.applied == [
        (5, 0, READ),
        (5, READ, READ | WRITE),
        (5, READ | WRITE, WRITE),
        (5, WRITE, 0),
    ]
    assert table.get(5) is None
    assert table.watches() == []


def test_a_refused_descriptor_leaves_no_trace() -> None:
    framework = Framework()
    table = WatchTable(framework.apply)
    framework.refuse.add(7)
    with pytest.raises(OSError):
        table.add_reader(7, lambda: None)
    assert table.get(7) is None
    framework.refuse.clear()
    table.add_reader(7, lambda: None)
    framework.refuse.add(7)
    with pytest.raises(OSError):
        table.add_writer(7, lambda: None)
    watch = table.get(7)
    assert watch is not None and watch.events == READ and watch.writer is None


def test_dispatch_skips_a_writer_that_the_reader_removed() -> None:
    table = WatchTable(Framework().apply)
    calls: list[str] = []

    def reader() -> None:
        calls.append("read")
        table.remove_writer(3)

    table.add_reader(3, reader)
    table.add_writer(3, lambda: calls.append("write"))
    watch = table.get(3)
    assert watch is not None
    table.dispatch(watch, READ | WRITE)
    assert calls == ["read"]


class Reading(Watch):
    """A descriptor's own watch that is also its read callback, as a descriptor stream is."""

    __slots__ = ("reads",)

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.reads = 0

    def __call__(self) -> None:
        self.reads += 1


def test_a_callable_watch_of_the_descriptor_is_kept_as_its_watch() -> None:
    framework = Framework()
    table = WatchTable(framework.apply)
    own = Reading(4)
    table.add_reader(4, own)
    table.add_writer(4, lambda: None)
    assert table.get(4) is own
    table.dispatch(own, READ)
    assert own.reads == 1
    table.remove_reader(4)
    table.remove_writer(4)
    assert table.get(4) is None and own.events == 0 and own.reader is own.writer is None
    # Another descriptor's watch is only a callback there.
    table.add_reader(9, own)
    watch = table.get(9)
    assert watch is not None and watch is not own and watch.reader is own
    assert framework.applied[-1] == (9, 0, READ)


def test_descriptors_out_of_the_table_are_refused_by_the_framework_not_the_table() -> None:
    framework = Framework()
    table = WatchTable(framework.apply)
    framework.refuse.add(-1)
    with pytest.raises(OSError):
        table.add_reader(-1, lambda: None)
    assert table.get(-1) is None and table.watches() == []
    table.add_reader(100_000, lambda: None)
    assert [w.fd for w in table.watches()] == [100_000]


# -- the future relay --------------------------------------------------------


def test_relay_carries_results_errors_and_cancellation_between_loops() -> None:
    outer = asyncio.new_event_loop()
    inner = protoshim.new_event_loop("selectors")
    try:
        for outcome in ("result", "error", "cancel"):
            source: asyncio.Future[int] = inner.create_future()
            target: asyncio.Future[int] = outer.create_future()
            relay(source, target)
            if outcome == "result":
                source.set_result(3)
            elif outcome == "error":
                source.set_exception(ValueError("no"))
            else:
                source.cancel()
            inner.run_until_complete(asyncio.sleep(0))
            outer.run_until_complete(asyncio.sleep(0))
            assert target.done(), outcome
            if outcome == "result":
                assert target.result() == 3
            elif outcome == "error":
                assert isinstance(target.exception(), ValueError)
            else:
                assert target.cancelled()
        # Cancelling the target cancels the source.
        source = inner.create_future()
        target = outer.create_future()
        relay(source, target)
        target.cancel()
        outer.run_until_complete(asyncio.sleep(0))
        assert source.cancelled()
    finally:
        inner.close()
        outer.close()


def test_on_settled_calls_exactly_one_outcome() -> None:
    loop = asyncio.new_event_loop()
    try:
        calls: list[object] = []
        future: asyncio.Future[int] = loop.create_future()
        on_settled(future, calls.append, calls.append, lambda: calls.append("cancelled"))
        future.set_result(1)
        loop.run_until_complete(asyncio.sleep(0))
        assert calls == [1]
    finally:
        loop.close()


# -- guest mode --------------------------------------------------------------


def new_loop() -> EventLoop:
    loop = protoshim.new_event_loop("selectors")
    assert isinstance(loop, EventLoop)
    return loop


def test_a_running_guest_is_the_running_loop_until_it_ends() -> None:
    loop = new_loop()
    try:
        loop.begin_guest(running=True)
        assert loop.guest and loop.is_running()
        assert asyncio.get_running_loop() is loop
        assert sys.get_asyncgen_hooks().finalizer is not None
        with pytest.raises(RuntimeError):
            loop.run_forever()
        loop.end_guest()
        assert not loop.guest and not loop.is_running()
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
    finally:
        loop.close()


def test_a_guest_reraises_an_interrupt_that_nobody_consumed() -> None:
    loop = new_loop()
    try:
        loop.begin_guest(running=True)
        loop.callback_failed(KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            loop.end_guest()
        assert not loop.is_running()
    finally:
        loop.close()


def test_closing_a_guest_closes_the_loop_before_it_reraises_an_interrupt() -> None:
    loop = new_loop()
    loop.begin_guest(running=True)
    loop.callback_failed(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        loop.close()
    assert loop.is_closed()


def test_a_guest_runs_what_was_left_ready_and_stays_running_after_stop() -> None:
    loop = new_loop()
    try:
        ran: list[int] = []
        loop.call_soon(ran.append, 1)
        loop.begin_guest(running=True)
        loop.call_soon(loop.stop)
        loop.driver.run()  # what the application's own run of the framework does
        assert ran == [1]
        assert loop.is_running(), "a stopped guest is still attached"
        loop.call_later(0.01, ran.append, 2)
        loop.call_later(0.02, loop.stop)
        loop.driver.run()
        assert ran == [1, 2]
        loop.end_guest()
    finally:
        loop.close()


def test_closing_a_guest_ends_it() -> None:
    loop = new_loop()
    loop.begin_guest()
    assert loop.is_running()
    loop.close()
    assert loop.is_closed() and not loop.guest


def test_call_as_running_enters_the_loop_and_its_async_generator_hooks() -> None:
    loop = new_loop()
    finalized: list[str] = []

    async def agen() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            finalized.append("done")

    try:
        loop.begin_guest()

        def step() -> object:
            assert asyncio.get_running_loop() is loop
            generator = agen()
            return generator.__anext__().send(None)

        with pytest.raises(StopIteration):
            loop.call_as_running(step)
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()  # restored after the call
        # The abandoned generator is finalized by the loop it started on.
        gc.collect()
        assert finalized == [], "finalized at once, not by the loop's hook"
        loop.end_guest()
        loop.run_until_complete(asyncio.sleep(0))
        assert finalized == ["done"]
    finally:
        loop.close()
