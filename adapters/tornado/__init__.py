"""The Tornado adapter: protoshim's core on a Tornado ``IOLoop``.

Streams are Tornado ``IOStream`` objects, servers accept through
``TCPServer``, timers and callbacks go through the ``IOLoop``, and UDP
endpoints watch their socket with ``IOLoop.add_handler``.  See
``docs/adapters/tornado.md`` for how the layers fit together.

Importing this package does not import Tornado; :func:`attach`,
:class:`ProtocolServer` and :func:`new_event_loop` are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..._registry import Adapter

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
    description="protoshim's core on a Tornado IOLoop, with IOStream transports",
    missing={"subprocess": "not implemented by protoshim's core yet"},
)

_LAZY = {
    "AttachedEventLoop": "._app",
    "ProtocolServer": "._app",
    "attach": "._app",
    "TornadoDriver": "._loop",
    "new_event_loop": "._loop",
}


def __getattr__(name: str) -> Any:
    """Import the Tornado-dependent names only when they are used."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value
