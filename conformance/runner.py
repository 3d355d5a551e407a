"""``protoshim matrix``: run a project's pytest command on every framework, draw the grid.

Usage::

    protoshim matrix [--frameworks a,b] [--jobs N] [--out DIR] -- pytest tests/

The command runs once per framework, in subprocesses, up to ``--jobs`` at a
time, with ``--framework NAME`` and ``--conformance-report`` appended: the
tests need no edit (see :mod:`protoshim.conformance.switch`).  The grid is
written as Markdown, SVG and a self-contained HTML page; each run's output
is kept in ``DIR/logs``.

Exit status: 0 when every test that passes on the stdlib asyncio loop passes
everywhere; 1 when one fails on another framework (a portability bug) or a
framework's run reported nothing; 2 for a usage error.  A test that fails on
asyncio too is shown, but it is the project's own failure, not the
framework's.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import protoshim

from .matrix import Column, load_columns, portability_bugs, render_html, render_markdown, render_svg

__all__ = ["PROGRESS_ENV", "main"]

#: The plugin appends one line per finished test to this file, if set.
PROGRESS_ENV = "PROTOSHIM_PROGRESS_FILE"
REFERENCE = "asyncio"
DEFAULT_OUT = Path("build") / "protoshim-matrix"


@dataclass(eq=False)
class _Run:
    framework: str
    report: Path
    log: Path
    progress: Path
    status: str = "waiting"
    returncode: int | None = None  # None: killed by --timeout
    seconds: float = 0.0
    started: float = 0.0

    def done_tests(self) -> tuple[int, int | None]:
        """Return the tests finished so far and the number collected, once known."""
        try:
            lines = self.progress.read_text(encoding="utf-8").splitlines()
        except OSError:
            return 0, None
        total = next((int(line.split()[1]) for line in lines if line.startswith("total ")), None)
        return sum(1 for line in lines if not line.startswith("total ")), total


def _pytest_argv(command: Sequence[str]) -> list[str]:
    """Return argv for the user's pytest command, run by this interpreter."""
    if not command:
        raise ValueError("give the pytest command after --, e.g. protoshim matrix -- pytest tests/")
    first = Path(command[0]).name
    if first in ("pytest", "py.test"):
        return [sys.executable, "-m", "pytest", *command[1:]]
    if first.startswith("python") and list(command[1:3]) == ["-m", "pytest"]:
        return [sys.executable, *command[1:]]
    raise ValueError(
        f"the command must run pytest (pytest ... or python -m pytest ...), not {command[0]!r}"
    )


def _start(run: _Run, argv: list[str]) -> subprocess.Popen[bytes]:
    for path in (run.report, run.progress):
        path.unlink(missing_ok=True)
    args = [
        *argv,
        *("--framework", run.framework, "--conformance-report", str(run.report)),
        *("-p", "no:cacheprovider"),
    ]
    env = {**os.environ, PROGRESS_ENV: str(run.progress)}
    with run.log.open("w", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(args)}\n")
        log.flush()
        # The child has its own copy of the log's descriptor.
        child = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    run.status = "running"
    run.started = time.monotonic()
    return child


def _finish(run: _Run, returncode: int | None) -> None:
    run.returncode = returncode
    run.seconds = time.monotonic() - run.started
    run.status = "done"
    if returncode is None:
        with run.log.open("a", encoding="utf-8") as log:
            log.write(f"\nprotoshim matrix: killed after {run.seconds:.0f} s (--timeout)\n")


class _Progress:
    """One status line: rewritten in place on a terminal, printed now and then otherwise."""

    def __init__(self, runs: Sequence[_Run], stream: TextIO) -> None:
        self.runs = runs
        self.stream = stream
        self.tty = stream.isatty()
        self._last = ""
        self._printed_at = 0.0

    def line(self) -> str:
        parts = []
        for run in self.runs:
            done, total = run.done_tests()
            if run.status == "waiting":
                parts.append(f"{run.framework} waiting")
            elif run.status == "running":
                parts.append(f"{run.framework} {done}/{total if total is not None else '?'}")
            else:
                parts.append(f"{run.framework} done ({done})")
        return "matrix: " + " | ".join(parts)

    def update(self, final: bool = False) -> None:
        text = self.line()
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
            self.stream.flush()
        elif final or (text != self._last and now - self._printed_at >= 10):
            print(text, file=self.stream, flush=True)
            self._printed_at = now
        self._last = text


def _run_all(
    runs: Sequence[_Run], argv: list[str], jobs: int, timeout: float | None, stream: TextIO
) -> None:
    """Run up to ``jobs`` children at a time, from this thread alone."""
    progress = _Progress(runs, stream)
    waiting = list(runs)
    running: dict[_Run, subprocess.Popen[bytes]] = {}
    while waiting or running:
        while waiting and len(running) < jobs:
            run = waiting.pop(0)
            running[run] = _start(run, argv)
        for run, child in list(running.items()):
            returncode = child.poll()
            if returncode is None and timeout is not None:
                if time.monotonic() - run.started > timeout:
                    child.kill()
                    child.wait()
                    _finish(run, None)
                    del running[run]
                continue
            if returncode is not None:
                _finish(run, returncode)
                del running[run]
        progress.update()
        if running:
            time.sleep(0.2)
    progress.update(final=True)


