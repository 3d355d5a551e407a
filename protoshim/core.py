"""Everything an adapter may use from core, in one public module.

An adapter imports from here and from its framework, and from nothing else
of protoshim: what it needs of core is part of the primitive interface,
whose contract is in the docstrings of :mod:`protoshim._primitives`.

* the loop: :class:`EventLoop`, with its adapter-facing methods
  ``callback_failed``, ``serve_stream``, ``begin_guest``/``end_guest``,
  ``call_as_running``/``call_as_running_from`` and ``wakes_on_signals``;
* the contract: :class:`Driver`, :class:`Stream`, :class:`Datagram`,
  :class:`Listener` and their sinks;
* descriptor-based primitives for drivers that watch descriptors:
  :class:`FdDriver` and what it builds on, and the accept-pause rule;
* the per-descriptor reader and writer table: :class:`WatchTable`, and
  :class:`WatchingDriver`, a driver's four descriptor primitives over it;
* :func:`peer_address`, the peer's address as a transport keeps it;
* carrying a future's outcome across loops: :func:`relay`, :func:`on_settled`;
* registering the adapter: :class:`Adapter`, :func:`lazy_exports`.
"""

from __future__ import annotations

from ._fdio import (
    ACCEPT_NOTHING,
    ACCEPT_RETRY_DELAY,
    FdDatagram,
    FdDriver,
    FdListener,
    FdStream,
    accept_pauses,
)
from ._loop import MAX_TIMER_DELAY, EventLoop
from ._primitives import (
    Address,
    Cancellable,
    Datagram,
    DatagramSink,
    Driver,
    Listener,
    OnStream,
    Stream,
    StreamSink,
)
from ._registry import Adapter, lazy_exports
from ._relay import on_settled, relay
from ._stream import peer_address
from ._watches import READ, WRITE, Watch, WatchingDriver, WatchTable

__all__ = [
    "ACCEPT_NOTHING",
    "ACCEPT_RETRY_DELAY",
    "MAX_TIMER_DELAY",
    "READ",
    "WRITE",
    "Adapter",
    "Address",
    "Cancellable",
    "Datagram",
    "DatagramSink",
    "Driver",
    "EventLoop",
    "FdDatagram",
    "FdDriver",
    "FdListener",
    "FdStream",
    "Listener",
    "OnStream",
    "Stream",
    "StreamSink",
    "Watch",
    "WatchTable",
    "WatchingDriver",
    "accept_pauses",
    "lazy_exports",
    "on_settled",
    "peer_address",
    "relay",
]
