"""anyio's own test suite as a yardstick: run it on every adapter and compare.

anyio's tests (from its source distribution, at a pinned release) run on the
asyncio backend with ``protoshim.loop_factory(FRAMEWORK)`` as the loop
factory, one framework per process (see :mod:`.anyio_plugin`).  Each run
writes a conformance report; then every adapter is compared with the stdlib
asyncio loop.  A test that fails on an adapter but passes on the stdlib loop
is a portability bug, and any makes the command fail.

    python -m protoshim.conformance.thirdparty.anyio_suite fetch
    pip install -r build/anyio/requirements.txt
    python -m protoshim.conformance.thirdparty.anyio_suite run [-f NAME ...] [-- PYTEST_ARGS...]
    python -m protoshim.conformance.thirdparty.anyio_suite compare

``fetch`` downloads and unpacks the sdist under ``build/anyio`` and writes
the requirements of anyio's ``test`` dependency group; ``run`` runs the
suite (reports in ``build/anyio/reports``, full output in
``build/anyio/logs``) and then compares; ``compare`` only compares.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from protoshim.conformance.matrix import load_columns, portability_bugs

__all__ = ["ANYIO_VERSION", "fetch", "main", "run_framework"]

#: The anyio release whose tests are run; its tests match its own code.
ANYIO_VERSION = "4.16.0"
#: Every framework, reference first.
FRAMEWORKS = ("asyncio", "uvloop", "selectors", "twisted", "tornado", "gevent", "pyuv")
PLUGIN = "protoshim.conformance.thirdparty.anyio_plugin"
WORKDIR = Path("build") / "anyio"
#: anyio's own per-test limit (its pyproject sets pytest-timeout to 20 s);
#: given explicitly, so that a hang on one adapter costs one test, not the run.
TEST_TIMEOUT = 20.0
#: A whole run that outlives this is killed (a hang pytest-timeout cannot break).
PROCESS_TIMEOUT = 1800.0
# pytest -q prints its progress as lines ending in "[ 42%]".
_PROGRESS = re.compile(r"\[\s*\d+%\]$")


def source_dir(workdir: Path) -> Path:
    return workdir / f"anyio-{ANYIO_VERSION}"


def fetch(workdir: Path) -> Path:
    """Download and unpack anyio's sdist (once); return its directory."""
    source = source_dir(workdir)
    if (source / "tests" / "conftest.py").is_file():
        return source
    workdir.mkdir(parents=True, exist_ok=True)
    archive = workdir / f"anyio-{ANYIO_VERSION}.tar.gz"
    if not archive.is_file():
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:"),
                *("--no-deps", f"anyio=={ANYIO_VERSION}", "--dest", str(workdir)),
            ],
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(workdir, filter="data")
    return source


def requirements(source: Path) -> list[str]:
    """Return what the tests need: anyio itself and its ``test`` dependency group."""
    with (source / "pyproject.toml").open("rb") as file:
        groups = tomllib.load(file).get("dependency-groups", {})
    # Entries are PEP 508 strings; an {include-group} table would be a new
    # layout this pinned release does not use.
    group = [" ".join(entry.split()) for entry in groups.get("test", []) if isinstance(entry, str)]
    return [f"anyio=={ANYIO_VERSION}", *group]


