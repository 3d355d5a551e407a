"""The minimal adapter: protoshim's core on the stdlib :mod:`selectors`.

It exists to test the core without any framework installed, and as the
smallest complete example of the primitive interface for third-party
adapters: a driver of about a hundred lines, everything else inherited.
"""

from ...core import Adapter

__all__ = ["ADAPTER"]

ADAPTER = Adapter(
    name="selectors",
    loop_factory="protoshim.adapters.selectors._loop:new_event_loop",
    requires="selectors",
    distribution="python",
    description="protoshim's core on the stdlib selectors module",
)
