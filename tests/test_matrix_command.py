"""A project's own, unchanged tests on every framework: ``--framework`` and ``protoshim matrix``.

Each check builds a small project in a temporary folder and runs pytest or
the command in a subprocess, as a library author would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import protoshim
from protoshim.conformance.switch import describe_loop

FRAMEWORKS = sorted(protoshim.frameworks())
TIMEOUT = 300

#: One test per way a project's tests get a loop; each says which one it got.
LOOP_TESTS = """
import asyncio
import unittest

import pytest


def loop_name() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__qualname__}"


@pytest.mark.asyncio
async def test_pytest_asyncio() -> None:
    print("ran on", loop_name())


@pytest.mark.anyio
async def test_anyio() -> None:
    print("ran on", loop_name())


class IsolatedCase(unittest.IsolatedAsyncioTestCase):
    async def test_isolated(self) -> None:
        print("ran on", loop_name())


def test_asyncio_run() -> None:
    async def main() -> str:
        return loop_name()

    print("ran on", asyncio.run(main()))
"""

CONFTEST = """
import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
"""

#: pytest's own settings for the project, so this repository's do not apply.
PYTEST_INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""


def _project(root: Path, **tests: str) -> Path:
    (root / "tests").mkdir(parents=True)
    (root / "pytest.ini").write_text(PYTEST_INI)
    (root / "tests" / "conftest.py").write_text(CONFTEST)
    for name, source in tests.items():
        (root / "tests" / f"{name}.py").write_text(textwrap.dedent(source))
    return root


def _loop_names(framework: str) -> tuple[str, str]:
    """Return the loop's class, as the tests print it, and as the report names it."""
    loop = protoshim.new_event_loop(framework)
    try:
        return f"{type(loop).__module__}.{type(loop).__qualname__}", describe_loop(loop)
    finally:
        loop.close()


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False
    )


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_unchanged_tests_run_on_the_framework_loop(framework: str, tmp_path: Path) -> None:
    project = _project(tmp_path, test_loops=LOOP_TESTS)
    report = tmp_path / "report.json"
    done = _run(
        [
            *(sys.executable, "-m", "pytest", "tests", "-s", "-p", "no:cacheprovider"),
            *("--framework", framework, "--conformance-report", str(report)),
        ],
        project,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    printed, described = _loop_names(framework)
    # Each test printed the loop it ran on; the report says the same.
    assert done.stdout.count(f"ran on {printed}") == 4, done.stdout
    results = json.loads(report.read_text())["results"]
    assert sorted(results) == [
        "tests/test_loops.py::IsolatedCase::test_isolated",
        "tests/test_loops.py::test_anyio",
        "tests/test_loops.py::test_asyncio_run",
        "tests/test_loops.py::test_pytest_asyncio",
    ]
    for test, result in results.items():
        assert result["outcome"] == "passed", test
        assert result["loops"] == [described], test
    assert f"4 of 4 tests created a {framework} loop" in done.stdout


def test_without_framework_the_tests_keep_the_stdlib_loop(tmp_path: Path) -> None:
    project = _project(tmp_path, test_loops=LOOP_TESTS)
    done = _run([sys.executable, "-m", "pytest", "tests", "-s", "-p", "no:cacheprovider"], project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ran on protoshim" not in done.stdout
    assert done.stdout.count("ran on asyncio.") == 4, done.stdout


PORTABLE = """
import asyncio


def test_sleeps() -> None:
    assert asyncio.run(asyncio.sleep(0.01, result=3)) == 3
"""

STDLIB_ONLY = """
import asyncio


def test_assumes_the_stdlib_loop() -> None:
    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert asyncio.run(main()).startswith("asyncio"), "not the stdlib loop"


def test_broken_everywhere() -> None:
    assert False, "the project's own bug"
"""


def _matrix(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A bounded run: a hang ends as a failure that shows the runs' logs.
    return _run([sys.executable, "-m", "protoshim", "matrix", "--timeout", "120", *args], project)


def _explain(done: subprocess.CompletedProcess[str], out: Path) -> str:
    logs = "".join(log.read_text() for log in sorted((out / "logs").glob("*.log")))
    return f"{done.stdout}\n{done.stderr}\n{logs}"


def test_matrix_draws_the_grid_and_passes_a_portable_project(tmp_path: Path) -> None:
    project = _project(tmp_path, test_portable=PORTABLE)
    done = _matrix(project, "--frameworks", "selectors", "--", "pytest", "tests")
    out = project / "build" / "protoshim-matrix"
    assert done.returncode == 0, _explain(done, out)
    grid = (out / "matrix.md").read_text()
    assert "| `tests/test_portable.py::test_sleeps` | pass | pass |" in grid
    assert _loop_names("selectors")[1] in grid
    html = (out / "matrix.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "test_sleeps" in html
    assert "<rect" in (out / "matrix.svg").read_text()
    assert "selectors done (1)" in done.stdout  # the progress line


def test_matrix_blames_a_framework_only_for_what_passes_on_asyncio(tmp_path: Path) -> None:
    project = _project(tmp_path, test_stdlib_only=STDLIB_ONLY)
    out = tmp_path / "grid"
    done = _matrix(project, "--frameworks", "selectors", "--out", str(out), "--", "pytest")
    assert done.returncode == 1, _explain(done, out)
    assert (
        "portability bug on selectors: tests/test_stdlib_only.py::test_assumes_the_stdlib_loop"
        in done.stderr
    )
    assert "test_broken_everywhere" not in done.stderr.split("portability bug", 1)[1]
    assert "1 test(s) fail on asyncio too" in done.stderr
    grid = (out / "matrix.md").read_text()
    assert "not the stdlib loop" in grid and "the project's own bug" in grid

    # The same reports, drawn again without running anything.
    again = _matrix(project, "--from-reports", str(out))
    assert again.returncode == 1
    assert "portability bug on selectors" in again.stderr


def test_matrix_fails_when_a_run_collects_nothing(tmp_path: Path) -> None:
    project = _project(tmp_path)
    done = _matrix(project, "--frameworks", "selectors", "--", "pytest", "tests")
    assert done.returncode == 1
    assert "selectors: no test ran" in done.stderr


HANGS = """
import time


def test_hangs() -> None:
    time.sleep(60)
"""


def test_matrix_kills_a_run_that_outlives_its_timeout(tmp_path: Path) -> None:
    project = _project(tmp_path, test_hangs=HANGS)
    args = ["--frameworks", "selectors", "--timeout", "2", "--", "pytest", "tests"]
    done = _run([sys.executable, "-m", "protoshim", "matrix", *args], project)
    assert done.returncode == 1
    assert "asyncio: killed by --timeout" in done.stderr
    assert "selectors: killed by --timeout" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--", "ls"], "the command must run pytest"),
        (["--timeout", "0", "--", "pytest"], "--timeout must be positive"),
        ([], "give the pytest command after --"),
        (["--frameworks", "nope", "--", "pytest"], "not installed: nope"),
        (["--jobs", "0", "--", "pytest"], "--jobs must be at least 1"),
    ],
)
def test_matrix_usage_errors_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    done = _matrix(tmp_path, *args)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("protoshim matrix: "), done.stderr
    assert message in lines[0]
    assert "Traceback" not in done.stderr


NOXFILE = """
import nox
from protoshim.conformance.releases import nox_matrix

nox_matrix(install=["protoshim"], command=["pytest", "tests"])
"""


def test_nox_matrix_defines_a_session_per_release_and_the_grid(tmp_path: Path) -> None:
    from protoshim.conformance.releases import RELEASES

    (tmp_path / "noxfile.py").write_text(NOXFILE)
    done = _run([sys.executable, "-m", "nox", "--list", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    sessions = [entry["session"] for entry in json.loads(done.stdout)]
    assert sessions == [f"protoshim_matrix({r.id})" for r in RELEASES] + ["protoshim_grid"]
