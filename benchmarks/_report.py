"""Turn benchmark records into ratios, tables, a chart and the README section.

Every ratio is *paired*: for each repeat, the two servers' figures from that
repeat (measured one after the other) are divided, and the median of those
per-repeat ratios is reported, next to the median of each side.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Record = dict[str, Any]

FRAMEWORKS = ("asyncio", "uvloop", "selectors", "twisted", "tornado", "gevent", "pyuv")
ECHO_TARGET = 1.0
#: The one echo workload (size, connections) where the pyuv loop is held to uvloop's rate.
PYUV_VS_UVLOOP = (100, 100)
HTTP_TARGET = 1.0
ASGI_TARGET = 1.0
#: Bytes per idle connection protoshim may use above the native server.
MEMORY_EXCESS_LIMIT = 512
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


@dataclass(frozen=True)
class Comparison:
    """One ratio: ``numerator``'s metric over ``denominator``'s, on one workload."""

    group: str
    framework: str
    workload: str
    numerator: str
    denominator: str
    where: tuple[tuple[str, Any], ...]
    metric: str
    target: float | None = None  # None: reported, no target
    higher_is_better: bool = True
    strictly: bool = False  # "ahead of": equal is not enough
    #: When set, the target is on the difference of the two medians (a cost
    #: protoshim may add), not on the ratio.
    excess_limit: float | None = None


@dataclass(frozen=True)
class Ratio:
    """A comparison's measured outcome."""

    comparison: Comparison
    median: float
    low: float
    high: float
    pairs: int
    numerator_median: float
    denominator_median: float

    @property
    def met(self) -> bool | None:
        """Tell whether the target is met, or None when there is no target."""
        limit = self.comparison.excess_limit
        if limit is not None:
            return self.numerator_median - self.denominator_median <= limit
        target = self.comparison.target
        if target is None:
            return None
        if self.comparison.strictly:
            return self.median > target
        return self.median >= target if self.comparison.higher_is_better else self.median <= target

    def as_dict(self) -> dict[str, Any]:
        """Return the ratio as plain JSON data."""
        c = self.comparison
        return {
            "group": c.group,
            "framework": c.framework,
            "workload": c.workload,
            "numerator": c.numerator,
            "denominator": c.denominator,
            "metric": c.metric,
            "target": c.target,
            "higher_is_better": c.higher_is_better,
            "strictly": c.strictly,
            "excess_limit": c.excess_limit,
            "median": self.median,
            "low": self.low,
            "high": self.high,
            "pairs": self.pairs,
            "numerator_median": self.numerator_median,
            "denominator_median": self.denominator_median,
            "met": self.met,
        }


def size_label(size: int) -> str:
    """Format a message size: ``100 B``, ``64 KiB``."""
    return f"{size >> 10} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def echo_workload(size: int, conns: int) -> str:
    """Name an echo workload: ``100 B x10``."""
    return f"{size_label(size)} x{conns}"


def http_workload(path: str) -> str:
    """Name an HTTP workload by its response."""
    return {"/1m": "1 MiB", "/json": "JSON"}.get(path, "hello")


def ws_workload(size: int, conns: int) -> str:
    """Name a WebSocket echo workload: ``WS 100 B x10``."""
    return f"WS {size_label(size)} x{conns}"


Where = tuple[tuple[str, Any], ...]


def latency_workloads(results: dict[str, Any]) -> list[tuple[str, Where]]:
    """Name the fixed-rate workloads: the echo phase's light one, the latency phase's near peak."""
    s = results["settings"]
    found: list[tuple[str, Where]] = []
    if "rate" in s:
        found.append((f"{s['rate']:g}/s", (("phase", "echo"), ("mode", "rate"))))
    if "load_fraction" in s:
        found.append(
            (f"{s['load_fraction']:.0%} of peak", (("phase", "latency"), ("mode", "rate")))
        )
    return found


def counts(records: Iterable[Record], mode: str) -> list[int]:
    """Return the connection counts that ``mode`` (hold, storm) was measured at."""
    return sorted({r["connections"] for r in records if r.get("mode") == mode})


def storm_workload(conns: int) -> str:
    """Name an accept storm: ``storm of 10,000``."""
    return f"storm of {conns:,}"


def idle_workload(conns: int) -> str:
    """Name an idle-memory count: ``10,000 idle``."""
    return f"{conns:,} idle"


