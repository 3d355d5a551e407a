"""The private names of gevent and asyncio that the adapter relies on, and only here.

Verified on gevent 22.10.1 and 26.9.0, the oldest and newest releases the
nox matrix runs, and on CPython 3.11; ``SSLProtocol._app_transport`` is
the same in 3.12 and 3.13.  Everything else the adapter uses is public API.
"""

from __future__ import annotations

import asyncio
from asyncio import sslproto
from typing import Any

from gevent._hub_local import get_hub_if_exists  # type: ignore[import-untyped]

__all__ = ["app_transport", "hub_if_exists"]


def hub_if_exists() -> Any:
    """Return the current thread's gevent hub, or None, without creating one.

    ``gevent.get_hub()`` would create a hub (and its loop) just to find none.
    """
    return get_hub_if_exists()


def app_transport(transport: asyncio.Transport) -> asyncio.Transport:
    """Return the transport a protocol sees over ``transport``: under TLS, the TLS one.

    ``loop.serve_stream`` gives the protocol the TLS transport but returns
    nothing, and asyncio has no public way from its ``SSLProtocol`` to it.
    """
    protocol = transport.get_protocol()
    if isinstance(protocol, sslproto.SSLProtocol):
        app: asyncio.Transport = protocol._app_transport
        return app
    return transport
