"""The Tornado adapter: protoshim's core on a Tornado ``IOLoop``.

Callbacks and timers go through the ``IOLoop``, and streams, listeners and
UDP endpoints are core's descriptor primitives, watched with
``IOLoop.add_handler``.  See ``docs/adapters/tornado.md`` for how the layers
fit together, and why streams are not ``IOStream`` objects.

Importing this package does not import Tornado; :func:`attach`,
:class:`ProtocolServer` and :func:`new_event_loop` are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core import Adapter, lazy_exports

if TYPE_CHECKING:
    from ._app import AttachedEventLoop, ProtocolServer, attach
    from ._loop import TornadoDriver, new_event_loop

__all__ = [
    "ADAPTER",
    "AttachedEventLoop",
    "ProtocolServer",
    "TornadoDriver",
    "attach",
    "new_event_loop",
]

ADAPTER = Adapter(
    name="tornado",
    loop_factory="protoshim.adapters.tornado._loop:new_event_loop",
    requires="tornado",
    distribution="tornado",
    description="protoshim's core on a Tornado IOLoop, with descriptor streams",
)

__getattr__ = lazy_exports(
    __name__,
    {
        "._app": ["AttachedEventLoop", "ProtocolServer", "attach"],
        "._loop": ["TornadoDriver", "new_event_loop"],
    },
)
