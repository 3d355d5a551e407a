"""WSGI applications that the reliability tests serve with ``protoshim serve``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

__all__ = ["hello", "slow"]

StartResponse = Callable[..., Any]


def hello(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """Answer every request with ``hello``."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return [b"hello\n"]


def slow(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
    """Send ``started``, sleep ``?seconds=S`` (default 1), then send ``finished``.

    The body is streamed (chunked), so a client sees the request in flight.
    """
    query = parse_qs(environ.get("QUERY_STRING", ""))
    seconds = float(query.get("seconds", ["1"])[0])
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"started\n"
    time.sleep(seconds)
    yield b"finished\n"
