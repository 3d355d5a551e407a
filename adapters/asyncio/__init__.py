"""The reference adapters: the stdlib asyncio loop, and uvloop.

These are the loops every other adapter is measured against.  They do not go
through protoshim's core: the conformance suite's expectations are *defined*
by what the stdlib loop does.
"""

from ..._registry import Adapter

__all__ = ["ASYNCIO", "UVLOOP"]

ASYNCIO = Adapter(
    name="asyncio",
    loop_factory="asyncio:new_event_loop",
    requires="asyncio",
    distribution="python",
    description="the stdlib asyncio event loop (the reference)",
)

UVLOOP = Adapter(
    name="uvloop",
    loop_factory="uvloop:new_event_loop",
    requires="uvloop",
    distribution="uvloop",
    description="uvloop, the libuv-based asyncio loop",
)
