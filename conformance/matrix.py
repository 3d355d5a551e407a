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
    "render_html",
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


def _loop_names(column: Column) -> str:
    """Return the loop classes a column's tests created, when the report says."""
    names = sorted({name for r in column.results.values() for name in r.get("loops", ())})
    return ", ".join(names)


def _totals(column: Column) -> str:
    return _count(column, list(column.results)) if column.results else "no results"


def _reason_numbers(columns: Sequence[Column]) -> dict[str, int]:
    """Number every distinct skip or failure reason, in grid order."""
    notes: dict[str, int] = {}
    for test in all_tests(columns):
        for column in columns:
            result = column.results.get(test)
            if result is not None and result.get("outcome") != "passed" and result.get("reason"):
                notes.setdefault(str(result["reason"]), len(notes) + 1)
    return notes


def render_markdown(
    columns: Sequence[Column], *, title: str = "Conformance matrix", intro: str | None = None
) -> str:
    """Return the grid as a Markdown table with footnoted reasons.

    Without ``intro`` the page describes protoshim's own suite (CONFORMANCE.md).
    """
    notes = _reason_numbers(columns)
    if intro is None:
        head = [
            "Generated by `nox -s matrix` from the reports of `nox -s conformance`.",
            "Rows are conformance tests; columns are framework releases, each on one Python.",
            "The rows under `cpython/` are CPython's own asyncio test mixins "
            "(docs/conformance.md).",
            "",
            *render_summary(columns),
        ]
    else:
        head = [intro]
    lines = [
        f"# {title}",
        "",
        *head,
        "",
        "| test | " + " | ".join(c.title for c in columns) + " |",
        "|---|" + "---|" * len(columns),
        "| *python* | " + " | ".join(c.python for c in columns) + " |",
    ]
    if any(_loop_names(c) for c in columns):
        loops = " | ".join(_loop_names(c) or "-" for c in columns)
        lines.append(f"| *event loop* | {loops} |")
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
                cell += f" [{notes[str(reason)]}]"
            cells.append(cell)
        lines.append(f"| `{test}` | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(_totals(c) for c in columns) + " |")
    if notes:
        lines += ["", "## Reasons", ""]
        lines += [f"{number}. {reason}" for reason, number in notes.items()]
    return "\n".join(lines) + "\n"


_HTML_STYLE = """
body { font-family: Helvetica, Arial, sans-serif; font-size: 14px; margin: 2em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; }
th { background: #f6f8fa; }
td.test { font-family: monospace; }
td.outcome { text-align: center; color: #ffffff; }
"""


def render_html(columns: Sequence[Column], *, title: str, intro: str) -> str:
    """Return the grid as one self-contained HTML page (no scripts, no links out)."""
    notes = _reason_numbers(columns)
    head = "".join(f"<th>{escape(c.title)}</th>" for c in columns)
    rows = [
        "<tr><td><em>python</em></td>"
        + "".join(f"<td>{escape(c.python)}</td>" for c in columns)
        + "</tr>"
    ]
    if any(_loop_names(c) for c in columns):
        rows.append(
            "<tr><td><em>event loop</em></td>"
            + "".join(f"<td>{escape(_loop_names(c) or '-')}</td>" for c in columns)
            + "</tr>"
        )
    for test in all_tests(columns):
        cells = []
        for column in columns:
            result = column.results.get(test)
            outcome = "missing" if result is None else str(result.get("outcome", "error"))
            reason = "" if result is None else str(result.get("reason", ""))
            label = "-" if result is None else SYMBOLS.get(outcome, outcome)
            if outcome != "passed" and reason:
                label += f" [{notes[reason]}]"
            colour = COLOURS.get(outcome, "#000000")
            text_colour = "#000000" if outcome in ("missing", "skipped") else "#ffffff"
            cells.append(
                f'<td class="outcome" style="background:{colour};color:{text_colour}" '
                f'title="{escape(reason)}">{escape(label)}</td>'
            )
        rows.append(f'<tr><td class="test">{escape(test)}</td>{"".join(cells)}</tr>')
    rows.append(
        "<tr><td><strong>total</strong></td>"
        + "".join(f"<td>{escape(_totals(c))}</td>" for c in columns)
        + "</tr>"
    )
    reasons = "".join(f"<li>{escape(reason)}</li>" for reason in notes)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_HTML_STYLE}</style></head><body>\n"
        f"<h1>{escape(title)}</h1>\n<p>{escape(intro)}</p>\n"
        f"<table><tr><th>test</th>{head}</tr>\n"
        + "\n".join(rows)
        + "\n</table>\n"
        + (f"<h2>Reasons</h2>\n<ol>{reasons}</ol>\n" if reasons else "")
        + "</body></html>\n"
    )


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
