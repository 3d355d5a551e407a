"""The asyncio event loop on a ``pyuv.Loop``: run by itself, or as a guest of the program's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ...core import EventLoop
from ._driver import PyuvDriver

__all__ = ["PyuvEventLoop", "attach", "new_event_loop"]


class PyuvEventLoop(EventLoop):
    """The asyncio event loop of protoshim on a ``pyuv.Loop``.

    Besides ``run_forever`` and friends, it can run as a guest of a pyuv
    loop that the program runs itself: see :meth:`attach`.
    """

    def __init__(self, driver: PyuvDriver) -> None:
        super().__init__(driver)
        self._uv_driver = driver

    @property
    def uv_loop(self) -> Any:
        """The ``pyuv.Loop`` this event loop runs on."""
        return self._uv_driver.uv_loop

    def attach(self) -> None:
        """Make this loop run whenever the program runs its ``pyuv.Loop``.

        From now until :meth:`detach`, the loop is running (as inside
        ``run_forever``): tasks, callbacks and I/O progress while the program
        runs the pyuv loop itself, ``asyncio.get_running_loop()`` returns it,
        and it keeps the pyuv loop alive.  :meth:`stop` makes the program's
        current ``uv_loop.run()`` return; the loop stays attached.
        """
        self.begin_guest(running=True)
        self._uv_driver.enter_guest()

    def detach(self) -> None:
        """Stop running inside the program's pyuv loop (see :meth:`attach`).

        Call it outside the program's ``uv_loop.run()``.  A KeyboardInterrupt
        or SystemExit raised by a callback while attached (which stopped the
        pyuv loop) is raised here.
        """
        self._uv_driver.leave_guest()
        self.end_guest()


def new_event_loop(uv_loop: Any = None) -> PyuvEventLoop:
    """Create an event loop on a private ``pyuv.Loop``, or on ``uv_loop``.

    A shared ``uv_loop`` is run by ``run_forever`` / ``run_until_complete``
    (which then also run the program's own handles on it), and is never
    closed by ``close()``.  To run it yourself instead, use :func:`attach`.
    """
    return PyuvEventLoop(PyuvDriver(uv_loop))


@contextlib.contextmanager
def attach(uv_loop: Any) -> Iterator[PyuvEventLoop]:
    """Run a new event loop inside ``uv_loop`` for the duration of the block.

    The program runs ``uv_loop.run()`` itself inside the block; asyncio
    callbacks, tasks and transports progress as it does, and ``loop.stop()``
    makes that ``run()`` return.  Leaving the block detaches and closes the
    event loop (not ``uv_loop``)::

        with attach(uv) as loop:
            task = loop.create_task(main())
            task.add_done_callback(lambda _: loop.stop())
            uv.run()
    """
    loop = new_event_loop(uv_loop)
    loop.attach()
    try:
        yield loop
    finally:
        try:
            loop.detach()
        finally:
            loop.close()
