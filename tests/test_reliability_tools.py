"""The reliability tests' tooling: the README table generator and their selection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from protoshim.conformance.reliability import table

ROOT = Path(__file__).resolve().parent.parent
RELIABILITY = ROOT / "conformance" / "reliability"
STORM = "reliability/test_storms::test_storm"
RESET = "reliability/test_disconnects::test_reset[request]"


def _report(directory: Path, framework: str, results: dict[str, object]) -> None:
    document = {
        "framework": framework,
        "version": "1.0",
        "python": "CPython 3.11.7",
        "machine": "x86_64, 2 CPU(s)",
        "results": results,
    }
    (directory / f"{framework}.json").write_text(json.dumps(document))


def _passed(value: object, unit: str = "") -> dict[str, object]:
    figures = {"n": {"value": value, "unit": unit, "headline": True}}
    return {"outcome": "passed", "reason": "", "figures": figures}


README = "intro\n<!-- reliability:start -->\nold table\n<!-- reliability:end -->\nrest\n"


def test_table_replaces_only_the_readme_section(tmp_path: Path) -> None:
    _report(tmp_path, "twisted", {STORM: _passed(10000), RESET: _passed(0)})
    _report(
        tmp_path,
        "asyncio",
        {STORM: _passed(262144, "B"), RESET: {"outcome": "xfailed", "reason": "issue 9c: x"}},
    )
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert table.main([str(tmp_path), "--readme", str(readme), "--expect", "2"]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- reliability:start -->\n")
    assert text.endswith("<!-- reliability:end -->\nrest\n")
    assert "old table" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    # asyncio comes first whatever the file order; the figure's unit is applied.
    assert rows[0] == "| test | figure | asyncio 1.0 | twisted 1.0 |"
    assert rows[1] == "| disconnects [request] | n | xfail (issue 9c) | 0 |"
    assert rows[2] == "| storms | n | 256.0 KiB | 10,000 |"


def test_table_writes_nothing_until_every_report_exists(tmp_path: Path) -> None:
    _report(tmp_path, "asyncio", {STORM: _passed(1)})
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert table.main([str(tmp_path), "--readme", str(readme), "--expect", "7"]) == 0
    assert readme.read_text() == README


def test_table_shows_failures_instead_of_figures(tmp_path: Path) -> None:
    _report(tmp_path, "pyuv", {STORM: {"outcome": "failed", "reason": "assert 1 <= 0"}})
    out = tmp_path / "details.md"
    assert table.main([str(tmp_path), "--markdown", str(out)]) == 0
    assert "| storms |  | FAIL |" in out.read_text()
    assert "assert 1 <= 0" in out.read_text()


def test_replace_section_needs_the_markers() -> None:
    with pytest.raises(ValueError, match="reliability:start"):
        table.replace_section("no markers here", "table")


def _collect(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.stdout


@pytest.mark.parametrize(
    ("args", "reliability", "rest"),
    [
        (["conformance"], False, True),
        (["conformance", "-m", "slow"], True, False),
        (["conformance", "-m", "not slow"], False, True),
        ([str(RELIABILITY)], True, False),
    ],
    ids=["plain-run", "marker", "not-slow", "folder"],
)
def test_reliability_tests_run_only_when_asked_for(
    args: list[str], reliability: bool, rest: bool
) -> None:
    out = _collect(*args)
    assert ("conformance/reliability/test_half_close.py::" in out) == reliability, out[-2000:]
    assert ("conformance/test_loop.py::" in out) == rest, out[-2000:]
