"""Render conformance reports as a grid: one row per test, one column per release.

Each ``.json`` file written by ``pytest conformance --conformance-report``
becomes a column named after the file (``twisted-oldest``) and labelled with
the framework version it recorded; a row names the Python each column ran
on.  The same grid is written as Markdown (with every skip and failure reason
as a footnote) and as an SVG picture.

Run as ``python -m protoshim.conformance.matrix REPORT_DIR --markdown OUT.md
--svg OUT.svg``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

__all__ = [
    "Column",
    "load_columns",
    "main",
    "portability_bugs",
    "render_markdown",
    "render_svg",
    "render_yardstick",
]

SYMBOLS = {
    "passed": "pass",
    "skipped": "skip",
    "failed": "FAIL",
    "error": "ERROR",
    "xfailed": "xfail",
    "xpassed": "XPASS",
}
COLOURS = {
    "passed": "#2da44e",
    "skipped": "#bbbbbb",
    "failed": "#cf222e",
    "error": "#cf222e",
    "xfailed": "#d4a72c",
    "xpassed": "#cf222e",
    "missing": "#ffffff",
}


@dataclass(frozen=True)
class Column:
    """The results of one conformance or reliability run, read from its report."""

    name: str
    framework: str
    version: str
    results: dict[str, dict[str, Any]]
    machine: str = "?"
    python: str = "?"
    reference: bool = False  # the column every other one is held to

    @property
    def title(self) -> str:
        return f"{self.name} ({self.version})"


def load_columns(directory: Path) -> list[Column]:
    """Read every report in ``directory``, ordered by file name."""
    columns = []
    for path in sorted(directory.glob("*.json")):
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        columns.append(
            Column(
                name=path.stem,
                framework=str(data.get("framework", path.stem)),
                version=str(data.get("version", "?")),
                results=dict(data.get("results", {})),
                machine=str(data.get("machine", "?")),
                python=str(data.get("python", "?")),
                reference=bool(data.get("reference", False)),
            )
        )
    return columns


def all_tests(columns: Sequence[Column]) -> list[str]:
    """Return every test that any column reports, sorted."""
    return sorted({test for column in columns for test in column.results})


def failing(columns: Sequence[Column]) -> list[tuple[Column, str]]:
    """Return each (column, test) whose outcome was not expected."""
    return [
        (column, test)
        for column in columns
        for test, result in column.results.items()
        if result.get("outcome") in ("failed", "error", "xpassed")
    ]


def portability_bugs(reference: Column, column: Column) -> dict[str, str]:
    """Map each test failing in ``column`` and passing in ``reference`` to its reason."""
    bugs = {}
    for test, result in reference.results.items():
        if result.get("outcome") != "passed":
            continue
        mine = column.results.get(test)
        if mine is None:
            bugs[test] = "did not run (the run ended early?)"
        elif mine.get("outcome") in ("failed", "error"):
            bugs[test] = str(mine.get("reason", ""))
    return bugs


#: Test ids under this prefix are CPython's own asyncio mixins.
CPYTHON_PREFIX = "cpython/"


def _count(column: Column, tests: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for test in tests:
        result = column.results.get(test)
        if result is not None:
            outcome = result.get("outcome", "error")
            counts[outcome] = counts.get(outcome, 0) + 1
    return ", ".join(f"{n} {SYMBOLS.get(k, k)}" for k, n in sorted(counts.items())) or "-"


def render_summary(columns: Sequence[Column]) -> list[str]:
    """Return Markdown lines: per column, the outcomes of our suite and of CPython's mixins."""
    tests = all_tests(columns)
    ours = [t for t in tests if not t.startswith(CPYTHON_PREFIX)]
    cpython = [t for t in tests if t.startswith(CPYTHON_PREFIX)]
    lines = [
        "| column | python | protoshim's suite | CPython's asyncio mixins |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {c.title} | {c.python} | {_count(c, ours)} | {_count(c, cpython)} |" for c in columns
    ]
    return lines


def render_yardstick(columns: Sequence[Column], title: str, origin: str) -> str:
    """Return a Markdown section comparing a third-party suite's columns with asyncio's."""
    reference = next((c for c in columns if c.reference), None)
    lines = [f"## {title}", "", origin, ""]
    lines += [
        "| framework | python | results | fail here, pass on the reference |",
        "|---|---|---|---|",
    ]
    bugs: list[str] = []
    for column in columns:
        found = {} if reference is None else portability_bugs(reference, column)
        lines.append(
            f"| {column.title} | {column.python} | {_count(column, list(column.results))} "
            f"| {len(found) if reference is not None else '?'} |"
        )
        bugs += [f"- {column.name}: `{test}`: {reason}" for test, reason in sorted(found.items())]
    if bugs:
        lines += ["", *bugs]
    return "\n".join(lines) + "\n"


