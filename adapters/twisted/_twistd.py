"""The ``twistd`` plugin: ``twistd -n protoshim --port 8081 MODULE:FACTORY``.

It serves a PEP 3156 protocol factory through a Twisted strports service, on
the loop attached to twistd's reactor; logging, daemonising, pid files and
privileges are left to twistd.  Twisted finds plugins only in
``twisted/plugins`` directories on ``sys.path``; the wheel installs the
drop-in ``twisted/plugins/protoshim_twistd.py`` next to Twisted's own, and
``python -m protoshim.adapters.twisted`` finds it in an editable checkout.
"""

from __future__ import annotations

import asyncio
import pkgutil
from collections.abc import Callable
from typing import Any

from twisted.application import service, strports
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer  # type: ignore[import-untyped]

from ._bridge import ProtocolFactory

__all__ = ["Options", "ServiceMaker", "load_factory", "serviceMaker"]


def load_factory(spec: str) -> Callable[[], asyncio.BaseProtocol]:
    """Import ``MODULE:NAME`` (NAME may be dotted) and return that callable."""
    if ":" not in spec:
        raise usage.UsageError(f"expected MODULE:FACTORY, got {spec!r}")
    try:
        obj: Any = pkgutil.resolve_name(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise usage.UsageError(f"cannot load {spec!r}: {exc}") from None
    if not callable(obj):
        raise usage.UsageError(f"{spec} is not callable")
    factory: Callable[[], asyncio.BaseProtocol] = obj
    return factory


class Options(usage.Options):
    """Command-line options of ``twistd protoshim``."""

    synopsis = "[--port DESCRIPTION] MODULE:FACTORY"
    longdesc = (
        "Serve a PEP 3156 (asyncio) protocol factory. --port takes a port number "
        "or any Twisted server endpoint description (tcp:8081:interface=127.0.0.1, "
        "unix:/run/echo.sock, ssl:8443:privateKey=key.pem, ...)."
    )
    optParameters = [  # noqa: RUF012 - Twisted's usage.Options reads this class attribute
        ["port", "p", "tcp:8081", "port number or server endpoint description"],
    ]

    def parseArgs(self, factory: str) -> None:  # type: ignore[override]
        """Take the single MODULE:FACTORY argument."""
        self["factory"] = load_factory(factory)
        self["factory_name"] = factory

    def postOptions(self) -> None:
        """Accept a bare port number, as ``--port 8081``."""
        port = str(self["port"])
        if port.isdigit():
            self["port"] = f"tcp:{port}"


@implementer(service.IServiceMaker, IPlugin)
class ServiceMaker:
    """Make the strports service that serves the protocol factory."""

    tapname = "protoshim"
    description = "Serve a PEP 3156 (asyncio) protocol factory with protoshim."
    options = Options

    def makeService(self, options: Options) -> Any:
        """Build the service; the loop is attached when the first connection arrives."""
        factory: Any = ProtocolFactory(options["factory"])
        return strports.service(options["port"], factory)


serviceMaker = ServiceMaker()
