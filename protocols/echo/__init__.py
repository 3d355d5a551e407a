"""Echo over streams and datagrams, written only against asyncio's interfaces.

``EchoServer`` is the protocol factory for ``protoshim serve``; ``EchoClient``
drives ping-pong rounds for tests and benchmarks.
"""

from ._client import EchoClient as EchoClient
from ._client import ping_pong as ping_pong
from ._server import DatagramEcho as DatagramEcho
from ._server import EchoServer as EchoServer

__all__ = ["DatagramEcho", "EchoClient", "EchoServer", "ping_pong"]