#: The ASGI comparisons, in the order of the table: (group, protoshim's
#: framework, the other server, its name in the table, target).
ASGI_ROWS: tuple[tuple[str, str, str, str, float | None], ...] = (
    ("asgi vs uvicorn", "uvloop", "asgi/uvicorn/uvloop", "uvicorn (uvloop)", ASGI_TARGET),
    ("asgi vs uvicorn", "asyncio", "asgi/uvicorn/asyncio", "uvicorn (asyncio)", ASGI_TARGET),
    ("asgi vs daphne", "twisted", "asgi/daphne/twisted", "Daphne", ASGI_TARGET),
    ("asgi vs native", "twisted", "asgi/native/twisted", "twisted.web `Resource`", ASGI_TARGET),
    (
        "asgi vs native",
        "tornado",
        "asgi/native/tornado",
        "tornado.web `RequestHandler`",
        ASGI_TARGET,
    ),
    ("asgi vs native", "gevent", "asgi/native/gevent", "gevent.pywsgi", ASGI_TARGET),
    # selectors and pyuv have no server of their own: reported beside uvicorn.
    ("asgi vs uvicorn", "selectors", "asgi/uvicorn/asyncio", "uvicorn (asyncio)", None),
    ("asgi vs uvicorn", "pyuv", "asgi/uvicorn/asyncio", "uvicorn (asyncio)", None),
    ("asgi vs hypercorn", "asyncio", "asgi/hypercorn/asyncio", "Hypercorn (asyncio)", None),
)


def _select(
    records: Iterable[Record], server: str, where: tuple[tuple[str, Any], ...]
) -> list[Record]:
    return [r for r in records if r["server"] == server and all(r.get(k) == v for k, v in where)]


def measure(records: list[Record], comparison: Comparison) -> Ratio | None:
    """Pair the two servers' records repeat by repeat; None if either is missing."""
    num = {
        r["repeat"]: r[comparison.metric]
        for r in _select(records, comparison.numerator, comparison.where)
    }
    den = {
        r["repeat"]: r[comparison.metric]
        for r in _select(records, comparison.denominator, comparison.where)
    }
    repeats = sorted(k for k in num.keys() & den.keys() if num[k] is not None and den[k])
    if not repeats:
        return None
    ratios = [num[k] / den[k] for k in repeats]
    return Ratio(
        comparison,
        statistics.median(ratios),
        min(ratios),
        max(ratios),
        len(ratios),
        statistics.median(num[k] for k in repeats),
        statistics.median(den[k] for k in repeats),
    )


def comparisons(results: dict[str, Any]) -> list[Comparison]:
    """List every ratio the results can give, with its target."""
    settings = results["settings"]
    records = results["records"]
    present = {r["server"] for r in records}
    out: list[Comparison] = []

    def add(c: Comparison) -> None:
        if c.numerator in present and c.denominator in present:
            out.append(c)

    for size in settings["echo_sizes"]:
        for conns in settings["echo_connections"]:
            where: tuple[tuple[str, Any], ...] = (
                ("mode", "echo"),
                ("size", size),
                ("connections", conns),
            )
            workload = echo_workload(size, conns)
            for fw in FRAMEWORKS:
                add(
                    Comparison(
                        "echo",
                        fw,
                        workload,
                        f"echo/protoshim/{fw}",
                        f"echo/native/{fw}",
                        where,
                        "rounds_per_s",
                        ECHO_TARGET,
                    )
                )
            on_uvloop = ECHO_TARGET if (size, conns) == PYUV_VS_UVLOOP else None
            for other, target in (("uvloop", on_uvloop), ("asyncio", 1.0)):
                add(
                    Comparison(
                        f"pyuv vs {other}",
                        "pyuv",
                        workload,
                        "echo/protoshim/pyuv",
                        f"echo/native/{other}",
                        where,
                        "rounds_per_s",
                        target,
                        strictly=other == "asyncio",
                    )
                )
    for path in settings["http_paths"]:
        where = (("mode", "http"), ("path", path))
        workload = http_workload(path)
        for fw in FRAMEWORKS:
            own = fw if fw in ("asyncio", "uvloop", "twisted", "tornado", "gevent") else "asyncio"
            # selectors has no stated target: it is reported beside uvicorn all the same.
            http_target: float | None = None if fw == "selectors" else HTTP_TARGET
            add(
                Comparison(
                    "http vs own WSGI",
                    fw,
                    workload,
                    f"http/protoshim/{fw}",
                    f"http/wsgi/{own}",
                    where,
                    "requests_per_s",
                    http_target,
                )
            )
            add(
                Comparison(
                    "http vs native",
                    fw,
                    workload,
                    f"http/protoshim/{fw}",
                    f"http/native/{fw}",
                    where,
                    "requests_per_s",
                )
            )
    ws_where: tuple[tuple[str, Any], ...] = (("mode", "ws"),)
    asgi_workloads: list[tuple[str, tuple[tuple[str, Any], ...], str]] = [
        (http_workload(path), (("mode", "http"), ("path", path)), "requests_per_s")
        for path in settings.get("asgi_paths", ())
    ]
    if "ws_size" in settings:
        workload = ws_workload(settings["ws_size"], settings["ws_connections"])
        asgi_workloads.append((workload, ws_where, "rounds_per_s"))
    for group, fw, other, _name, asgi_target in ASGI_ROWS:
        for workload, where, metric in asgi_workloads:
            add(
                Comparison(
                    group,
                    fw,
                    workload,
                    f"asgi/protoshim/{fw}",
                    other,
                    where,
                    metric,
                    asgi_target,
                )
            )
    # Scale: every figure is a cost, protoshim's over the native server's.
    scale: list[tuple[str, str, Where, str]] = [
        (f"latency {metric[:3]}", workload, where, metric)
        for workload, where in latency_workloads(results)
        for metric in ("p50_us", "p99_us")
    ]
    scale += [
        ("accept storm", storm_workload(n), (("mode", "storm"), ("connections", n)), "seconds")
        for n in counts(records, "storm")
    ]
    scale += [
        (
            "memory per idle connection",
            idle_workload(n),
            (("mode", "hold"), ("connections", n)),
            "bytes_per_connection",
        )
        for n in counts(records, "hold")
    ]
    for fw in FRAMEWORKS:
        for group, workload, where, metric in scale:
            add(
                Comparison(
                    group,
                    fw,
                    workload,
                    f"echo/protoshim/{fw}",
                    f"echo/native/{fw}",
                    where,
                    metric,
                    higher_is_better=False,
                    excess_limit=MEMORY_EXCESS_LIMIT if metric == "bytes_per_connection" else None,
                )
            )
    return out


