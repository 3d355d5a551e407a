"""Limits and defaults of the HTTP server protocol."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from ._blocking import BlockingRunner
from ._parse import PARSERS, ParserName
from ._proxy import TrustedProxies

__all__ = ["HTTPConfig"]

# The faster parser when it is installed (the http extra installs it); h11
# alone is enough otherwise, since wsproto depends on it anyway.
_DEFAULT_PARSER: ParserName = "httptools" if importlib.util.find_spec("httptools") else "h11"


@dataclass(frozen=True)
class HTTPConfig:
    """Hold the limits and tunables of one HTTP server.

    Every size is in bytes and every timeout in seconds.  The defaults suit a
    small application server behind nothing; the docs list each one.
    """

    #: request line plus header fields; past it the answer is 431
    max_header_size: int = 16 * 1024
    #: request body; past it the answer is 413 (or the connection is aborted
    #: if the response has already started)
    max_body_size: int = 16 * 1024 * 1024
    #: time to receive a complete request head once it has begun, and the
    #: first head of a new connection; past it the connection is closed
    header_timeout: float = 10.0
    #: idle time between two requests on a kept-alive connection
    keepalive_timeout: float = 5.0
    #: requests parsed but not yet answered; past it the protocol stops reading
    max_pipelined: int = 16
    #: request body bytes buffered ahead of the application before reading pauses
    body_buffer_size: int = 64 * 1024
    #: how long a closing connection keeps reading (and discarding) so that the
    #: peer sees the last response rather than a reset
    linger_timeout: float = 2.0
    #: value of the ``Server`` header; empty to send none
    server_name: str = "protoshim"
    #: largest WebSocket message accepted; a larger one is closed with 1009
    #: (for a compressed message, its inflated size: inflating stops there)
    websocket_max_message_size: int = 1024 * 1024
    #: agree to permessage-deflate (RFC 7692) when the client offers it
    websocket_compression: bool = True
    #: size of each read when streaming a static file
    file_chunk_size: int = 64 * 1024
    #: how blocking code (WSGI applications, file reads) runs; ``None`` means
    #: the loop's own ``protoshim_blocking_runner`` if it has one, else threads
    blocking_runner: BlockingRunner | None = None
    #: what parses request heads: ``"httptools"`` (llhttp, in C, with h11's
    #: grammar checked on top; the default when installed) or ``"h11"`` (pure
    #: Python); bodies are read by one strict reader whichever it is
    parser: ParserName = _DEFAULT_PARSER
    #: believe ``X-Forwarded-For``/``-Proto`` and ``Forwarded`` from a trusted
    #: peer: they set the client address and scheme the application sees
    proxy_headers: bool = False
    #: the peers trusted with those headers: comma-separated IP addresses and
    #: CIDR networks, or ``*`` for every peer
    forwarded_allow_ips: str = "127.0.0.1"
    #: connections (or requests in progress) one server takes at once; past
    #: it a request is answered 503; ``None`` for no limit
    limit_concurrency: int | None = None
    #: ``forwarded_allow_ips`` parsed, once
    trusted_proxies: TrustedProxies = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Reject limits that cannot work."""
        for name in (
            "max_header_size",
            "max_body_size",
            "max_pipelined",
            "body_buffer_size",
            "websocket_max_message_size",
            "file_chunk_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.parser not in PARSERS:
            raise ValueError(f"parser must be one of {', '.join(PARSERS)}, not {self.parser!r}")
        if self.parser == "httptools" and importlib.util.find_spec("httptools") is None:
            raise ValueError("parser 'httptools' needs the httptools package")
        for name in ("header_timeout", "keepalive_timeout", "linger_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.limit_concurrency is not None and self.limit_concurrency < 1:
            raise ValueError("limit_concurrency must be at least 1")
        try:
            trusted = TrustedProxies(self.forwarded_allow_ips)
        except ValueError as exc:
            raise ValueError(f"forwarded_allow_ips: {exc}") from None
        # Frozen, so set through object: it is derived, never given.
        object.__setattr__(self, "trusted_proxies", trusted)
