"""The private names of gevent and asyncio that the adapter uses: here, and nowhere else.

Verified on gevent 22.10.1 and 26.9.0 (the oldest and newest the nox matrix
runs) and CPython 3.11; ``SSLProtocol._app_transport`` is unchanged to 3.13.
"""

from __future__ import annotations

import asyncio
from asyncio import sslproto

# The current thread's hub or None: gevent.get_hub() would create one to find none.
from gevent._hub_local import get_hub_if_exists  # type: ignore[import-untyped]

__all__ = ["app_transport", "get_hub_if_exists"]


def app_transport(transport: asyncio.Transport) -> asyncio.Transport:
    """Return the transport the protocol over ``transport`` sees: under TLS, the TLS one."""
    protocol = transport.get_protocol()
    if isinstance(protocol, sslproto.SSLProtocol):
        app: asyncio.Transport = protocol._app_transport  # asyncio has no public way to it
        return app
    return transport