def render_markdown(columns: Sequence[Column]) -> str:
    """Return the grid as a Markdown table with footnoted reasons."""
    notes: dict[str, int] = {}
    lines = [
        "# Conformance matrix",
        "",
        "Generated by `nox -s matrix` from the reports of `nox -s conformance`.",
        "Rows are conformance tests; columns are framework releases, each on one Python.",
        "The rows under `cpython/` are CPython's own asyncio test mixins (docs/conformance.md).",
        "",
        *render_summary(columns),
        "",
        "| test | " + " | ".join(c.title for c in columns) + " |",
        "|---|" + "---|" * len(columns),
        "| *python* | " + " | ".join(c.python for c in columns) + " |",
    ]
    for test in all_tests(columns):
        cells = []
        for column in columns:
            result = column.results.get(test)
            if result is None:
                cells.append("-")
                continue
            outcome = result.get("outcome", "error")
            cell = SYMBOLS.get(outcome, outcome)
            reason = result.get("reason", "")
            if outcome != "passed" and reason:
                number = notes.setdefault(reason, len(notes) + 1)
                cell += f" [{number}]"
            cells.append(cell)
        lines.append(f"| `{test}` | " + " | ".join(cells) + " |")
    totals = []
    for column in columns:
        counts: dict[str, int] = {}
        for result in column.results.values():
            outcome = result.get("outcome", "error")
            counts[outcome] = counts.get(outcome, 0) + 1
        summary = ", ".join(f"{n} {SYMBOLS.get(k, k)}" for k, n in sorted(counts.items()))
        totals.append(summary or "no results")
    lines.append("| **total** | " + " | ".join(totals) + " |")
    if notes:
        lines += ["", "## Reasons", ""]
        lines += [f"{number}. {reason}" for reason, number in notes.items()]
    return "\n".join(lines) + "\n"


def render_svg(columns: Sequence[Column]) -> str:
    """Return the grid as an SVG picture, one coloured square per result."""
    tests = all_tests(columns)
    cell, label_width, header = 14, 420, 150
    width = label_width + cell * len(columns) + 10
    height = header + cell * len(tests) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="Helvetica,Arial,sans-serif" font-size="10">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    for x, column in enumerate(columns):
        cx = label_width + x * cell + cell // 2
        parts.append(
            f'<text transform="translate({cx},{header - 6}) rotate(-60)">'
            f"{escape(column.title)}</text>"
        )
    for y, test in enumerate(tests):
        cy = header + y * cell
        parts.append(f'<text x="4" y="{cy + 10}">{escape(test[-70:])}</text>')
        for x, column in enumerate(columns):
            result = column.results.get(test)
            outcome = "missing" if result is None else result.get("outcome", "error")
            title = outcome if result is None else f"{outcome}: {result.get('reason', '')}"
            parts.append(
                f'<rect x="{label_width + x * cell}" y="{cy}" width="{cell - 2}" '
                f'height="{cell - 2}" fill="{COLOURS.get(outcome, "#000000")}">'
                f"<title>{escape(column.title)} {escape(test)}: {escape(title)}</title></rect>"
            )
    legend_y = header + cell * len(tests) + 18
    x = 4
    for outcome in ("passed", "skipped", "xfailed", "failed"):
        parts.append(
            f'<rect x="{x}" y="{legend_y - 9}" width="10" height="10" fill="{COLOURS[outcome]}"/>'
        )
        parts.append(f'<text x="{x + 14}" y="{legend_y}">{outcome}</text>')
        x += 80
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the Markdown and SVG grids; fail if reports are missing or failing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, help="directory of conformance JSON reports")
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--svg", type=Path, required=True)
    parser.add_argument("--expect", type=int, default=0, help="number of reports required")
    parser.add_argument(
        "--anyio",
        type=Path,
        default=None,
        help="directory of anyio-suite reports to summarise after the grid (if it exists)",
    )
    args = parser.parse_args(argv)
    columns = load_columns(args.reports) if args.reports.is_dir() else []
    if len(columns) < max(args.expect, 1):
        print(
            f"matrix: found {len(columns)} reports in {args.reports}, expected {args.expect}; "
            "run `nox -s conformance` first",
            file=sys.stderr,
        )
        return 2
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    text = render_markdown(columns)
    if args.anyio is not None and args.anyio.is_dir() and load_columns(args.anyio):
        text += "\n" + render_yardstick(
            load_columns(args.anyio),
            "anyio's own test suite",
            "From `nox -s anyio`: anyio's tests from its sdist, asyncio backend, with "
            "`protoshim.loop_factory(name)` as the loop factory.  A test that fails on an "
            "adapter and passes on the reference loop (the stdlib's) is a portability bug.",
        )
    args.markdown.write_text(text)
    args.svg.parent.mkdir(parents=True, exist_ok=True)
    args.svg.write_text(render_svg(columns))
    failures = failing(columns)
    print(f"matrix: {len(columns)} columns, {len(all_tests(columns))} tests -> {args.markdown}")
    for column, test in failures:
        print(f"matrix: failing {column.name}: {test}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
