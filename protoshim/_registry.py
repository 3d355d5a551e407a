"""Find adapters through the ``protoshim.adapters`` entry-point group.

Every adapter, built-in or third-party, is an :class:`Adapter` descriptor
published under that group.  Descriptors are cheap to import: the framework
itself is imported only when a loop is created, so listing adapters never
pulls Twisted's reactor or gevent's hub into the process.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import importlib.util
import platform
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CAPABILITIES",
    "Adapter",
    "UnknownFramework",
    "frameworks",
    "get_adapter",
    "lazy_exports",
    "new_event_loop",
]

GROUP = "protoshim.adapters"

#: Every capability an adapter may lack.  Conformance tests ask for these by
#: name; an adapter lists the ones it cannot provide, each with its reason.
CAPABILITIES: Mapping[str, str] = {
    "tcp": "TCP servers and clients",
    "unix": "Unix stream sockets",
    "udp": "UDP datagram endpoints",
    "tls": "TLS for servers, clients and start_tls",
    "signals": "add_signal_handler / remove_signal_handler",
    "reuse_port": "create_server(reuse_port=True)",
    "fd_watchers": "add_reader / add_writer and the sock_* coroutines",
    "threads": "run_in_executor and call_soon_threadsafe",
    "subprocess": "subprocess transports",
}


class UnknownFramework(LookupError):
    """No installed adapter has the requested name."""


@dataclass(frozen=True)
class Adapter:
    """Describe one adapter: how to build its loop and what it cannot do.

    ``loop_factory`` is an ``"module:attribute"`` string naming a zero-argument
    callable that returns a new :class:`asyncio.AbstractEventLoop`.  It is
    imported on first use.  ``requires`` names the importable module whose
    presence makes the adapter available, and ``distribution`` the installed
    distribution whose version is reported.
    """

    name: str
    loop_factory: str
    requires: str
    distribution: str
    description: str = ""
    #: capability name -> the reason this adapter cannot provide it
    missing: Mapping[str, str] = field(default_factory=dict)
    #: conformance test id -> how the framework differs; run as strict xfails
    known_failures: Mapping[str, str] = field(default_factory=dict)
    #: True for the loop whose behaviour defines the expected one (the stdlib's):
    #: reports compare every other column with it.
    reference: bool = False
    #: how to install the framework, for the error when it is missing
    install: str = ""

    def available(self) -> bool:
        """Return True when the framework can be imported."""
        try:
            return importlib.util.find_spec(self.requires) is not None
        except (ImportError, ValueError):
            return False

    def version(self) -> str:
        """Return the installed version of the framework."""
        if self.distribution == "python":
            return platform.python_version()
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    def factory(self) -> Callable[[], asyncio.AbstractEventLoop]:
        """Import and return the loop factory."""
        module_name, _, attr = self.loop_factory.partition(":")
        factory: Callable[[], asyncio.AbstractEventLoop] = getattr(
            importlib.import_module(module_name), attr
        )
        return factory

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """Create a new event loop running on this framework."""
        return self.factory()()

    def supports(self, capability: str) -> bool:
        """Return True unless the adapter declares ``capability`` missing."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}")
        return capability not in self.missing


def _descriptors() -> dict[str, Adapter]:
    found: dict[str, Adapter] = {}
    for entry in importlib.metadata.entry_points(group=GROUP):
        try:
            adapter = entry.load()
        except ImportError:
            continue
        if isinstance(adapter, Adapter):
            found.setdefault(adapter.name, adapter)
    return found


def frameworks() -> dict[str, str]:
    """Map the name of every installed adapter to its framework's version."""
    return {
        name: adapter.version()
        for name, adapter in sorted(_descriptors().items())
        if adapter.available()
    }


def get_adapter(framework: str) -> Adapter:
    """Return the adapter registered as ``framework``.

    Raise :class:`UnknownFramework` with the installed names if there is none.
    """
    adapter = _descriptors().get(framework)
    known = ", ".join(frameworks()) or "none"
    if adapter is None:
        raise UnknownFramework(f"unknown framework {framework!r} (installed: {known})")
    if not adapter.available():
        hint = adapter.install or f"pip install 'protoshim[{framework}]'"
        raise UnknownFramework(
            f"framework {framework!r} is not installed: {hint} (installed: {known})"
        )
    return adapter


def new_event_loop(framework: str = "asyncio") -> asyncio.AbstractEventLoop:
    """Create a new asyncio event loop that runs on ``framework``."""
    return get_adapter(framework).new_event_loop()


def lazy_exports(package: str, names: Mapping[str, Iterable[str]]) -> Callable[[str], Any]:
    """Return a module ``__getattr__`` importing names from submodules on first use.

    ``names`` maps a relative submodule (``"._loop"``) to the names it
    provides.  An adapter package uses it so that importing the package (as
    the registry does) never imports the framework.
    """
    where = {name: module for module, provided in names.items() for name in provided}

    def __getattr__(name: str) -> Any:
        module_name = where.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
