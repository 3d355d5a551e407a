"""The access log: one line per answered request, in the combined log format.

The line is built only when the ``protoshim.access`` logger would emit it,
so a server with the access log off pays one ``isEnabledFor`` per request.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._server import HTTPExchange

__all__ = ["access_log", "log_access"]

access_log = logging.getLogger("protoshim.access")

#: Apache's ``%r``/``%{...}i`` escaping: quotes, backslashes and controls
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(32), 127)}
_ESCAPES[ord('"')] = '\\"'
_ESCAPES[ord("\\")] = "\\\\"


class _TimeCache:
    """Format the ``[day/month/year:time zone]`` field once a second."""

    def __init__(self) -> None:
        self._cached = (-1, "")

    def now(self) -> str:
        second = int(time.time())
        cached_second, value = self._cached
        if second != cached_second:
            value = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))
            self._cached = (second, value)
        return value


_TIME = _TimeCache()


def _quoted(value: bytes | None) -> str:
    if not value:
        return "-"
    return value.decode("latin-1").translate(_ESCAPES)


def log_access(exchange: HTTPExchange, status: int, size: int, parsed: bool = True) -> None:
    """Log ``exchange`` answered with ``status`` and ``size`` body bytes.

    ``parsed`` is False for a request refused before it could be parsed:
    its request line is logged as ``-``.
    """
    client = exchange.client
    request = "-"
    if parsed:
        request = "%s %s HTTP/%s" % (  # noqa: UP031 - the target stays as received
            exchange.method,
            exchange.target.decode("latin-1").translate(_ESCAPES),
            exchange.http_version,
        )
    access_log.info(
        '%s - - [%s] "%s" %d %s "%s" "%s"',
        client[0] if client is not None else "-",
        _TIME.now(),
        request,
        status,
        size or "-",
        _quoted(exchange.header(b"referer")),
        _quoted(exchange.header(b"user-agent")),
    )
