"""Check the benchmark tooling: parsing, pairing, the README splice, the scale phases.

Run with ``python -m pytest benchmarks`` (``nox -s bench`` does, first).  The
scale phases run for real, in quick mode, against the asyncio servers (about
20 seconds; they need gcc).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks.__main__ import QUICK, main
from benchmarks._harness import parse_wrk
from benchmarks._profile import summarize
from benchmarks._report import (
    MEMORY_EXCESS_LIMIT,
    Comparison,
    _asgi_table,
    _scale_notes,
    _scale_text,
    measure,
    ratios,
    update_readme,
)

WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:40000/
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.90ms    1.02ms  12.03ms   85.11%
    Req/Sec     3.44k   210.55     3.70k    80.00%
  Latency Distribution
     50%    2.75ms
     75%    3.10ms
     90%    3.80ms
     99%  812.00us
  6880 requests in 2.01s, 1.02MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   3422.89
Transfer/sec:    519.74KB
"""


def test_parse_wrk_reads_rate_latency_and_errors() -> None:
    record = parse_wrk(WRK_OUTPUT)
    assert record["requests_per_s"] == pytest.approx(3422.89)
    assert record["requests"] == 6880
    assert record["seconds"] == pytest.approx(2.01)
    assert record["p50_us"] == pytest.approx(2750.0)
    assert record["p99_us"] == pytest.approx(812.0)
    assert record["socket_errors"] == 3
    assert record["non_2xx"] == 4


