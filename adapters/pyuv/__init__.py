"""Run PEP 3156 protocols on pyuv, the Python binding of libuv.

``protoshim.new_event_loop("pyuv")`` returns an asyncio event loop on a
private ``pyuv.Loop``: TCP, Pipe and UDP handles are its transports, Timer,
Idle and Async handles its scheduling, Poll handles its fd watchers.
:func:`new_event_loop` can also share a ``pyuv.Loop`` the program created, and
:func:`attach` runs the asyncio loop inside a ``pyuv.Loop`` that the program
runs itself.  The loop module is imported lazily, so importing this package
(which the adapter registry does) never imports pyuv.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core import Adapter, lazy_exports

if TYPE_CHECKING:
    from ._driver import PyuvDriver
    from ._loop import PyuvEventLoop, attach, new_event_loop

__all__ = ["ADAPTER", "PyuvDriver", "PyuvEventLoop", "attach", "new_event_loop"]

ADAPTER = Adapter(
    name="pyuv",
    loop_factory="protoshim.adapters.pyuv._loop:new_event_loop",
    requires="pyuv",
    distribution="pyuv",
    description="protoshim's core on a pyuv (libuv) loop, with libuv's TCP, Pipe and UDP handles",
    # pyuv 1.4.0 does not build from PyPI on current Pythons
    install="protoshim install-pyuv",
)

__getattr__ = lazy_exports(
    __name__, {"._driver": ["PyuvDriver"], "._loop": ["PyuvEventLoop", "attach", "new_event_loop"]}
)
