"""Listening sockets, opened before any event loop exists.

Binding first and serving later is what lets one parent bind a port and fork
workers that all accept from it, and what lets a listener come from outside
(a file descriptor, systemd, gunicorn).

Every listener is named by a :class:`Bind`, written in gunicorn's notation
(``HOST:PORT``, ``[V6]:PORT``, ``unix:PATH``, ``fd://N``);
:func:`open_listeners` opens them all or none, and the :class:`Listeners` it
returns removes the Unix socket files it created when it is closed.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from ._errors import CliError

__all__ = [
    "DEFAULT_BACKLOG",
    "Bind",
    "Listeners",
    "activated_binds",
    "bind_tcp",
    "open_listeners",
    "parse_bind",
]

#: Connections the kernel queues before accept(); gunicorn's and uvicorn's default.
DEFAULT_BACKLOG = 2048
#: The first descriptor systemd passes (``SD_LISTEN_FDS_START`` in sd-daemon.h).
LISTEN_FDS_START = 3

BIND_FORMS = "HOST:PORT, [V6]:PORT, unix:PATH or fd://N"
_INET = (socket.AF_INET, socket.AF_INET6)


@dataclass(frozen=True)
class Bind:
    """One listener to open: a TCP address, a Unix socket path or a descriptor."""

    kind: Literal["tcp", "unix", "fd"]
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_port(text: str, what: str) -> int:
    """Return ``text`` as a TCP port (0 picks a free one), or raise :class:`CliError`."""
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise CliError(f"{what}: not a port (0-65535; 0 picks a free one): {text!r}")
    return int(text)


def parse_fd(text: str, what: str) -> int:
    """Return ``text`` as a file descriptor number, or raise :class:`CliError`."""
    if not text.isdigit():
        raise CliError(f"{what}: not a file descriptor number: {text!r}")
    return int(text)


def parse_bind(text: str) -> Bind:
    """Parse one ``--bind`` in gunicorn's notation; an empty host means every interface."""
    what = f"--bind {text}"
    for prefix in ("unix://", "unix:"):
        if text.startswith(prefix):
            path = text[len(prefix) :]
            if not path:
                raise CliError(f"{what}: unix: needs a path")
            return Bind("unix", path=path)
    if text.startswith("fd://"):
        return Bind("fd", fd=parse_fd(text[len("fd://") :], what))
    address = text.removeprefix("tcp://")
    match = re.fullmatch(r"\[([^\]]+)\]:(\w*)|([^:\[\]]*):(\w*)", address)
    if match is None:
        raise CliError(f"{what}: expected {BIND_FORMS}")
    host = match[1] if match[1] is not None else match[3]
    port = match[2] if match[2] is not None else match[4]
    return Bind("tcp", host=host, port=parse_port(port, what))


def activated_binds() -> list[Bind]:
    """Return the descriptors systemd passed us by socket activation, if any.

    As ``sd_listen_fds(1)`` does, the variables are removed whatever they say,
    so that processes we start do not take the descriptors for theirs.
    """
    pid, count = os.environ.pop("LISTEN_PID", None), os.environ.pop("LISTEN_FDS", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return []
    if not pid.isdigit() or not count.isdigit():
        raise CliError(f"socket activation: LISTEN_PID={pid!r}, LISTEN_FDS={count!r}: not numbers")
    if int(pid) != os.getpid():
        return []  # meant for another process (our parent, say)
    return [Bind("fd", fd=fd) for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count))]


class Listeners:
    """Listening sockets, open and ready to hand to :func:`~.run_server`.

    Closing them (or leaving the ``with`` block) closes every socket and
    removes each Unix socket file that :func:`open_listeners` created, unless
    another process has replaced it since.
    """

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        # path -> (st_dev, st_ino) of the socket file we bound
        self._paths: dict[str, tuple[int, int]] = {}

    def close(self) -> None:
        """Close the sockets and remove the Unix socket files we created."""
        for sock in self.sockets:
            sock.close()
        for path, identity in self._paths.items():
            try:
                found = os.lstat(path)
                if (found.st_dev, found.st_ino) == identity:
                    os.unlink(path)
            except OSError:
                pass  # already gone, or not ours to remove
        self._paths.clear()

    def __enter__(self) -> Listeners:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_listeners(binds: Iterable[Bind], backlog: int = DEFAULT_BACKLOG) -> Listeners:
    """Open every listener of ``binds``, all non-blocking and listening with
    ``backlog``; raise :class:`CliError` (and close those already open) if
    one of them fails."""
    if backlog < 1:
        raise CliError(f"--backlog must be >= 1, got {backlog}")
    listeners = Listeners()
    try:
        for bind in binds:
            if bind.kind == "tcp":
                listeners.sockets.extend(bind_tcp(bind.host, bind.port, backlog))
            elif bind.kind == "unix":
                listeners.sockets.append(_bind_unix(bind.path, backlog, listeners))
            else:
                listeners.sockets.append(_adopt_fd(bind.fd, backlog))
    except BaseException:
        listeners.close()
        raise
    # TCP first: tools take the first port of the startup line, which lists
    # the sockets in this order.
    listeners.sockets.sort(key=lambda sock: sock.family not in _INET)
    return listeners


def bind_tcp(host: str, port: int, backlog: int = DEFAULT_BACKLOG) -> list[socket.socket]:
    """Bind and listen on every address ``host`` resolves to, as asyncio's
    ``create_server`` does; raise :class:`CliError` if any of them fails."""
    named = str(Bind("tcp", host=host, port=port))
    try:
        infos = socket.getaddrinfo(
            host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CliError(f"cannot listen on {named}: {exc.strerror}") from None
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
        raise CliError(f"cannot listen on {named}: {exc.strerror or exc}") from None
    return sockets


def _bind_unix(path: str, backlog: int, listeners: Listeners) -> socket.socket:
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        found = os.lstat(path)
        listeners._paths[path] = (found.st_dev, found.st_ino)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on unix:{path}: {exc.strerror or exc}") from None
    return sock


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file that no server listens on any more; refuse any
    other file, and a socket a live server still accepts on."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CliError(f"cannot listen on unix:{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise CliError(f"cannot listen on unix:{path}: the file exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            pass  # left by a server that died: nobody listens on it
        except OSError as exc:
            raise CliError(f"cannot listen on unix:{path}: {exc.strerror or exc}") from None
        else:
            raise CliError(f"cannot listen on unix:{path}: a server is listening on it")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CliError(f"cannot replace the stale socket unix:{path}: {exc.strerror}") from None


def _adopt_fd(fd: int, backlog: int) -> socket.socket:
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise CliError(f"cannot listen on fd://{fd}: it is not a socket")
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise CliError(f"cannot listen on fd://{fd}: no such open descriptor") from None
        raise CliError(f"cannot listen on fd://{fd}: {exc.strerror or exc}") from None
    try:
        if sock.type != socket.SOCK_STREAM:
            raise CliError(f"cannot listen on fd://{fd}: not a stream socket")
        # Listening again is harmless and applies our backlog, as gunicorn does.
        sock.listen(backlog)
        sock.setblocking(False)
        sock.set_inheritable(False)
    except OSError as exc:
        sock.detach()  # not ours to close: the error says why we did not serve it
        raise CliError(f"cannot listen on fd://{fd}: {exc.strerror or exc}") from None
    except CliError:
        sock.detach()
        raise
    return sock