def run_framework(
    framework: str,
    workdir: Path,
    pytest_args: Sequence[str] = (),
    test_timeout: float = TEST_TIMEOUT,
    process_timeout: float = PROCESS_TIMEOUT,
) -> bool:
    """Run the suite on one framework; return True if it wrote its report."""
    source = source_dir(workdir)
    report = (workdir / "reports" / f"{framework}.json").resolve()
    log = workdir / "logs" / f"{framework}.log"
    report.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        PLUGIN,
        "-p",
        "no:cacheprovider",
        # anyio's suite does not use pytest-asyncio; installed with protoshim's
        # test extra, it would only warn about its own settings.
        "-p",
        "no:asyncio",
        "--framework",
        framework,
        "--conformance-report",
        str(report),
        f"--timeout={test_timeout:g}",
        "-q",
        *pytest_args,
    ]
    print(f"[{framework}] {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(
            command,
            cwd=source,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # so a kill reaches its children too
        )
        timer = threading.Timer(process_timeout, os.killpg, (process.pid, signal.SIGKILL))
        timer.start()
        try:
            assert process.stdout is not None
            last = ""
            for raw in process.stdout:
                out.write(raw)
                line = raw.rstrip()
                if _PROGRESS.search(line) or line.startswith(("FAILED ", "ERROR ")):
                    print(f"[{framework}] {line}", flush=True)
                if line:
                    last = line
            status = process.wait()
        finally:
            timer.cancel()
    elapsed = time.monotonic() - started
    print(f"[{framework}] {last} (exit {status}, {elapsed:.0f} s; log {log})", flush=True)
    if not report.is_file():
        print(f"[{framework}] no report: the run was killed or crashed", flush=True)
        return False
    return True


def compare(reports: Path, only: Sequence[str] = ()) -> int:
    """Print each adapter's portability bugs; return their total (-1: no reference).

    ``only`` limits the table to those frameworks (and the reference), so a
    run of a few frameworks is not mixed with older reports of the others.
    """
    columns = {
        column.name: column
        for column in load_columns(reports)
        if not only or column.name in only or column.reference
    }
    reference = next((column for column in columns.values() if column.reference), None)
    if reference is None:
        print(f"no report of the reference loop in {reports}: nothing to compare with")
        return -1
    rows = []
    total = 0
    for name, column in columns.items():
        counts = Counter(str(result.get("outcome")) for result in column.results.values())
        bugs = {} if column is reference else portability_bugs(reference, column)
        total += len(bugs)
        failed = counts["failed"] + counts["error"]
        rows.append((name, column.version, counts["passed"], failed, counts["skipped"], len(bugs)))
        for test, reason in sorted(bugs.items()):
            print(f"{name}: {test}: {reason}")
    print()
    header = ("framework", "version", "passed", "failed", "skipped", "fail, pass on reference")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m protoshim.conformance.thirdparty.anyio_suite",
        description=f"Run anyio {ANYIO_VERSION}'s test suite on protoshim's loops.",
        epilog="Arguments after -- are passed on to pytest.",
    )
    parser.add_argument("command", choices=("fetch", "run", "compare"))
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help="default: %(default)s")
    parser.add_argument(
        "-f",
        "--framework",
        action="append",
        dest="frameworks",
        choices=FRAMEWORKS,
        help="run only this framework (repeatable; default: all)",
    )
    parser.add_argument("--test-timeout", type=float, default=TEST_TIMEOUT)
    parser.add_argument("--process-timeout", type=float, default=PROCESS_TIMEOUT)
    # Everything after the first "--" goes to pytest, wherever the options
    # before it are (nox appends its posargs after the session's own).
    words = list(sys.argv[1:] if argv is None else argv)
    split = words.index("--") if "--" in words else len(words)
    args = parser.parse_args(words[:split])
    pytest_args = words[split + 1 :]
    workdir: Path = args.workdir
    if args.command == "fetch":
        source = fetch(workdir)
        listing = workdir / "requirements.txt"
        listing.write_text("\n".join(requirements(source)) + "\n", encoding="utf-8")
        print(listing)
        return 0
    finished = True
    selected: Sequence[str] = ()
    if args.command == "run":
        fetch(workdir)
        selected = args.frameworks or FRAMEWORKS
        for framework in selected:
            finished = (
                run_framework(
                    framework, workdir, pytest_args, args.test_timeout, args.process_timeout
                )
                and finished
            )
    bugs = compare(workdir / "reports", selected)
    if bugs > 0:
        print(f"\n{bugs} test(s) fail on an adapter and pass on the reference loop")
    return 0 if bugs == 0 and finished else 1


if __name__ == "__main__":
    sys.exit(main())
