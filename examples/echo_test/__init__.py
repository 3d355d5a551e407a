"""The "Echo Test" demo: a Flask page that talks to a WebSocket echo.

Serve it on any framework with::

    factory = protocol_factory(port)
    server = await loop.create_server(factory, "127.0.0.1", port)

The page is at ``/``, its stylesheet at ``/assets/style.css`` and the echo at
``/ws``.
"""

from ._app import STATIC_DIR, WS_PATH, create_app, echo, protocol_factory

__all__ = ["STATIC_DIR", "WS_PATH", "create_app", "echo", "protocol_factory"]
