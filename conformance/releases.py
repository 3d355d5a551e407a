"""Framework releases to test on, and nox sessions that run a project's tests on each.

In a project's ``noxfile.py``::

    import nox
    from protoshim.conformance.releases import nox_matrix

    nox_matrix(install=[".[test]", "protoshim[all,test]"], command=["pytest", "tests"])

defines two sessions:

* ``protoshim_matrix``, parametrised over :data:`RELEASES` (each framework at
  the oldest release protoshim supports and the newest the index offers):
  ``nox -s protoshim_matrix`` runs them all, ``nox -s
  "protoshim_matrix(twisted-oldest)"`` one;
* ``protoshim_grid``, which draws the grid of their reports the way
  ``protoshim matrix`` does and fails on a portability bug.

This module imports only the standard library (and nox, when asked for
sessions), so a noxfile can load it before protoshim is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["RELEASES", "Release", "nox_matrix"]


@dataclass(frozen=True)
class Release:
    """A framework at one release."""

    framework: str
    label: str  # "oldest", "newest", "stdlib" or a pinned version
    requirement: str | None  # what pip installs; None for the stdlib
    pyuv: bool = False  # needs protoshim's patched pyuv build

    @property
    def id(self) -> str:
        """Name the release, e.g. ``twisted-oldest``."""
        return f"{self.framework}-{self.label}"


#: The oldest release of each framework that installs and passes on Python
#: 3.11, and the newest the index offers at run time.
RELEASES: tuple[Release, ...] = (
    Release("asyncio", "stdlib", None),
    Release("selectors", "stdlib", None),
    # uvloop's known failures (adapters/asyncio) are those of this release;
    # releases before it also report an empty write buffer after a write.
    Release("uvloop", "0.23.0", "uvloop==0.23.0"),
    Release("twisted", "oldest", "twisted==21.2.0"),
    Release("twisted", "newest", "twisted"),
    Release("tornado", "oldest", "tornado==6.0"),
    Release("tornado", "newest", "tornado"),
    Release("gevent", "oldest", "gevent==22.10.1"),
    Release("gevent", "newest", "gevent"),
    Release("pyuv", "1.4.0", None, pyuv=True),
)

DEFAULT_OUT = "build/protoshim-matrix"


def nox_matrix(
    *,
    install: Sequence[str],
    command: Sequence[str] = ("pytest",),
    releases: Sequence[Release] = RELEASES,
    python: str | Sequence[str] | None = None,
    name: str = "protoshim_matrix",
    out: str = DEFAULT_OUT,
) -> tuple[Any, Any]:
    """Define the matrix session and its grid session in the calling noxfile.

    ``install`` is what ``session.install`` gets (the project and protoshim);
    ``command`` is the pytest command, to which ``--framework`` and the
    report are appended.  Returns the two session functions.
    """
    import nox

    reports = f"{out}/reports"

    @nox.session(name=name, python=python)
    @nox.parametrize("release", list(releases), ids=[release.id for release in releases])
    def run_release(session: Any, release: Release) -> None:
        session.install(*install)
        if release.requirement:
            session.install(release.requirement)
        if release.pyuv:
            session.run("python", "-m", "protoshim", "install-pyuv", "--quiet")
        # Several Pythons make several columns per release.
        several = python is not None and not isinstance(python, str)
        report = f"{reports}/{release.id}{f'-py{session.python}' if several else ''}.json"
        # A failing test is a cell of the grid, not a failed session; a run
        # that collects nothing (5) or breaks (2, 3, 4) is.
        session.run(
            *command,
            *("--framework", release.framework, "--conformance-report", report),
            *session.posargs,
            success_codes=[0, 1],
        )

    # Defined second, so a plain `nox` runs it after the releases.
    @nox.session(name=f"{name.removesuffix('_matrix')}_grid", python=_first(python))
    def grid(session: Any) -> None:
        session.install(*install)
        session.run("protoshim", "matrix", "--from-reports", out)

    return run_release, grid


def _first(python: str | Sequence[str] | None) -> str | None:
    if python is None or isinstance(python, str):
        return python
    return python[0]