def ratios(results: dict[str, Any]) -> list[Ratio]:
    """Measure every comparison the results allow."""
    found = (measure(results["records"], c) for c in comparisons(results))
    return [r for r in found if r is not None]


def medians(records: list[Record], metric: str, **where: Any) -> dict[str, float]:
    """Return each server's median ``metric`` over the records matching ``where``."""
    values: dict[str, list[float]] = {}
    for r in records:
        if all(r.get(k) == v for k, v in where.items()) and r.get(metric) is not None:
            values.setdefault(r["server"], []).append(r[metric])
    return {server: statistics.median(v) for server, v in values.items()}


# ---- markdown ---------------------------------------------------------------


def _mark(ratio: Ratio) -> str:
    met = ratio.met
    text = f"{ratio.median:.2f}"
    if met is None:
        return text
    if met:
        return f"{text} ✓"
    # Rounded down, so that a miss by a hair never reads as the target.
    return f"**{math.floor(ratio.median * 100) / 100:.2f} MISS**"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _target_text(c: Comparison) -> str:
    if c.target is None:
        return "-"
    if c.strictly:
        return f"> {c.target}"
    return ("≥ " if c.higher_is_better else "≤ ") + f"{c.target}"


def _grid(found: list[Ratio], group: str, workloads: list[str]) -> str:
    rows = []
    for fw in FRAMEWORKS:
        cells = {
            r.comparison.workload: r
            for r in found
            if r.comparison.group == group and r.comparison.framework == fw
        }
        if cells:
            rows.append([f"`{fw}`", *(_mark(cells[w]) if w in cells else "-" for w in workloads)])
    return _table(["framework", *workloads], rows)


def _workloads(results: dict[str, Any]) -> tuple[list[str], list[str]]:
    s = results["settings"]
    echo = [echo_workload(size, c) for size in s["echo_sizes"] for c in s["echo_connections"]]
    http = [http_workload(p) for p in s["http_paths"]]
    return echo, http


