"""Sessions: the conformance matrix, unit tests, lint, type check, and the grid.

``nox`` with no arguments runs everything CI runs.  ``nox -s conformance``
runs the whole matrix; ``nox -s "conformance(twisted-oldest)"`` one cell.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "conformance", "matrix", "reliability"]
nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = False

ROOT = Path(__file__).parent
MATRIX_DIR = ROOT / ".matrix"
PYTHON = "3.11"


@dataclass(frozen=True)
class Cell:
    """One column of the conformance matrix: a framework at one release."""

    framework: str
    label: str  # "oldest", "newest", or a variant name
    requirement: str | None  # what pip installs; None for the stdlib
    pyuv: bool = False  # needs the patched pyuv build
    pytest_prefix: tuple[str, ...] = ()  # runs pytest under a launcher

    @property
    def id(self) -> str:
        return f"{self.framework}-{self.label}"


# The oldest release of each framework that installs and passes on Python
# 3.11, and the newest the index offers at run time.
CELLS = [
    Cell("asyncio", "stdlib", None),
    Cell("selectors", "stdlib", None),
    # uvloop's known failures (adapters/asyncio) are those of this release;
    # releases before it also report an empty write buffer after a write.
    Cell("uvloop", "0.23.0", "uvloop==0.23.0"),
    Cell("twisted", "oldest", "twisted==21.2.0"),
    Cell("twisted", "newest", "twisted"),
    Cell("tornado", "oldest", "tornado==6.0"),
    Cell("tornado", "newest", "tornado"),
    Cell("gevent", "oldest", "gevent==22.10.1"),
    Cell("gevent", "newest", "gevent"),
    Cell(
        "gevent",
        "monkey",
        "gevent",
        pytest_prefix=("python", "-m", "gevent.monkey", "--module"),
    ),
    Cell("pyuv", "1.4.0", None, pyuv=True),
]


def _install_project(session: nox.Session, *extras: str) -> None:
    session.install("-e", f".[{','.join(('test', *extras))}]")


def _install_pyuv(session: nox.Session) -> None:
    session.run("python", "-m", "protoshim._pyuv_build")


@nox.session(python=PYTHON)
@nox.parametrize("cell", CELLS, ids=[cell.id for cell in CELLS])
def conformance(session: nox.Session, cell: Cell) -> None:
    """Run the conformance suite on one framework release."""
    _apt_install(BROWSER)
    _install_project(session, "http")
    if cell.requirement:
        session.install(cell.requirement)
    if cell.pyuv:
        _install_pyuv(session)
    MATRIX_DIR.mkdir(exist_ok=True)
    report = MATRIX_DIR / f"{cell.id}.json"
    report.unlink(missing_ok=True)
    args = [
        "conformance",
        "--framework",
        cell.framework,
        "--conformance-report",
        str(report),
        *session.posargs,
    ]
    # pytest exits 5 when it collects nothing: that is a failure here too.
    if cell.pytest_prefix:
        session.run(*cell.pytest_prefix, "pytest", *args, success_codes=[0])
    else:
        session.run("pytest", *args, success_codes=[0])


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the unit tests, with every framework installed."""
    _install_project(session, "all")
    _install_pyuv(session)
    session.run("pytest", "tests", *session.posargs, success_codes=[0])
    # The conformance plugin's own checks (not named test_*, so the suite
    # never collects them as conformance tests).
    session.run("pytest", "conformance/check_plugin.py", success_codes=[0])


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "--diff", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Check types with mypy --strict over the package and this file."""
    _install_project(session, "all")
    _install_pyuv(session)
    session.install("mypy", "nox")
    session.run("mypy", "-p", "protoshim")
    session.run("mypy", "noxfile.py")


@nox.session(python=PYTHON)
def matrix(session: nox.Session) -> None:
    """Gather the conformance reports into CONFORMANCE.md and an SVG grid."""
    session.install("-e", ".")
    session.run(
        "python",
        "-m",
        "protoshim.conformance.matrix",
        str(MATRIX_DIR),
        "--markdown",
        "CONFORMANCE.md",
        "--svg",
        "docs/conformance-matrix.svg",
        "--expect",
        str(len(CELLS)),
    )


@nox.session(python=PYTHON, default=False)
def serve(session: nox.Session) -> None:
    """Install everything and start the demo on the default framework."""
    _install_project(session, "all")
    session.run("protoshim", "demo", *session.posargs)


#: Debian packages for the browser test, keyed by the program each provides.
BROWSER = {"chromium": "chromium", "chromedriver": "chromium-driver"}


def _apt_install(programs: dict[str, str]) -> None:
    """Install the Debian packages of missing programs (CI machines start bare)."""
    missing = [package for program, package in programs.items() if not shutil.which(program)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"not root or no apt-get: the tests needing {missing} will skip")
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Benchmark protoshim against each framework's own code (``-- --quick``: a short check)."""
    _apt_install({"wrk": "wrk", "gcc": "gcc"})
    _install_project(session, "all")
    _install_pyuv(session)
    session.install("uvicorn", "matplotlib", "py-spy")
    session.run("python", "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider")
    session.run("python", "-m", "benchmarks", *session.posargs)


RELIABILITY_DIR = ROOT / "build" / "reliability"
# One release per framework (the newest where the matrix has several): these
# tests check behaviour under faults and load, not compatibility.
RELIABILITY_CELLS = list({c.framework: c for c in CELLS if not c.pytest_prefix}.values())


@nox.session(python=PYTHON)
@nox.parametrize("cell", RELIABILITY_CELLS, ids=[cell.framework for cell in RELIABILITY_CELLS])
def reliability(session: nox.Session, cell: Cell) -> None:
    """Run the reliability tests (faults, load, hostile input) on one framework."""
    _install_project(session, "http")
    if cell.requirement:
        session.install(cell.requirement)
    if cell.pyuv:
        _install_pyuv(session)
    RELIABILITY_DIR.mkdir(parents=True, exist_ok=True)
    report = RELIABILITY_DIR / f"{cell.framework}.json"
    report.unlink(missing_ok=True)
    args = ["conformance/reliability", "--framework", cell.framework]
    session.run("pytest", *args, "--reliability-report", str(report), *session.posargs)
    # Once every framework has a report, the README table is regenerated.
    session.run(
        "python",
        "-m",
        "protoshim.conformance.reliability.table",
        str(RELIABILITY_DIR),
        "--readme",
        "README.md",
        "--markdown",
        str(RELIABILITY_DIR / "RELIABILITY.md"),
        "--expect",
        str(len(RELIABILITY_CELLS)),
    )


# anyio's own test suite, from its sdist, on every adapter: a yardstick that
# nobody in this project wrote.  Slow (a few minutes per framework), so not
# in the default set yet.
ANYIO_DIR = ROOT / "build" / "anyio"


@nox.session(python=PYTHON, default=False)
def anyio(session: nox.Session) -> None:
    """Run anyio's tests on each framework; fail on any that only an adapter fails.

    ``nox -s anyio -- -f twisted -f asyncio`` runs two frameworks; pytest
    options go after a second ``--``.
    """
    _install_project(session, "all")
    _install_pyuv(session)
    suite = "protoshim.conformance.thirdparty.anyio_suite"
    session.run("python", "-m", suite, "fetch", "--workdir", str(ANYIO_DIR))
    session.install("-r", str(ANYIO_DIR / "requirements.txt"))
    session.run("python", "-m", suite, "run", "--workdir", str(ANYIO_DIR), *session.posargs)
