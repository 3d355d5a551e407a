"""Select the reliability tests, record their figures, and mark known bugs.

* Every test here carries the ``slow`` marker (registered below).  A run of
  the conformance suite that neither names this folder nor gives ``-m``
  deselects them, so ``pytest conformance`` stays a quick run; naming the
  folder, or ``-m slow``, runs them.
* ``--reliability-report PATH`` (given with this folder on the command line)
  writes each test's outcome and the figures it recorded with the
  ``figure`` fixture as JSON; ``python -m protoshim.conformance.reliability.table``
  turns a folder of such reports into the README table.
* ``KNOWN_BUGS`` turns a known bug of one framework into a strict xfail.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import protoshim
from protoshim.conformance.plugin import failure_line

HERE = Path(__file__).resolve().parent
SUITE = HERE.parent

#: (framework, test id) -> reason, for bugs found and not yet fixed; the
#: test id is the one of the report (``reliability/test_x::test_y[param]``).
#: A framework of ``"*"`` marks the test on every framework.
KNOWN_BUGS: dict[tuple[str, str], str] = {
    (
        "uvloop",
        "reliability/test_fd_exhaustion::test_server_backs_off_when_out_of_descriptors_and_recovers",
    ): (
        "issue 9 (descriptor exhaustion), a uvloop difference: out of descriptors, libuv "
        "accepts and resets waiting connections and logs nothing, instead of backing off"
    ),
}

Figure = Callable[..., None]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--reliability-report``."""
    parser.getgroup("protoshim-conformance").addoption(
        "--reliability-report",
        default=None,
        metavar="PATH",
        help="write the reliability tests' outcomes and figures as JSON to PATH "
        "(give conformance/reliability on the command line too)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``slow`` marker and, if asked, the report writer."""
    config.addinivalue_line(
        "markers",
        "slow: a reliability test (faults, load, hostile input); deselected from "
        "plain conformance runs, selected by naming conformance/reliability or -m slow",
    )
    path = config.getoption("reliability_report", None)
    if path and not config.pluginmanager.has_plugin("protoshim-reliability-report"):
        config.pluginmanager.register(_Report(Path(path)), "protoshim-reliability-report")


def stable_id(item: pytest.Item) -> str:
    """Name a test as the conformance report does: ``reliability/test_x::test_y``."""
    module = item.path.resolve().relative_to(SUITE).with_suffix("").as_posix()
    rest = item.nodeid.split("::", 1)[1] if "::" in item.nodeid else item.name
    return f"{module}::{rest}"


def _ours(item: pytest.Item) -> bool:
    return item.path.resolve().is_relative_to(HERE)


def _asked_for(config: pytest.Config) -> bool:
    """Tell whether this run selects the reliability tests explicitly."""
    if config.getoption("markexpr", ""):
        return True
    pyargs = bool(config.getoption("pyargs", False))
    for arg in config.args:
        target = str(arg).split("::", 1)[0]
        if pyargs and target.startswith("protoshim.conformance.reliability"):
            return True
        try:
            if Path(target).resolve().is_relative_to(HERE):
                return True
        except OSError:
            continue
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the reliability tests unless asked for; mark known bugs."""
    if not _asked_for(config):
        deselected = [item for item in items if _ours(item)]
        if deselected:
            items[:] = [item for item in items if not _ours(item)]
            config.hook.pytest_deselected(items=deselected)
        return
    framework = config.getoption("framework", None) or "asyncio"
    for item in items:
        if not _ours(item):
            continue
        test = stable_id(item)
        reason = KNOWN_BUGS.get((framework, test)) or KNOWN_BUGS.get(("*", test))
        if reason:
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.fixture
def figure(record_property: Callable[[str, object], None]) -> Figure:
    """Return ``figure(name, value, unit="", headline=False)`` to report a measured figure.

    The headline figure of a test is the one its README table cell shows.
    """

    def record(name: str, value: float | int | str, unit: str = "", headline: bool = False) -> None:
        record_property(name, {"value": value, "unit": unit, "headline": headline})

    return record


@dataclass
class _Entry:
    outcome: str = "passed"
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


class _Report:
    """Collect the reliability tests' outcomes and figures; write them at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: dict[str, str] = {}
        self.entries: dict[str, _Entry] = {}

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        if _ours(item):
            self.ids[item.nodeid] = stable_id(item)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test = self.ids.get(report.nodeid)
        if test is None:
            return
        entry = self.entries.setdefault(test, _Entry())
        for name, value in report.user_properties:
            if isinstance(value, dict):
                entry.figures[name] = value
        wasxfail = getattr(report, "wasxfail", None)
        if report.skipped:
            entry.outcome = "xfailed" if wasxfail is not None else "skipped"
            entry.reason = wasxfail if wasxfail is not None else failure_line(report)
        elif report.failed:
            if entry.outcome in ("passed", "skipped", "xfailed"):
                entry.outcome = "failed" if report.when == "call" else "error"
                entry.reason = failure_line(report)
        elif report.when == "call" and wasxfail is not None:
            entry.outcome, entry.reason = "xpassed", wasxfail

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        framework = session.config.getoption("framework", None) or "asyncio"
        adapter = protoshim.get_adapter(framework)
        document = {
            "framework": adapter.name,
            "version": adapter.version(),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "machine": f"{platform.machine()}, {_cpus()} CPU(s)",
            "results": {
                test: {"outcome": e.outcome, "reason": e.reason, "figures": e.figures}
                for test, e in sorted(self.entries.items())
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