def _asgi_workloads(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    names = [http_workload(p) for p in s.get("asgi_paths", ())]
    if "ws_size" in s:
        names.append(ws_workload(s["ws_size"], s["ws_connections"]))
    return names


def _asgi_cells(found: list[Ratio]) -> list[tuple[str, dict[str, Ratio]]]:
    """Return each ASGI table row that has ratios: its label and its ratio per workload."""
    rows = []
    for group, fw, other, name, _target in ASGI_ROWS:
        cells = {
            r.comparison.workload: r
            for r in found
            if r.comparison.group == group
            and r.comparison.framework == fw
            and r.comparison.denominator == other
        }
        if cells:
            rows.append((f"`{fw}` ÷ {name}", cells))
    return rows


def _asgi_table(results: dict[str, Any], found: list[Ratio]) -> str:
    workloads = _asgi_workloads(results)
    rows = [
        [label, *(_mark(cells[w]) if w in cells else "-" for w in workloads)]
        for label, cells in _asgi_cells(found)
    ]
    return _table(["protoshim ASGI on ÷ server", *workloads], rows)


def _machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    fws = ", ".join(f"{k} {v}" for k, v in m["frameworks"].items())
    commit = (m.get("protoshim_commit") or "?")[:10]
    packages = m["packages"]
    servers = "".join(
        f", {name} {packages[name]}"
        for name in ("httptools", "websockets", "daphne", "hypercorn")
        if packages.get(name)
    )
    return (
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['platform']}; "
        f"{fws}; uvicorn {packages.get('uvicorn')} (h11){servers}; "
        f"commit {commit}, {m['date']}"
    )


@dataclass(frozen=True)
class _Column:
    """A scale table column: one metric of each pair, native / protoshim."""

    header: str
    metric: str
    where: Where
    group: str = ""  # the ratio shown beside the pair: (group, workload)
    workload: str = ""
    scale: float = 1.0
    digits: int = 2
    difference: bool = False  # show protoshim's excess instead of the ratio
    single: bool = False  # one figure for the pair (the native server's)
    reference: str = ""  # the C echo server's figure, formatted into this


def _latency_columns(results: dict[str, Any]) -> list[_Column]:
    columns = []
    for workload, where in latency_workloads(results):
        if dict(where)["phase"] == "latency":
            columns.append(_Column("offered messages/s", "offered_per_s", where, single=True))
        columns += [
            _Column(
                f"{metric[:3]} ms at {workload}",
                metric,
                where,
                f"latency {metric[:3]}",
                workload,
                scale=1000,
                reference=f"{metric[:3]} {{}} ms at {workload}",
            )
            for metric in ("p50_us", "p99_us")
        ]
    return columns


def _connection_columns(results: dict[str, Any]) -> list[_Column]:
    records = results["records"]
    columns = [
        _Column(
            f"seconds to serve a storm of {n:,}",
            "seconds",
            (("mode", "storm"), ("connections", n)),
            "accept storm",
            storm_workload(n),
            reference=f"{{}} s for the storm of {n:,}",
        )
        for n in counts(records, "storm")
    ]
    columns += [
        _Column(
            f"KiB per idle connection, {n:,} open",
            "bytes_per_connection",
            (("mode", "hold"), ("connections", n)),
            "memory per idle connection",
            idle_workload(n),
            scale=1024,
            digits=1,
            difference=True,
            reference=f"{{}} KiB per idle connection at {n:,}",
        )
        for n in counts(records, "hold")
    ]
    return columns


def _pair_table(results: dict[str, Any], found: list[Ratio], columns: list[_Column]) -> str:
    """Tabulate native / protoshim per framework, with the ratio or the difference."""
    records = results["records"]
    values = [medians(records, c.metric, **dict(c.where)) for c in columns]
    by_key = {(r.comparison.group, r.comparison.framework, r.comparison.workload): r for r in found}
    rows = []
    for fw in FRAMEWORKS:
        native, shim = f"echo/native/{fw}", f"echo/protoshim/{fw}"
        cells = []
        for column, table in zip(columns, values, strict=True):
            if native not in table or (shim not in table and not column.single):
                cells.append("-")
                continue
            n = table[native] / column.scale
            if column.single:
                cells.append(f"{n:,.0f}")
                continue
            p = table[shim] / column.scale
            cell = f"{n:.{column.digits}f} / {p:.{column.digits}f}"
            ratio = by_key.get((column.group, fw, column.workload))
            if column.difference:
                cell += f" ({p - n:+.{column.digits}f}"
                if ratio is not None and ratio.met is not None:
                    cell += " ✓" if ratio.met else " **MISS**"
                cell += ")"
            elif ratio is not None:
                cell += f" ({ratio.median:.2f}x)"
            cells.append(cell)
        if any(cell != "-" for cell in cells):
            rows.append([f"`{fw}`", *cells])
    header = [
        "framework",
        *(c.header + ("" if c.single else " (native / protoshim)") for c in columns),
    ]
    text = _table(header, rows)
    reference = [
        c.reference.format(f"{table['echo/c/c'] / c.scale:.{c.digits}f}")
        for c, table in zip(columns, values, strict=True)
        if "echo/c/c" in table and c.reference
    ]
    if reference:
        text += "\n\nThe C echo server: " + "; ".join(reference) + "."
    return text


