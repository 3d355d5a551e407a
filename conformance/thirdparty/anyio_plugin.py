"""Run anyio's own tests on the loop of ``--framework``.

Load with ``-p protoshim.conformance.thirdparty.anyio_plugin`` from the root
of anyio's source distribution.  anyio's tests take their event loop from the
``anyio_backend`` parameter: ``("asyncio", {"debug": True})`` and variants
for uvloop, eager tasks and trio.  Its ``tests/conftest.py`` defines that
fixture, and a conftest fixture always wins over a plugin's, so this plugin
does not compete with it; it rewrites the parameter instead:

* tests run with the plain asyncio parameter get the same options plus
  ``loop_factory=protoshim.loop_factory(FRAMEWORK)``;
* tests of trio, or of a loop anyio's conftest picks itself (uvloop, eager
  tasks), are deselected, and so are tests that take no ``anyio_backend``:
  they never run on the loop under test;
* where ``localhost`` has no IPv6 address (a hosts file without ``::1
  localhost``), tests parametrised with ``AF_INET6`` are deselected: anyio
  binds them to ``localhost``, so they fail on every loop, and the sockets
  they leak warn in whichever later test the garbage collector runs.

Whether a test gets its backend from the conftest fixture or from its own
``@pytest.mark.parametrize("anyio_backend", ...)``, pytest hands the fixture
``item.callspec.params["anyio_backend"]``, so that is the one value changed.

The kept tests are recorded by protoshim's conformance plugin, so
``--conformance-report PATH`` writes the usual report, keyed by node id.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

import protoshim
from protoshim.conformance.plugin import record_outside_test

_BACKEND = "anyio_backend"
_FACTORY = pytest.StashKey[Any]()


def pytest_configure(config: pytest.Config) -> None:
    """Build the loop factory of ``--framework`` once."""
    framework: str | None = config.getoption("framework")
    if framework is None:
        raise pytest.UsageError("the anyio plugin needs --framework NAME")
    config.stash[_FACTORY] = protoshim.loop_factory(framework)


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say when this host cannot run anyio's IPv6 tests."""
    if _localhost_has_ipv6():
        return None
    return "anyio suite: localhost has no IPv6 address here, so AF_INET6 tests are deselected"


def _localhost_has_ipv6() -> bool:
    try:
        return bool(socket.getaddrinfo("localhost", 0, socket.AF_INET6, socket.SOCK_STREAM))
    except OSError:
        return False


def _needs_ipv6(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    return any(
        isinstance(value, socket.AddressFamily) and value == socket.AF_INET6 for value in params
    )


def _asyncio_options(item: pytest.Item) -> dict[str, Any] | None:
    """Return the options of a plain asyncio parameter, or None for any other."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or _BACKEND not in callspec.params:
        return None
    backend = callspec.params[_BACKEND]
    name, options = (backend, {}) if isinstance(backend, str) else backend
    if name != "asyncio" or not isinstance(options, dict) or "loop_factory" in options:
        return None
    return options


def _bind(item: pytest.Item) -> bool:
    """Point a plain asyncio test at the loop under test; False if it is not one."""
    options = _asyncio_options(item)
    if options is None:
        return False
    factory = item.config.stash[_FACTORY]
    callspec = getattr(item, "callspec")  # noqa: B009  # checked by _asyncio_options
    callspec.params[_BACKEND] = ("asyncio", {**options, "loop_factory": factory})
    return True


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep and bind the plain asyncio tests; deselect the rest."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    ipv6 = _localhost_has_ipv6()
    for item in items:
        (kept if (ipv6 or not _needs_ipv6(item)) and _bind(item) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept
    for item in kept:
        record_outside_test(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Bind tests that anyio's plugin adds after collection, or skip them."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or _BACKEND not in callspec.params:
        return
    backend = callspec.params[_BACKEND]
    if isinstance(backend, tuple) and backend[1].get("loop_factory") is item.config.stash[_FACTORY]:
        return
    if not _bind(item):
        pytest.skip("not the plain asyncio backend: does not run on the loop under test")
    record_outside_test(item)