def test_parse_wrk_refuses_output_without_a_rate() -> None:
    with pytest.raises(ValueError, match="Requests/sec"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def _record(server: str, repeat: int, value: float) -> dict[str, Any]:
    return {"server": server, "repeat": repeat, "mode": "echo", "rounds_per_s": value}


def test_ratio_is_the_median_of_per_repeat_ratios() -> None:
    records = [
        _record("a", 0, 90.0),
        _record("b", 0, 100.0),  # 0.9
        _record("a", 1, 60.0),
        _record("b", 1, 30.0),  # 2.0
        _record("a", 2, 50.0),
        _record("b", 2, 100.0),  # 0.5
        _record("a", 3, 1.0),  # no partner in repeat 3: left out
    ]
    comparison = Comparison("echo", "fw", "w", "a", "b", (("mode", "echo"),), "rounds_per_s", 0.9)
    ratio = measure(records, comparison)
    assert ratio is not None
    assert ratio.pairs == 3
    assert ratio.median == pytest.approx(0.9)
    assert ratio.low == pytest.approx(0.5)
    assert ratio.high == pytest.approx(2.0)
    assert ratio.numerator_median == 60.0
    assert ratio.met is True


def test_lower_is_better_ratios_meet_a_target_from_below() -> None:
    records = [_record("a", 0, 3.0), _record("b", 0, 2.0)]
    comparison = Comparison(
        "latency", "fw", "w", "a", "b", (), "rounds_per_s", 1.0, higher_is_better=False
    )
    ratio = measure(records, comparison)
    assert ratio is not None
    assert ratio.met is False


def test_ratio_without_both_sides_is_none() -> None:
    comparison = Comparison("echo", "fw", "w", "a", "b", (), "rounds_per_s")
    assert measure([_record("a", 0, 1.0)], comparison) is None


def test_update_readme_replaces_only_the_bench_section(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\n"
        "<!-- other:start -->\nkeep\n<!-- other:end -->\n"
    )
    update_readme(readme, "new table")
    assert readme.read_text() == (
        "intro\n<!-- bench:start -->\nnew table\n<!-- bench:end -->\n"
        "<!-- other:start -->\nkeep\n<!-- other:end -->\n"
    )


def test_update_readme_without_markers_fails(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="bench:start"):
        update_readme(readme, "x")


def test_summarize_counts_self_and_inclusive_time() -> None:
    raw = "main (a.py:1);loop (a.py:5);write (b.py:9) 3\nmain (a.py:1);loop (a.py:6) 1\n"
    text = summarize(raw, top=5)
    assert text.startswith("4 samples")
    self_part, inclusive_part = text.split("inclusive time:")
    assert "75.0%  write (b.py:9)" in self_part
    assert "25.0%  loop (a.py:6)" in self_part
    # Lines of one function add up in the inclusive view.
    assert "100.0%  loop (a.py)" in inclusive_part


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "--phases",
            "echo,peak",
            "unknown phase peak (choose from echo, http, asgi, idle, storm, latency)",
        ),
        ("--frameworks", "trio", "unknown framework trio (choose from asyncio,"),
    ],
)
def test_unknown_names_are_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    assert main([option, value]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def _asgi_results() -> dict[str, Any]:
    settings: dict[str, Any] = {
        "echo_sizes": [],
        "echo_connections": [],
        "http_paths": [],
        "asgi_paths": ["/", "/json"],
        "http_connections": 10,
        "ws_connections": 10,
        "ws_size": 100,
    }
    records = []
    for server, rate in (("asgi/protoshim/uvloop", 900.0), ("asgi/uvicorn/uvloop", 1000.0)):
        for path in settings["asgi_paths"]:
            records.append(
                {"server": server, "repeat": 0, "phase": "asgi", "mode": "http", "path": path}
                | {"requests_per_s": rate}
            )
        records.append(
            {"server": server, "repeat": 0, "phase": "asgi", "mode": "ws", "rounds_per_s": rate}
        )
    # A framework's own server without WebSocket: no WS ratio for its row.
    records.append(
        {"server": "asgi/native/gevent", "repeat": 0, "phase": "asgi", "mode": "http"}
        | {"path": "/", "requests_per_s": 100.0}
    )
    records.append(
        {"server": "asgi/protoshim/gevent", "repeat": 0, "phase": "asgi", "mode": "http"}
        | {"path": "/", "requests_per_s": 200.0}
    )
    return {"settings": settings, "records": records}


def test_asgi_rows_pair_protoshim_with_each_server_per_workload() -> None:
    found = {
        (r.comparison.framework, r.comparison.denominator, r.comparison.workload): r
        for r in ratios(_asgi_results())
    }
    uvloop = found["uvloop", "asgi/uvicorn/uvloop", "hello"]
    assert uvloop.median == pytest.approx(0.9)
    assert uvloop.met is False
    assert ("uvloop", "asgi/uvicorn/uvloop", "WS 100 B x10") in found
    assert found["gevent", "asgi/native/gevent", "hello"].met is True
    assert ("gevent", "asgi/native/gevent", "WS 100 B x10") not in found


def test_asgi_table_has_a_row_per_pairing_and_a_column_per_workload() -> None:
    results = _asgi_results()
    table = _asgi_table(results, ratios(results))
    lines = table.splitlines()
    assert lines[0] == "| protoshim ASGI on ÷ server | hello | JSON | WS 100 B x10 |"
    miss = "**0.90 MISS**"
    assert f"| `uvloop` ÷ uvicorn (uvloop) | {miss} | {miss} | {miss} |" in lines
    assert "| `gevent` ÷ gevent.pywsgi | 2.00 ✓ | - | - |" in lines


def test_results_without_an_asgi_phase_have_no_asgi_ratios() -> None:
    results = _asgi_results()
    del results["settings"]["asgi_paths"], results["settings"]["ws_size"]
    assert ratios(results) == []


# ---- scale phases -------------------------------------------------------------


def _scale_results() -> dict[str, Any]:
    settings: dict[str, Any] = {
        "echo_sizes": [],
        "echo_connections": [],
        "http_paths": [],
        "rate": 5000.0,
        "rate_connections": 10,
        "idle_connections": (10000, 50000),  # as Settings has it; a list once read back
        "storm_window": 1000,
        "latency_connections": 100,
        "load_fraction": 0.8,
    }
    records: list[dict[str, Any]] = []
    for impl, kib, storm_s, p99 in (("native", 1.0, 0.5, 200.0), ("protoshim", 2.5, 0.6, 300.0)):
        server = f"echo/{impl}/twisted"
        for conns in (10000, 19900):  # the descriptor limit stopped short of 50,000
            records.append(
                {"server": server, "repeat": 0, "phase": "idle", "mode": "hold"}
                | {"connections": conns, "bytes_per_connection": kib * 1024}
            )
        records.append(
            {"server": server, "repeat": 0, "phase": "storm", "mode": "storm"}
            | {"connections": 10000, "accepted": 10000 if impl == "native" else 9000}
            | {"seconds": storm_s}
        )
        records.append(
            {"server": server, "repeat": 0, "phase": "latency", "mode": "rate"}
            | {"p50_us": 100.0, "p99_us": p99, "offered_per_s": 8000.0}
        )
    return {"settings": settings, "records": records}


def test_scale_ratios_pair_each_count_storm_and_load() -> None:
    found = {
        (r.comparison.group, r.comparison.workload): r
        for r in ratios(_scale_results())
        if r.comparison.framework == "twisted"
    }
    assert found["memory per idle connection", "10,000 idle"].median == pytest.approx(2.5)
    assert ("memory per idle connection", "19,900 idle") in found
    assert found["accept storm", "storm of 10,000"].median == pytest.approx(1.2)
    p99 = found["latency p99", "80% of peak"]
    assert p99.median == pytest.approx(1.5)
    assert p99.comparison.higher_is_better is False
    # No light-load records: no ratio for them.
    assert ("latency p99", "5000/s") not in found


def test_idle_memory_target_is_on_the_excess_not_the_ratio() -> None:
    results = _scale_results()
    for r in results["records"]:
        if r["server"] == "echo/protoshim/twisted" and r["mode"] == "hold":
            r["bytes_per_connection"] = 1024 + MEMORY_EXCESS_LIMIT  # 1.5x native, within the limit
    memory = [r for r in ratios(results) if r.comparison.group == "memory per idle connection"]
    assert [r.met for r in memory] == [True, True]
    assert memory[0].median == pytest.approx(1.5)
    text = "\n".join(_scale_text(results, ratios(results)))
    assert "1.0 / 1.5 (+0.5 ✓)" in text
    for r in results["records"]:
        if r["server"] == "echo/protoshim/twisted" and r["mode"] == "hold":
            r["bytes_per_connection"] += 1
    assert all(
        r.met is False for r in ratios(results) if r.comparison.group == memory[0].comparison.group
    )


def test_scale_tables_show_both_sides_and_say_what_fell_short() -> None:
    results = _scale_results()
    text = "\n".join([*_scale_text(results, ratios(results)), *_scale_notes(results)])
    assert "| `twisted` | 8,000 | 0.10 / 0.10 (1.00x) | 0.20 / 0.30 (1.50x) |" in text
    miss = "1.0 / 2.5 (+1.5 **MISS**)"
    assert f"| `twisted` | 0.50 / 0.60 (1.20x) | {miss} | {miss} |" in text
    assert "1 accept storms did not finish in time" in text
    assert "the descriptor limit allowed at most 19900" in text


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the load generator needs gcc")
def test_quick_scale_phases_measure_every_count_storm_and_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    argv = ["--quick", "--phases", "idle,storm,latency", "--frameworks", "asyncio"]
    assert main([*argv, "--out", str(tmp_path), "--no-readme"]) == 0
    err = capsys.readouterr().err
    for phase in ("idle:", "storm:", "latency:"):
        assert phase in err
    results = json.loads((tmp_path / "results.json").read_text())
    records = results["records"]
    python_servers = {"echo/native/asyncio", "echo/protoshim/asyncio"}

    held = [r for r in records if r["phase"] == "idle"]
    assert {(r["server"], r["connections"]) for r in held} == {
        (server, n) for server in {"echo/c/c", *python_servers} for n in QUICK.idle_connections
    }
    for r in held:
        assert r["source_addresses"] == math.ceil(r["connections"] / QUICK.per_address) > 1
        if r["server"] in python_servers:
            assert r["rss_after"] > r["rss_before"]
            assert r["bytes_per_connection"] > 0

    storms = [r for r in records if r["phase"] == "storm"]
    assert {r["server"] for r in storms} == {"echo/c/c", *python_servers}
    for r in storms:
        assert r["accepted"] == r["connections"] == QUICK.storm_connections
        assert r["window"] == QUICK.storm_window
        assert r["seconds"] > 0 and r["accepts_per_s"] > 0
        assert 0 < r["p50_us"] <= r["p99_us"] <= r["max_us"]

    loads = [r for r in records if r["phase"] == "latency"]
    assert {r["server"] for r in loads} == python_servers
    offered = {r["offered_per_s"] for r in loads}
    assert len(offered) == 1  # the same rate for both servers of the pair
    slower = min(r["peak_rounds_per_s"] for r in loads)
    assert offered.pop() == pytest.approx(QUICK.load_fraction * slower)
    for r in loads:
        assert r["mode"] == "rate" and r["rounds"] > 0
        assert 0 < r["p50_us"] <= r["p99_us"]

    groups = {(r["group"], r["workload"]) for r in results["ratios"]}
    for n in QUICK.idle_connections:
        assert ("memory per idle connection", f"{n:,} idle") in groups
    assert ("accept storm", f"storm of {QUICK.storm_connections:,}") in groups
    assert ("latency p99", "80% of peak") in groups
    markdown = (tmp_path / "results.md").read_text()
    assert f"seconds to serve a storm of {QUICK.storm_connections:,}" in markdown