def _measured(results: dict[str, Any], columns: list[_Column]) -> list[_Column]:
    records = results["records"]
    return [c for c in columns if medians(records, c.metric, **dict(c.where))]


def _scale_text(results: dict[str, Any], found: list[Ratio]) -> list[str]:
    """Return the scale tables that the results have, with their captions."""
    s = results["settings"]
    parts: list[str] = []
    latency = _measured(results, _latency_columns(results))
    if latency:
        loads = []
        phases = {dict(c.where)["phase"] for c in latency}
        if "echo" in phases:
            loads.append(f"at {s['rate']:g} messages/s over {s['rate_connections']} connections")
        if "latency" in phases:
            loads.append(
                f"at {s['load_fraction']:.0%} of the slower server's closed-loop peak over "
                f"{s['latency_connections']} connections (the same rate for both of a pair)"
            )
        parts += [
            f"**Latency** of {size_label(s.get('rate_size', 100))} echoes sent on a fixed "
            "schedule and measured from it (no coordinated omission), "
            + " and ".join(loads)
            + "; protoshim ÷ native in brackets:",
            "",
            _pair_table(results, found, latency),
            "",
        ]
    connections = _measured(results, _connection_columns(results))
    if connections:
        what = []
        if any(c.metric == "seconds" for c in connections):
            what.append(
                "the time to serve an accept storm (connections opened as fast as the server "
                f"answers them, at most {s['storm_window']:,} unanswered, until each has echoed a "
                "byte; protoshim ÷ native in brackets)"
            )
        if any(c.metric == "bytes_per_connection" for c in connections):
            what.append(
                "memory per idle connection (RSS growth; protoshim's excess in brackets, "
                f"target ≤ {MEMORY_EXCESS_LIMIT / 1024:g} KiB)"
            )
        parts += [
            "**Connections**: " + " and ".join(what) + ":",
            "",
            _pair_table(results, found, connections),
            "",
        ]
    return parts


def readme_section(results: dict[str, Any], found: list[Ratio]) -> str:
    """Return the README text between the bench markers."""
    echo_w, http_w = _workloads(results)
    missed = [r for r in found if r.met is False]
    scored = [r for r in found if r.met is not None]
    parts = [
        "`nox -s bench` measures protoshim against each framework's native code, side by side "
        "in one run; [docs/benchmarks.md](docs/benchmarks.md) says how, and what each miss "
        "costs where. Each figure is the median of per-repeat ratios (higher is better); "
        f"{len(scored) - len(missed)} of {len(scored)} targets met.",
        "",
        f"**Echo**, protoshim's `EchoServer` on protoshim's loop ÷ a native echo on the same "
        f"framework (rounds/s; target ≥ {ECHO_TARGET}):",
        "",
        _grid(found, "echo", echo_w),
        "",
        "**pyuv loop** (protoshim `EchoServer`) ÷ other native echoes (target ≥ "
        f"{ECHO_TARGET} x raw pyuv everywhere and x uvloop at "
        f"{echo_workload(*PYUV_VS_UVLOOP)}, > 1.0 x stdlib asyncio):",
        "",
        _pyuv_table(found, echo_w),
        "",
        "**HTTP** (wrk, 10 keep-alive connections), protoshim's HTTP protocol ÷ the framework's "
        "own WSGI server, same WSGI app (uvicorn's WSGI interface for asyncio, uvloop, selectors "
        "and pyuv; target ≥ 1.0, none for selectors):",
        "",
        _grid(found, "http vs own WSGI", http_w),
        "",
    ]
    if _asgi_cells(found):
        s = results["settings"]
        parts += [
            "**ASGI**: protoshim's ASGI server on each framework ÷ another server of the same "
            f"ASGI app (requests/s with wrk, {s['http_connections']} keep-alive connections; "
            f"WebSocket: messages/s, {s['ws_connections']} connections each echoing "
            f"{size_label(s['ws_size'])} text messages). uvicorn runs httptools and websockets; "
            "the frameworks' own servers send the same bytes without ASGI. "
            f"Target ≥ {ASGI_TARGET}; rows without one are for reference:",
            "",
            _asgi_table(results, found),
            "",
        ]
    parts += [
        *_scale_text(results, found),
        "![benchmark ratios](docs/benchmarks/ratios.svg)",
        "",
        "All numbers, the native HTTP rows and per-server medians: "
        "[docs/benchmarks/results.md](docs/benchmarks/results.md) "
        "(raw records in [results.json](docs/benchmarks/results.json)). "
        f"Measured on {_machine_line(results)}.",
    ]
    return "\n".join(parts)


