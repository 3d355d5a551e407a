"""Render reliability reports as a table: one row per test, one column per framework.

Each ``.json`` file written by ``pytest conformance/reliability
--reliability-report PATH`` is a column; each cell shows the test's headline
figure (or its outcome when it did not pass).  The table replaces the part
of the README between ``<!-- reliability:start -->`` and
``<!-- reliability:end -->``; ``--markdown`` also writes it, with every
figure of every test, to a file of its own.

Run as ``python -m protoshim.conformance.reliability.table REPORT_DIR
--readme README.md [--markdown OUT.md] [--expect N]``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import matrix
from ..matrix import Column

__all__ = ["Column", "load_columns", "main", "render_details", "render_table", "replace_section"]

START = "<!-- reliability:start -->"
END = "<!-- reliability:end -->"
#: columns in this order first, any other framework after them by name
ORDER = ("asyncio", "uvloop", "selectors", "twisted", "tornado", "gevent", "pyuv")
OUTCOMES = {"failed": "FAIL", "error": "ERROR", "xpassed": "XPASS", "skipped": "skip"}


def load_columns(directory: Path) -> list[Column]:
    """Read every report in ``directory``, in the usual framework order."""

    def rank(column: Column) -> tuple[int, str]:
        known = column.framework in ORDER
        return (ORDER.index(column.framework) if known else len(ORDER), column.framework)

    return sorted(matrix.load_columns(directory), key=rank)


#: short row labels for tests whose module holds several; others use the module name
ROWS = {
    "test_http_requests_split_anywhere_mean_the_same": "HTTP requests",
    "test_websocket_frames_split_anywhere_mean_the_same": "WebSocket frames",
    "test_echo_stream_split_anywhere_comes_back_whole": "echo stream",
    "test_echo_client_half_closes_and_gets_every_byte_back": "echo",
    "test_http_client_half_closes_after_its_request": "HTTP",
    "test_corpus_is_large_and_well_named": "corpus",
    "test_every_hostile_request_is_refused_and_the_canary_never_answered": "refused",
    "test_requests_in_flight_finish_within_the_grace_period": "in flight, within --grace",
    "test_requests_past_the_grace_are_cut_and_the_process_exits_0": "past --grace",
}


def label(test: str, tests: Sequence[str]) -> str:
    """Return a short row label: the module, the test if it has siblings, the parameters."""
    module, _, rest = test.partition("::")
    function, _, params = rest.partition("[")
    text = module.rsplit("/", 1)[-1].removeprefix("test_").replace("_", " ")
    siblings = {
        t.partition("::")[2].partition("[")[0] for t in tests if t.startswith(module + "::")
    }
    if len(siblings) > 1:
        text += ": " + ROWS.get(function, function.removeprefix("test_").replace("_", " "))
    if params:
        text += f" [{params.rstrip(']')}]"
    return text


def format_value(value: Any, unit: str) -> str:
    """Format a figure: sizes in B/KiB/MiB, integers with separators."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{value} {unit}".strip()
    if unit == "B" and abs(value) >= 1024:
        for size, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= size:
                return f"{value / size:.1f} {name}"
    text = f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"
    return f"{text} {unit}".strip()


def cell(result: dict[str, Any] | None) -> str:
    """Return a cell: the headline figure if the test passed, else its outcome."""
    if result is None:
        return "-"
    outcome = str(result.get("outcome", "error"))
    if outcome == "xfailed":
        reason = str(result.get("reason", ""))
        match = re.match(r"(issue [^:]+):", reason)
        return f"xfail ({match.group(1)})" if match else "xfail"
    if outcome != "passed":
        return OUTCOMES.get(outcome, outcome)
    figures: dict[str, dict[str, Any]] = result.get("figures", {})
    for figure in figures.values():
        if figure.get("headline"):
            return format_value(figure.get("value"), str(figure.get("unit", "")))
    return "pass"


def _headline_name(columns: Sequence[Column], test: str) -> str:
    for column in columns:
        for name, figure in column.results.get(test, {}).get("figures", {}).items():
            if figure.get("headline"):
                return str(name)
    return ""


def render_table(columns: Sequence[Column]) -> str:
    """Return the Markdown table of headline figures, with what each row measures."""
    tests = matrix.all_tests(columns)
    lines = [
        "| test | figure | " + " | ".join(f"{c.framework} {c.version}" for c in columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for test in tests:
        cells = [cell(column.results.get(test)) for column in columns]
        lines.append(
            f"| {label(test, tests)} | {_headline_name(columns, test)} | "
            + " | ".join(cells)
            + " |"
        )
    machines = sorted({f"{c.python} on {c.machine}" for c in columns})
    return "\n".join(lines) + f"\n\nMeasured with {', '.join(machines)}.\n"


def render_details(columns: Sequence[Column]) -> str:
    """Return every figure of every test, per framework, as Markdown."""
    lines = ["# Reliability figures", "", render_table(columns)]
    for test in matrix.all_tests(columns):
        lines += [f"## `{test}`", ""]
        for column in columns:
            result = column.results.get(test)
            if result is None:
                continue
            figures = result.get("figures", {})
            shown = ", ".join(
                f"{name} {format_value(f.get('value'), str(f.get('unit', '')))}"
                for name, f in figures.items()
            )
            outcome = str(result.get("outcome", ""))
            reason = f" ({result.get('reason')})" if result.get("reason") else ""
            heading = f"{column.framework} {column.version}"
            lines.append(f"- **{heading}**: {outcome}{reason}; {shown or 'no figures'}")
        lines.append("")
    return "\n".join(lines)


def replace_section(text: str, body: str) -> str:
    """Return ``text`` with the part between the reliability markers replaced by ``body``."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {START} ... {END} section")
    return text[: start + len(START)] + "\n" + body.rstrip("\n") + "\n" + text[end:]


INTRO = (
    "`nox -s reliability` runs the fault, load and hostile-input tests of "
    "[docs/reliability.md](docs/reliability.md) on every framework. Each cell is the "
    "test's headline figure (every test also checks that nothing is lost, memory stays "
    "bounded and the server keeps serving); `xfail` marks a known bug.\n\n"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the README section (and the details file); list failing tests."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("reports", type=Path, help="directory of reliability JSON reports")
    parser.add_argument("--readme", type=Path, help="README whose reliability section to replace")
    parser.add_argument("--markdown", type=Path, help="also write the table and every figure here")
    parser.add_argument(
        "--expect", type=int, default=1, help="write nothing unless this many reports exist"
    )
    args = parser.parse_args(argv)
    columns = load_columns(args.reports) if args.reports.is_dir() else []
    if len(columns) < max(args.expect, 1):
        print(
            f"reliability table: {len(columns)} of {args.expect} reports in {args.reports}; "
            "nothing written",
            file=sys.stderr,
        )
        return 0
    if args.readme is not None:
        text = args.readme.read_text(encoding="utf-8")
        args.readme.write_text(replace_section(text, INTRO + render_table(columns)), "utf-8")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(render_details(columns), encoding="utf-8")
    print(f"reliability table: {len(columns)} frameworks, {len(matrix.all_tests(columns))} tests")
    # Listed, not fatal: each framework's own session already failed on them.
    for column, test in matrix.failing(columns):
        print(f"reliability table: failing {column.framework}: {test}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
