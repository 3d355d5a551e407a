"""Core's accept path: an accepted connection is never left without an owner."""

from __future__ import annotations

import asyncio
import socket

import pytest

import protoshim

# The adapters whose connections are accepted by core's rules (the stdlib
# loop leaves this connection to the garbage collector).
CORE = ["selectors", "twisted", "tornado", "gevent", "pyuv"]


@pytest.mark.parametrize("framework", CORE)
def test_keyboard_interrupt_in_the_protocol_factory_drops_the_connection(framework: str) -> None:
    if framework not in protoshim.frameworks():
        pytest.skip(f"{framework} is not installed")

    def interrupt() -> asyncio.Protocol:
        raise KeyboardInterrupt

    loop = protoshim.new_event_loop(framework)
    try:
        server = loop.run_until_complete(loop.create_server(interrupt, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            with pytest.raises(KeyboardInterrupt):
                loop.run_until_complete(asyncio.sleep(10))
            try:
                assert client.recv(1) == b"", "the accepted connection stayed open"
            except ConnectionResetError:
                pass  # aborted: a reset is as closed as an EOF
        server.close()
        loop.run_until_complete(server.wait_closed())
    finally:
        loop.close()
