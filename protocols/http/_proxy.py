"""Who the client is, and which scheme it used, behind a trusted reverse proxy.

A proxy in front of the server replaces the peer: the server sees the
proxy's address and plain HTTP.  The proxy says who it serves in
``X-Forwarded-For``/``X-Forwarded-Proto`` or RFC 7239 ``Forwarded``, but
anyone can send those headers, so they count only when the direct peer is a
trusted proxy.  Each proxy appends its own peer, so the list is read from
the right, and the client is the first address no trusted proxy vouches for.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

__all__ = ["TrustedProxies", "forwarded_client"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCHEMES = ("http", "https")
# RFC 7239 section 4: pair = token "=" ( token / quoted-string )
_PAIR = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')


class TrustedProxies:
    """Hold the addresses and networks whose forwarding headers are believed.

    ``spec`` is a comma-separated list (or an iterable) of IP addresses and
    CIDR networks, or ``*`` to trust every peer.  Raise :class:`ValueError`
    naming the first entry that is neither.
    """

    def __init__(self, spec: str | Iterable[str]) -> None:
        entries = spec.split(",") if isinstance(spec, str) else list(spec)
        self.everyone = False
        self._networks: list[Network] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                self.everyone = True
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"not an IP address or network: {entry!r}") from None
        self._cache: dict[str, bool] = {}

    def __contains__(self, host: object) -> bool:
        """Tell whether ``host`` (an address as text) is trusted."""
        if self.everyone:
            return True
        if not isinstance(host, str):
            return False
        known = self._cache.get(host)
        if known is None:
            known = self._check(host)
            if len(self._cache) < 1024:  # peers repeat; a flood of new ones is not remembered
                self._cache[host] = known
        return known

    def _check(self, host: str) -> bool:
        address = _parse_address(host)
        if address is None:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


def _parse_address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.partition("%")[0])  # a v6 zone is not in any network
    except ValueError:
        return None


def forwarded_client(
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    scheme: str,
    trusted: TrustedProxies,
) -> tuple[tuple[str, int] | None, str]:
    """Return the client address and scheme that the forwarding headers give.

    ``client`` and ``scheme`` are the direct peer's; they are returned as
    they are unless that peer is in ``trusted``.  ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` are read when present, else ``Forwarded``.  A
    forwarded address has no port: the port is 0, as uvicorn has it.
    """
    if client is None or client[0] not in trusted:
        return client, scheme
    for_values: list[bytes] = []
    proto_values: list[bytes] = []
    forwarded: list[bytes] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            for_values.append(value)
        elif name == b"x-forwarded-proto":
            proto_values.append(value)
        elif name == b"forwarded":
            forwarded.append(value)
    hops: list[tuple[str, str | None]]
    if for_values or proto_values:
        hops = [(host, None) for host in _items(for_values)]
        protos = _items(proto_values)
        if protos:
            scheme = _scheme(protos[-1], scheme)
    elif forwarded:
        hops = _forwarded_hops(b",".join(forwarded).decode("latin-1"))
    else:
        return client, scheme
    # Right to left: each hop was added by the proxy before it; stop at the
    # first one that no trusted proxy stands behind.
    for index in range(len(hops) - 1, -1, -1):
        host, proto = hops[index]
        if proto is not None:
            scheme = _scheme(proto, scheme)
        if _parse_address(host) is not None:
            client = (host, 0)
        elif host:
            client = None  # "unknown" or an obfuscated name: no address to give
        if index == 0 or host not in trusted:
            break
    return client, scheme


def _items(values: list[bytes]) -> list[str]:
    return [item.strip() for item in b",".join(values).decode("latin-1").split(",") if item.strip()]


def _scheme(value: str, current: str) -> str:
    value = value.strip().lower()
    return value if value in _SCHEMES else current


def _forwarded_hops(text: str) -> list[tuple[str, str | None]]:
    """Parse RFC 7239 elements into (for, proto) pairs, left to right."""
    hops: list[tuple[str, str | None]] = []
    for element in _split_elements(text):
        pairs: dict[str, str] = {}
        for match in _PAIR.finditer(element):
            value = match.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            pairs.setdefault(match.group(1).lower(), value)
        hops.append((_node_host(pairs.get("for", "")), pairs.get("proto")))
    return hops


def _split_elements(text: str) -> list[str]:
    """Split at commas outside quoted strings."""
    elements, start, quoted, escaped = [], 0, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            elements.append(text[start:index])
            start = index + 1
    elements.append(text[start:])
    return [element for element in elements if element.strip()]


def _node_host(node: str) -> str:
    """Return the address of an RFC 7239 node: ``[v6]:port``, ``v4:port`` or as is."""
    if node.startswith("["):
        return node[1:].partition("]")[0]
    if node.count(":") == 1:
        return node.partition(":")[0]
    return node
