"""Listening sockets, opened before any event loop exists.

Binding first and serving later is what lets one parent bind a port and fork
workers that all accept from it, and what lets a listener come from outside
(a file descriptor, systemd, gunicorn).
"""

from __future__ import annotations

import socket

from ._errors import CliError

__all__ = ["DEFAULT_BACKLOG", "bind_tcp"]

#: Connections the kernel queues before accept(); gunicorn's and uvicorn's default.
DEFAULT_BACKLOG = 2048


def bind_tcp(host: str, port: int, backlog: int = DEFAULT_BACKLOG) -> list[socket.socket]:
    """Bind and listen on every address ``host`` resolves to, as asyncio's
    ``create_server`` does; raise :class:`CliError` if any of them fails."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # One socket per family, as asyncio does: the v4 one is separate.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sockets