def _pyuv_table(found: list[Ratio], workloads: list[str]) -> str:
    rows = []
    for group, label in (
        ("echo", "raw pyuv"),
        ("pyuv vs uvloop", "uvloop"),
        ("pyuv vs asyncio", "stdlib asyncio"),
    ):
        cells = {
            r.comparison.workload: r
            for r in found
            if r.comparison.group == group and r.comparison.framework == "pyuv"
        }
        if cells:
            rows.append(
                [f"÷ {label}", *(_mark(cells[w]) if w in cells else "-" for w in workloads)]
            )
    return _table(["protoshim pyuv", *workloads], rows)


def results_markdown(results: dict[str, Any], found: list[Ratio]) -> str:
    """Return docs/benchmarks/results.md: every median and every ratio."""
    records = results["records"]
    echo_w, http_w = _workloads(results)
    s = results["settings"]
    out = [
        "# Benchmark results",
        "",
        "Generated by `python -m benchmarks` (`nox -s bench`); do not edit. "
        "See [../benchmarks.md](../benchmarks.md) for the method.",
        "",
        f"Machine: {_machine_line(results)}.",
        f"Settings: {json.dumps(s)}; servers pinned to cores {results['pinning']['server']}, "
        f"clients to {results['pinning']['client']}; run took {results.get('elapsed_seconds')} s.",
        "",
        "## Ratios",
        "",
        _table(
            [
                "group",
                "framework",
                "workload",
                "ratio (median)",
                "range",
                "pairs",
                "numerator",
                "denominator",
                "target",
            ],
            [
                [
                    r.comparison.group,
                    r.comparison.framework,
                    r.comparison.workload,
                    _mark(r),
                    f"{r.low:.2f}-{r.high:.2f}",
                    str(r.pairs),
                    f"`{r.comparison.numerator}` {r.numerator_median:,.0f}",
                    f"`{r.comparison.denominator}` {r.denominator_median:,.0f}",
                    _target_text(r.comparison),
                ]
                for r in found
            ],
        ),
        "",
        f"Ratios are of `{'`, `'.join(sorted({r.comparison.metric for r in found}))}`; for "
        "latency and memory, lower is better.",
        "",
        "## Echo: rounds per second (median)",
        "",
        "A round is one message sent and all of it echoed back. `client CPU` is the load "
        "generator's CPU use (1.0 = one core) during the run against that server: it stays "
        "below what it reaches against the C echo server, so the client is not the limit.",
        "",
    ]
    rows = []
    servers = sorted({r["server"] for r in records if r["phase"] == "echo"})
    for server in servers:
        row = [f"`{server}`"]
        for size in s["echo_sizes"]:
            for conns in s["echo_connections"]:
                where = {"mode": "echo", "size": size, "connections": conns}
                thr = medians(records, "rounds_per_s", **where).get(server)
                cpu = medians(records, "client_cpu", **where).get(server)
                srv = medians(records, "server_cpu", **where).get(server)
                row.append(
                    "-" if thr is None else f"{thr:,.0f} (client {cpu:.2f}, server {srv:.2f})"
                )
        rows.append(row)
    out += [_table(["server", *echo_w], rows), ""]
    out += ["## HTTP: requests per second (median; wrk p50 / p99 ms)", ""]
    rows = []
    for server in sorted({r["server"] for r in records if r["phase"] == "http"}):
        row = [f"`{server}`"]
        for path in s["http_paths"]:
            where = {"mode": "http", "path": path}
            thr = medians(records, "requests_per_s", **where).get(server)
            p50 = medians(records, "p50_us", **where).get(server)
            p99 = medians(records, "p99_us", **where).get(server)
            errors = sum(
                r["socket_errors"] + r["non_2xx"]
                for r in records
                if r["server"] == server and r.get("path") == path
            )
            cell = (
                "-"
                if thr is None
                else f"{thr:,.0f} ({(p50 or 0) / 1000:.2f} / {(p99 or 0) / 1000:.2f})"
            )
            if errors:
                cell += f" **{errors} errors**"
            row.append(cell)
        rows.append(row)
    out += [_table(["server", *http_w], rows), ""]
    asgi_servers = sorted({r["server"] for r in records if r["phase"] == "asgi"})
    if asgi_servers:
        out += _asgi_medians(results, asgi_servers)
    out += ["## Scale", "", *_scale_text(results, found)]
    out += _scale_notes(results)
    watched = [r for r in records if "foreign_cpu" in r]
    disturbed = [r for r in watched if r["foreign_cpu"] > s.get("quiet_threshold", 0.05)]
    out += [
        f"{len(disturbed)} of {len(watched)} runs lost more than "
        f"{s.get('quiet_threshold', 0.05):.0%} of a core to other processes "
        f"(after {sum(r.get('attempts', 1) > 1 for r in watched)} runs were made again).",
        "",
    ]
    return "\n".join(out)


