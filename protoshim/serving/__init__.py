"""Serving a protocol factory or a web application as a long-running server.

The pieces the ``protoshim serve`` command and the gunicorn worker share:

- :mod:`._listen` opens the listening sockets, before any loop exists, so a
  parent process can bind once and hand them to its workers;
- :mod:`._target` turns ``MODULE:NAME`` into a protocol factory (a protocol
  factory itself, an ASGI or a WSGI application);
- :mod:`._server` runs one process's loop on those sockets until a signal,
  then shuts its connections down gracefully;
- :mod:`._workers` forks worker processes that each do so, and supervises
  them (``protoshim serve --workers N``).
"""

from ._errors import AppError, CliError
from ._listen import bind_tcp
from ._server import SHUTDOWN_GRACE, SHUTDOWN_HOOK, Server, run_loop, run_server
from ._target import Target, load_object, load_target, make_target
from ._workers import Supervisor

__all__ = [
    "SHUTDOWN_GRACE",
    "SHUTDOWN_HOOK",
    "AppError",
    "CliError",
    "Server",
    "Supervisor",
    "Target",
    "bind_tcp",
    "load_object",
    "load_target",
    "make_target",
    "run_loop",
    "run_server",
]