def _frameworks(chosen: str | None) -> list[str]:
    installed = list(protoshim.frameworks())
    if not chosen:
        return installed
    names = [name.strip() for name in chosen.split(",") if name.strip()]
    unknown = [name for name in names if name not in installed]
    if unknown:
        raise ValueError(
            f"not installed: {', '.join(unknown)} (installed: {', '.join(installed)}); "
            "see `protoshim frameworks`"
        )
    return names


def _verdict(columns: Sequence[Column], runs: Sequence[_Run], stream: TextIO) -> int:
    """Print the portability bugs and broken runs; return the exit status."""
    status = 0
    reported = {column.name for column in columns}
    for run in runs:
        if run.returncode is None:
            print(f"matrix: {run.framework}: killed by --timeout (see {run.log})", file=stream)
            status = 1
        elif run.framework not in reported or run.returncode not in (0, 1):
            print(
                f"matrix: {run.framework}: pytest exited {run.returncode} "
                f"{'without a report' if run.framework not in reported else ''}"
                f"(see {run.log})",
                file=stream,
            )
            status = 1
    for column in columns:
        if not column.results:
            print(f"matrix: {column.name}: no test ran (did pytest collect any?)", file=stream)
            status = 1
    reference = next((c for c in columns if c.reference), None)
    if reference is None:
        print(
            f"matrix: no {REFERENCE} column, so no test can be blamed on a framework",
            file=stream,
        )
        return 1
    own = sum(1 for r in reference.results.values() if r.get("outcome") in ("failed", "error"))
    if own:
        print(
            f"matrix: {own} test(s) fail on {reference.name} too: the project's own failures",
            file=stream,
        )
    for column in columns:
        if column is reference:
            continue
        for test, reason in sorted(portability_bugs(reference, column).items()):
            print(f"matrix: portability bug on {column.name}: {test}: {reason}", file=stream)
            status = 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command on each framework; write the grid; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="protoshim matrix",
        description="Run a pytest command on every installed framework and draw the grid.",
    )
    parser.add_argument("--frameworks", help="comma-separated subset (default: all installed)")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time (default: CPUs)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="kill a framework's run that takes longer (default: no limit)",
    )
    parser.add_argument("--title", default="Framework matrix", help="heading of the grid")
    parser.add_argument(
        "--from-reports",
        type=Path,
        metavar="DIR",
        help="run nothing: draw the grid of the reports in DIR/reports (nox_matrix writes them)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- pytest [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.from_reports is not None:
        found = args.from_reports / "reports"
        columns = load_columns(found)
        if not columns:
            print(f"protoshim matrix: no reports in {found}", file=sys.stderr)
            return 1
        _write_grid(columns, args.from_reports, args.title, "Reports of the nox matrix sessions.")
        return _verdict(columns, [], sys.stderr)
    try:
        pytest_argv = _pytest_argv(command)
        frameworks = _frameworks(args.frameworks)
        if args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, not {args.jobs}")
        if args.timeout is not None and args.timeout <= 0:
            raise ValueError(f"--timeout must be positive, not {args.timeout:g}")
    except ValueError as exc:
        print(f"protoshim matrix: {exc}", file=sys.stderr)
        return 2
    if REFERENCE not in frameworks:
        frameworks.insert(0, REFERENCE)  # the column every other one is held to
    reports, logs, progress = args.out / "reports", args.out / "logs", args.out / "progress"
    for folder in (reports, logs, progress):
        folder.mkdir(parents=True, exist_ok=True)
    for stale in reports.glob("*.json"):
        stale.unlink()
    runs = [
        _Run(name, reports / f"{name}.json", logs / f"{name}.log", progress / f"{name}.txt")
        for name in frameworks
    ]
    print(f"matrix: {shlex.join(command)} on {', '.join(frameworks)}, {args.jobs} at a time")
    _run_all(runs, pytest_argv, args.jobs, args.timeout, sys.stdout)
    columns = load_columns(reports)
    for run in runs:
        print(f"matrix: {run.framework}: exit {run.returncode} in {run.seconds:.0f} s")
    intro = f"`{shlex.join(command)}`, run by `protoshim matrix` on each framework."
    _write_grid(columns, args.out, args.title, intro)
    return _verdict(columns, runs, sys.stderr)


def _write_grid(columns: Sequence[Column], out: Path, title: str, intro: str) -> None:
    outputs = {
        "matrix.md": render_markdown(columns, title=title, intro=intro),
        "matrix.svg": render_svg(columns),
        "matrix.html": render_html(columns, title=title, intro=intro),
    }
    for name, text in outputs.items():
        (out / name).write_text(text, encoding="utf-8")
    print(f"matrix: grid in {out / 'matrix.md'}, .svg and .html")