def _scale_notes(results: dict[str, Any]) -> list[str]:
    """Say where a scale figure fell short of what was asked."""
    records = results["records"]
    notes = []
    late = [r for r in records if r.get("mode") == "rate" and r.get("late_at_end")]
    if late:
        notes.append(
            f"{len(late)} fixed-rate runs ended with answers outstanding: "
            + ", ".join(sorted({r["server"] for r in late}))
        )
    short = [r for r in records if r.get("mode") == "storm" and r["accepted"] < r["connections"]]
    if short:
        notes.append(
            f"{len(short)} accept storms did not finish in time (their time is the limit): "
            + ", ".join(sorted({r["server"] for r in short}))
        )
    wanted = results["settings"].get("idle_connections")
    held = counts(records, "hold")
    # A list once read back from results.json, a tuple straight from Settings.
    if isinstance(wanted, list | tuple) and held and max(wanted) > max(held):
        notes.append(
            f"Idle memory was asked at {', '.join(map(str, wanted))} connections, but the "
            f"descriptor limit allowed at most {max(held)}."
        )
    return [line for note in notes for line in (note, "")]


def _asgi_medians(results: dict[str, Any], servers: list[str]) -> list[str]:
    records = results["records"]
    s = results["settings"]
    rows = []
    for server in servers:
        row = [f"`{server}`"]
        for path in s["asgi_paths"]:
            where = {"phase": "asgi", "mode": "http", "path": path}
            thr = medians(records, "requests_per_s", **where).get(server)
            p99 = medians(records, "p99_us", **where).get(server)
            srv = medians(records, "server_cpu", **where).get(server)
            errors = sum(
                r["socket_errors"] + r["non_2xx"]
                for r in records
                if r["server"] == server and r.get("phase") == "asgi" and r.get("path") == path
            )
            cell = (
                "-"
                if thr is None
                else f"{thr:,.0f} (p99 {(p99 or 0) / 1000:.2f} ms, server {srv:.2f})"
            )
            if errors:
                cell += f" **{errors} errors**"
            row.append(cell)
        where = {"phase": "asgi", "mode": "ws"}
        thr = medians(records, "rounds_per_s", **where).get(server)
        p99 = medians(records, "p99_us", **where).get(server)
        srv = medians(records, "server_cpu", **where).get(server)
        row.append(
            "-" if thr is None else f"{thr:,.0f} (p99 {(p99 or 0) / 1000:.2f} ms, server {srv:.2f})"
        )
        rows.append(row)
    return [
        "## ASGI: requests or WebSocket messages per second (median)",
        "",
        "The same ASGI app on every ASGI server; the `native` rows send the same bytes with the "
        "framework's own server (no WebSocket on twisted.web or pywsgi without a third-party "
        "package). `server` is the server's CPU use (1.0 = one core).",
        "",
        _table(["server", *_asgi_workloads(results)], rows),
        "",
    ]


# ---- chart ------------------------------------------------------------------


def _chart_cell(
    found: list[Ratio], asgi_rows: dict[str, dict[str, Ratio]], group: str, key: str, x: str
) -> Ratio | None:
    """Return the ratio a chart bar shows: series (``group``, ``key``) at x label ``x``."""
    if group == "asgi":
        return asgi_rows[x].get(key)
    if (group == "echo" and key == "raw pyuv") or group.startswith("pyuv vs"):
        fw, workload = "pyuv", x
    else:
        fw, workload = x, key
    for r in found:
        c = r.comparison
        if c.group == group and c.framework == fw and c.workload == workload:
            return r
    return None


def _scale_series(results: dict[str, Any]) -> list[tuple[str, str]]:
    records = results["records"]
    series = [
        (f"latency {p}", workload)
        for workload, where in latency_workloads(results)
        if medians(records, "p50_us", **dict(where))
        for p in ("p50", "p99")
    ]
    series += [("accept storm", storm_workload(n)) for n in counts(records, "storm")]
    series += [("memory per idle connection", idle_workload(n)) for n in counts(records, "hold")]
    return series


