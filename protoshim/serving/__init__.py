"""Serving a protocol factory or a web application as a long-running server.

The pieces the ``protoshim serve`` command and the gunicorn worker share:

- :mod:`._listen` opens the listening sockets, before any loop exists, so a
  parent process can bind once and hand them to its workers;
- :mod:`._tls` builds the server's ``ssl.SSLContext`` from its options;
- :mod:`._target` turns ``MODULE:NAME`` into a protocol factory (a protocol
  factory itself, an ASGI or a WSGI application);
- :mod:`._server` runs one process's loop on those sockets until a signal,
  then shuts its connections down gracefully;
- :mod:`._logs` sends its log records (``protoshim.error``,
  ``protoshim.access``) where the command line says.
- :mod:`._workers` forks worker processes that each do so, and supervises
  them (``protoshim serve --workers N``).
"""

from ._errors import AppError, CliError
from ._listen import (
    DEFAULT_BACKLOG,
    Bind,
    Listeners,
    activated_binds,
    bind_tcp,
    open_listeners,
    parse_bind,
)
from ._logs import LEVELS, configure_logging
from ._server import REQUEST_HOOK, SHUTDOWN_GRACE, SHUTDOWN_HOOK, Server, run_loop, run_server
from ._target import Target, load_object, load_target, make_target
from ._tls import HTTP_ALPN, TLSConfig, parse_cert_reqs
from ._workers import Supervisor

__all__ = [
    "DEFAULT_BACKLOG",
    "HTTP_ALPN",
    "LEVELS",
    "REQUEST_HOOK",
    "SHUTDOWN_GRACE",
    "SHUTDOWN_HOOK",
    "AppError",
    "Bind",
    "CliError",
    "Listeners",
    "Server",
    "Supervisor",
    "TLSConfig",
    "Target",
    "activated_binds",
    "bind_tcp",
    "configure_logging",
    "load_object",
    "load_target",
    "make_target",
    "open_listeners",
    "parse_bind",
    "parse_cert_reqs",
    "run_loop",
    "run_server",
]
