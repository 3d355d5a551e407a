"""Sessions: the conformance matrix, unit tests, lint, type check, and the grid.

``nox`` with no arguments runs everything CI runs, on Python 3.11 and 3.13
(built first if this machine lacks it), and writes its reports under build/
only.  ``nox -s conformance`` runs the whole matrix;
``nox -s "conformance(twisted-oldest)"`` one cell,
``nox -s "conformance(twisted-newest-py3.13)"`` one on 3.13.  ``nox -s matrix``
and ``nox -s reliability_table`` rewrite the tracked CONFORMANCE.md, its SVG
and the README's reliability table from the last run's reports.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nox

# build_python comes first: the 3.13 sessions need its interpreter.
nox.options.sessions = [
    "build_python",
    "lint",
    "typecheck",
    "tests",
    "conformance",
    "grid",
    "reliability",
    "library",
]
nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = False

ROOT = Path(__file__).parent
MATRIX_DIR = ROOT / "build" / "conformance"
PYTHON = "3.11"
#: The other Python CI tests on; tools/build-python.sh builds it where missing.
NEW_PYTHON = "3.13"


@dataclass(frozen=True)
class Cell:
    """One column of the conformance matrix: a framework at one release."""

    framework: str
    label: str  # "oldest", "newest", or a variant name
    requirement: str | None  # what pip installs; None for the stdlib
    pyuv: bool = False  # needs the patched pyuv build
    pytest_prefix: tuple[str, ...] = ()  # runs pytest under a launcher
    python: str = PYTHON

    @property
    def id(self) -> str:
        # Reports are named after the id, so the matrix tells the Pythons apart.
        cell = f"{self.framework}-{self.label}"
        return cell if self.python == PYTHON else f"{cell}-py{self.python}"


def _load_releases() -> Any:
    # The package's own list, loaded from its file: nox runs before (and
    # outside) the environments that install protoshim.
    spec = importlib.util.spec_from_file_location(
        "_protoshim_releases", ROOT / "conformance" / "releases.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


RELEASES = _load_releases().RELEASES

# Each framework at its oldest and newest release (conformance/releases.py),
# gevent once more under monkey-patching, and on 3.13 the newest only.
CELLS = [
    *(Cell(r.framework, r.label, r.requirement, pyuv=r.pyuv) for r in RELEASES),
    Cell(
        "gevent",
        "monkey",
        "gevent",
        pytest_prefix=("python", "-m", "gevent.monkey", "--module"),
    ),
    # On 3.13, the stdlib loops and each framework's newest release only:
    # gevent 22.10.1 has no wheel for 3.13, and the oldest releases are
    # there to pin down the lower bounds, which 3.11 does.
    Cell("asyncio", "stdlib", None, python=NEW_PYTHON),
    Cell("selectors", "stdlib", None, python=NEW_PYTHON),
    Cell("uvloop", "newest", "uvloop", python=NEW_PYTHON),
    Cell("twisted", "newest", "twisted", python=NEW_PYTHON),
    Cell("tornado", "newest", "tornado", python=NEW_PYTHON),
    Cell("gevent", "newest", "gevent", python=NEW_PYTHON),
    Cell("pyuv", "1.4.0", None, pyuv=True, python=NEW_PYTHON),
]


def _install_project(session: nox.Session, *extras: str) -> None:
    session.install("-e", f".[{','.join(('test', *extras))}]")


def _install_pyuv(session: nox.Session) -> None:
    session.run("python", "-m", "protoshim._pyuv_build")


def _install_cell(session: nox.Session, cell: Cell) -> None:
    """Install the project with HTTP, and the framework release ``cell`` names."""
    _install_project(session, "http")
    if cell.requirement:
        session.install(cell.requirement)
    if cell.pyuv:
        _install_pyuv(session)


@nox.session(python=False)
def build_python(session: nox.Session) -> None:
    """Build Python 3.13 with tools/build-python.sh where missing (once per machine)."""
    found = shutil.which(f"python{NEW_PYTHON}")
    probe = "import test.test_asyncio"  # the CPython mixins need the `test` package
    if (
        found
        and subprocess.run([found, "-c", probe], capture_output=True, check=False).returncode == 0
    ):
        session.log(f"python{NEW_PYTHON}: {found}")
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        session.run("bash", "tools/build-python.sh", NEW_PYTHON, external=True)
    elif found:  # the CPython mixins skip, saying why
        session.warn(f"{found} has no `test` package; the CPython asyncio mixins will skip")
    else:
        session.error(
            f"python{NEW_PYTHON} is missing; building it needs root and apt-get: "
            f"run `sudo tools/build-python.sh {NEW_PYTHON}` or install Python {NEW_PYTHON}"
        )


@nox.session
@nox.parametrize(
    ("python", "cell"), [(cell.python, cell) for cell in CELLS], ids=[cell.id for cell in CELLS]
)
def conformance(session: nox.Session, cell: Cell) -> None:
    """Run the conformance suite on one framework release."""
    _apt_install(BROWSER)
    _install_cell(session, cell)
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


@nox.session(python=[PYTHON, NEW_PYTHON])
def tests(session: nox.Session) -> None:
    """Run the unit tests, with every framework installed."""
    # tests/test_nginx.py puts a real nginx, terminating TLS, in front of the server.
    _apt_install({"nginx": "nginx-light", "openssl": "openssl"})
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


def _render_matrix(session: nox.Session, markdown: Path, svg: Path) -> None:
    """Render the conformance reports; fail if one is missing or a cell failed."""
    session.install("-e", ".")
    session.run(
        *("python", "-m", "protoshim.conformance.matrix", str(MATRIX_DIR)),
        *("--markdown", str(markdown), "--svg", str(svg), "--expect", str(len(CELLS))),
        # anyio's suite is a session of its own; its last reports are summarised.
        *("--anyio", str(ANYIO_DIR / "reports")),
    )


@nox.session(python=PYTHON)
def grid(session: nox.Session) -> None:
    """Render the conformance matrix under build/, leaving the tracked copies alone."""
    _render_matrix(session, MATRIX_DIR / "CONFORMANCE.md", MATRIX_DIR / "conformance-matrix.svg")


@nox.session(python=PYTHON, default=False)
def matrix(session: nox.Session) -> None:
    """Rewrite CONFORMANCE.md and docs/conformance-matrix.svg from the last run's reports."""
    _render_matrix(session, ROOT / "CONFORMANCE.md", ROOT / "docs" / "conformance-matrix.svg")


