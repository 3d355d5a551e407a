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

from typing import TYPE_CHECKING

from ...core import Adapter, lazy_exports

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

__getattr__ = lazy_exports(
    __name__,
    {
        "._loop": ("GeventDriver", "new_event_loop"),
        "._executor": ("ThreadExecutor",),
        "._blocking": ("GreenletRunner",),
        "._greenlets": ("wait_future", "wait_greenlet"),
        "._server": ("ProtocolHandler", "ProtocolStreamServer"),
    },
)