def draw_chart(found: list[Ratio], results: dict[str, Any], path: Path) -> None:
    """Draw every ratio as bars, targets as lines, misses hatched; save as SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    plt.rcParams["svg.hashsalt"] = "protoshim-bench"
    echo_w, http_w = _workloads(results)
    # (title, x labels, series as (group, workload or label), target lines)
    panels: list[tuple[str, list[str], list[tuple[str, str]], tuple[float, ...]]] = [
        (
            "Echo: protoshim ÷ native (rounds/s)",
            list(FRAMEWORKS),
            [("echo", w) for w in echo_w],
            (ECHO_TARGET,),
        ),
        (
            "protoshim pyuv ÷ native echoes (rounds/s)",
            echo_w,
            [("echo", "raw pyuv"), ("pyuv vs uvloop", "uvloop"), ("pyuv vs asyncio", "asyncio")],
            (ECHO_TARGET, 1.0),
        ),
        (
            "HTTP: protoshim ÷ own WSGI server, ÷ native server (requests/s)",
            list(FRAMEWORKS),
            [("http vs own WSGI", w) for w in http_w] + [("http vs native", w) for w in http_w],
            (HTTP_TARGET,),
        ),
        (
            "Scale: protoshim ÷ native (lower is better)",
            list(FRAMEWORKS),
            _scale_series(results),
            (),
        ),
    ]
    # ASGI rows are not one per framework: the x labels are the table's rows.
    asgi_rows = {
        label.replace("`", "").replace(" ÷ ", "\n÷ "): cells for label, cells in _asgi_cells(found)
    }
    if asgi_rows:
        panels.insert(
            3,
            (
                "ASGI: protoshim ÷ other servers (requests/s, WebSocket messages/s)",
                list(asgi_rows),
                [("asgi", w) for w in _asgi_workloads(results)],
                (ASGI_TARGET,),
            ),
        )
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.3 * len(panels)))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, xs, series, targets) in zip(axes, panels, strict=True):
        # A run without the scale phases has no series in that panel.
        width = 0.8 / max(len(series), 1)
        handles, labels = [], []
        for i, (group, key) in enumerate(series):
            heights, hatches, positions = [], [], []
            for j, x in enumerate(xs):
                cell = _chart_cell(found, asgi_rows, group, key, x)
                if cell is not None:
                    positions.append(j + (i - (len(series) - 1) / 2) * width)
                    heights.append(cell.median)
                    hatches.append("//" if cell.met is False else "")
            color = colors[i % len(colors)]
            bars = ax.bar(positions, heights, width, color=color)
            for bar, hatch in zip(bars, hatches, strict=True):
                bar.set_hatch(hatch)
            if group.startswith("latency"):
                label = f"{group.removeprefix('latency ')} at {key}"
            elif group == "memory per idle connection":
                label = f"memory, {key}"
            elif group.startswith("http"):
                label = f"{key} ({group.split(' vs ')[1]})"
            else:
                label = key
            handles.append(Patch(color=color))
            labels.append(label)
        for target in targets:
            ax.axhline(target, color="black", linewidth=0.8, linestyle="--")
        ax.axhline(1.0, color="grey", linewidth=0.5)
        ax.set_xticks(range(len(xs)), xs, fontsize=8 if "\n" in "".join(xs) else None)
        ax.set_title(title, fontsize=10)
        ax.legend(handles, labels, fontsize=7, ncol=min(max(len(series), 1), 6), loc="upper right")
        ax.set_ylim(0, max([1.3, *(bar.get_height() * 1.2 for bar in ax.patches)]))
    fig.suptitle("protoshim benchmarks (dashed: targets; hatched: target missed)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


# ---- outputs ----------------------------------------------------------------


def update_readme(readme: Path, section: str) -> None:
    """Replace the text between the bench markers of ``readme`` with ``section``."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no {README_START} ... {README_END} section")
    replacement = f"{README_START}\n{section}\n{README_END}"
    readme.write_text(pattern.sub(lambda _: replacement, text, count=1))


def write_outputs(results: dict[str, Any], out: Path, readme: Path | None) -> None:
    """Write results.json, results.md and ratios.svg to ``out``; update ``readme``."""
    out.mkdir(parents=True, exist_ok=True)
    found = ratios(results)
    results = {**results, "ratios": [r.as_dict() for r in found]}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(results_markdown(results, found) + "\n")
    draw_chart(found, results, out / "ratios.svg")
    if readme is not None:
        update_readme(readme, readme_section(results, found))
