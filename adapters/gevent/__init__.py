"""The gevent adapter: an asyncio event loop on the gevent hub's own loop.

Timers, descriptor watchers and thread wake-ups are watchers of the hub's
libev (or libuv) loop; the greenlet that calls ``run_forever`` runs the
asyncio callbacks while other greenlets keep running.  Streams, datagrams,
listeners and TLS come from protoshim's core, on those watchers.

Importing this package does not import gevent: the helpers below are loaded
on first use.

* :func:`wait_future` -- block a greenlet until an asyncio future is done;
* :func:`wait_greenlet` -- ``await`` a gevent greenlet from a coroutine;
* :class:`ProtocolHandler` and :class:`ProtocolStreamServer` -- serve a
  PEP 3156 protocol factory from a :class:`gevent.server.StreamServer`;
* :class:`ThreadExecutor` -- the default executor under
  ``monkey.patch_all()``: real OS threads, where asyncio's would be greenlets;
* :class:`GreenletRunner` -- runs the HTTP protocol's blocking code (WSGI
  applications) in greenlets; the default under ``monkey.patch_all()``.

See docs/adapters/gevent.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..._registry import Adapter

if TYPE_CHECKING:
    from ._blocking import GreenletRunner
    from ._executor import ThreadExecutor
    from ._greenlets import wait_future, wait_greenlet
    from ._loop import GeventDriver, new_event_loop
    from ._server import ProtocolHandler, ProtocolStreamServer

__all__ = [
    "ADAPTER",
    "GeventDriver",
    "GreenletRunner",
    "ProtocolHandler",
    "ProtocolStreamServer",
    "ThreadExecutor",
    "new_event_loop",
    "wait_future",
    "wait_greenlet",
]

ADAPTER = Adapter(
    name="gevent",
    loop_factory="protoshim.adapters.gevent._loop:new_event_loop",
    requires="gevent",
    distribution="gevent",
    description="asyncio on the gevent hub's loop, next to the application's greenlets",
)

_LAZY = {
    "GeventDriver": "_loop",
    "new_event_loop": "_loop",
    "ThreadExecutor": "_executor",
    "GreenletRunner": "_blocking",
    "wait_future": "_greenlets",
    "wait_greenlet": "_greenlets",
    "ProtocolHandler": "_server",
    "ProtocolStreamServer": "_server",
}


def __getattr__(name: str) -> Any:
    """Import the helpers, and so gevent, only when one is first used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
