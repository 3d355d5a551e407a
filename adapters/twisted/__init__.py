"""Run PEP 3156 protocols on Twisted, and Twisted protocols on any adapter.

``protoshim.new_event_loop("twisted")`` returns an asyncio event loop driving
a private reactor of its own; :func:`attach` returns one that runs inside an
application's already running reactor.  The bridges between the two worlds
(:func:`as_future`, :func:`as_deferred`, :class:`ProtocolFactory`,
:func:`from_twisted`) are imported lazily, so importing this package (which
the adapter registry does) never imports Twisted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core import Adapter, lazy_exports

if TYPE_CHECKING:
    from ._bridge import ProtocolFactory, as_deferred, as_future
    from ._loop import attach, new_event_loop
    from ._migrate import from_twisted

__all__ = [
    "ADAPTER",
    "ProtocolFactory",
    "as_deferred",
    "as_future",
    "attach",
    "from_twisted",
    "new_event_loop",
]

ADAPTER = Adapter(
    name="twisted",
    loop_factory="protoshim.adapters.twisted._loop:new_event_loop",
    requires="twisted.internet",
    distribution="twisted",
    description="protoshim's core on a private Twisted reactor, with Twisted's TCP transports",
)

__getattr__ = lazy_exports(
    __name__,
    {
        "._bridge": ["ProtocolFactory", "as_deferred", "as_future"],
        "._loop": ["attach", "new_event_loop"],
        "._migrate": ["from_twisted"],
    },
)