@nox.session(python=PYTHON, default=False)
def reliability_table(session: nox.Session) -> None:
    """Rewrite the README's reliability table from the last run's reports."""
    found = len(list(RELIABILITY_DIR.glob("*.json")))
    if found < len(RELIABILITY_CELLS):
        session.error(
            f"{found} of {len(RELIABILITY_CELLS)} reliability reports in {RELIABILITY_DIR}; "
            "run `nox -s reliability` first"
        )
    session.install("-e", ".")
    session.run(
        *("python", "-m", "protoshim.conformance.reliability.table", str(RELIABILITY_DIR)),
        *("--readme", "README.md", "--expect", str(len(RELIABILITY_CELLS))),
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
    # The servers protoshim is measured against, at their fastest (uvicorn
    # with httptools and websockets), and the tools that draw and profile.
    session.install(
        *("uvicorn", "httptools", "websockets", "daphne", "hypercorn"),
        *("matplotlib", "py-spy"),
    )
    session.run("python", "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider")
    session.run("python", "-m", "benchmarks", *session.posargs)


RELIABILITY_DIR = ROOT / "build" / "reliability"
# One release per framework (the newest where the matrix has several): these
# tests check behaviour under faults and load, not compatibility.
RELIABILITY_CELLS = list(
    {c.framework: c for c in CELLS if not c.pytest_prefix and c.python == PYTHON}.values()
)


@nox.session(python=PYTHON)
@nox.parametrize("cell", RELIABILITY_CELLS, ids=[cell.framework for cell in RELIABILITY_CELLS])
def reliability(session: nox.Session, cell: Cell) -> None:
    """Run the reliability tests (faults, load, hostile input) on one framework."""
    _install_cell(session, cell)
    RELIABILITY_DIR.mkdir(parents=True, exist_ok=True)
    report = RELIABILITY_DIR / f"{cell.framework}.json"
    report.unlink(missing_ok=True)
    args = ["conformance/reliability", "--framework", cell.framework]
    session.run("pytest", *args, "--reliability-report", str(report), *session.posargs)
    # Once every framework has a report, the table is rendered under build/;
    # `nox -s reliability_table` puts it in the README.
    session.run(
        "python",
        "-m",
        "protoshim.conformance.reliability.table",
        str(RELIABILITY_DIR),
        "--markdown",
        str(RELIABILITY_DIR / "RELIABILITY.md"),
        "--expect",
        str(len(RELIABILITY_CELLS)),
    )


AUTOBAHN_DIR = ROOT / "build" / "autobahn"


# Every Autobahn case, compression included, on one release per framework.
# About 13 minutes a framework, most of it compressing 1000 large messages
# per case in the 12.* and 13.* groups; the conformance suite runs a quick
# selection (conformance/http/test_autobahn.py), so this is not a default.
@nox.session(python=PYTHON, default=False)
@nox.parametrize("cell", RELIABILITY_CELLS, ids=[cell.framework for cell in RELIABILITY_CELLS])
def autobahn(session: nox.Session, cell: Cell) -> None:
    """Run every Autobahn TestSuite case against the WebSocket echo handler on one framework."""
    _install_cell(session, cell)
    report = AUTOBAHN_DIR / f"{cell.framework}.json"
    session.run(
        *("python", "-m", "protoshim.conformance.thirdparty.autobahn"),
        *("--framework", cell.framework, "--report", str(report), *session.posargs),
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


# A real asyncio protocol library's own tests, unmodified, from its sdist,
# run through `protoshim matrix` as a library author would: the proof that
# "verify everywhere" works on code nobody here wrote.
LIBRARY = "aioftp==0.28.3"
LIBRARY_TEST_REQUIREMENTS = ("async_timeout>=4", "pytest-mock", "pytest-cov", "siosocks", "trustme")
LIBRARY_DIR = ROOT / "build" / "library"


@nox.session(python=PYTHON)
def library(session: nox.Session) -> None:
    """Run aioftp's own test suite on every framework with `protoshim matrix`."""
    _install_project(session, "all")
    _install_pyuv(session)
    shutil.rmtree(LIBRARY_DIR, ignore_errors=True)
    sdists = LIBRARY_DIR / "sdist"
    session.run(
        *("python", "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"),
        *("--dest", str(sdists), LIBRARY),
    )
    (archive,) = sdists.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(sdists, filter="data")
    source = archive.with_name(archive.name.removesuffix(".tar.gz"))
    # Its tests import the installed package (importlib mode, src layout).
    session.install("--no-deps", str(source))
    session.install(*LIBRARY_TEST_REQUIREMENTS, "pytest-timeout")
    session.chdir(source)
    session.run(
        *("protoshim", "matrix", "--out", str(LIBRARY_DIR / "grid"), "--timeout", "900"),
        *("--title", f"{LIBRARY.replace('==', ' ')}'s own tests on every framework"),
        # Its pytest settings ask for coverage and stop at the first failure;
        # the grid wants every test, and a hang must end as a failure.
        *("--", "pytest", "tests", "--no-cov", "--maxfail=1000000", "--timeout=60", "-q"),
        *session.posargs,
    )


@nox.session(python=PYTHON, default=False)
def library_docs(session: nox.Session) -> None:
    """Copy the last `nox -s library` grid into docs/library-matrix.md."""
    grid = LIBRARY_DIR / "grid" / "matrix.md"
    if not grid.exists():
        session.error(f"no grid at {grid}; run `nox -s library` first")
    shutil.copy(grid, ROOT / "docs" / "library-matrix.md")
