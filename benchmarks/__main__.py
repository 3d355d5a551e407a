"""Run the benchmarks: ``python -m benchmarks [--quick]``; see docs/benchmarks.md.

``python -m benchmarks report RESULTS.json`` redraws the table and chart from
saved results; ``python -m benchmarks profile KIND IMPL FRAMEWORK`` samples a
server under load with py-spy and prints where its time goes.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from ._harness import (
    ROOT,
    Pinning,
    Record,
    Servers,
    Spec,
    allow_connections,
    build_loadgen,
    measure_echo,
    measure_http,
    measure_idle_memory,
    measure_rate,
    measure_storm,
    measure_ws,
)
from ._report import write_outputs
from ._servers import serves_websocket

FRAMEWORKS = ("asyncio", "uvloop", "selectors", "twisted", "tornado", "gevent", "pyuv")
#: Frameworks with a WSGI server of their own (uvicorn's for asyncio and uvloop).
OWN_WSGI = ("asyncio", "uvloop", "twisted", "tornado", "gevent")
#: Frameworks with a native, non-WSGI HTTP row for scale.
NATIVE_HTTP = ("asyncio", "uvloop", "twisted", "tornado")
#: ASGI servers measured beside protoshim's: (impl, framework, module it needs).
ASGI_SERVERS = (
    ("uvicorn", "asyncio", "uvicorn"),
    ("uvicorn", "uvloop", "uvicorn"),
    ("daphne", "twisted", "daphne"),
    ("hypercorn", "asyncio", "hypercorn"),
)
#: Frameworks whose fastest own HTTP server serves the ASGI rows' bytes
#: (for asyncio and uvloop that server is uvicorn, above).
NATIVE_ASGI = ("twisted", "tornado", "gevent")
DEFAULT_OUT = ROOT / "docs" / "benchmarks"


@dataclass(frozen=True)
class Settings:
    """How long and how often each measurement runs."""

    repeats: int = 3
    echo_seconds: float = 1.0
    echo_warmup: float = 0.25
    echo_sizes: tuple[int, ...] = (100, 65536)
    echo_connections: tuple[int, ...] = (1, 10, 100)
    http_seconds: int = 2
    http_connections: int = 10
    http_paths: tuple[str, ...] = ("/", "/1m")
    asgi_paths: tuple[str, ...] = ("/", "/json", "/1m")
    ws_connections: int = 10
    ws_size: int = 100
    ws_seconds: float = 2.0
    ws_warmup: float = 0.25
    rate: float = 5000.0
    rate_connections: int = 10
    rate_size: int = 100
    rate_seconds: float = 2.0
    #: Memory per idle connection is read at each of these counts.
    idle_connections: tuple[int, ...] = (10000, 50000)
    idle_repeats: int = 1
    #: Client connections per loopback source address (127.0.0.1, .2, ...):
    #: one address has about 28,000 ephemeral ports towards a server port.
    per_address: int = 20000
    storm_connections: int = 10000
    #: Connections the storm keeps opening but not yet answered, below the
    #: servers' listen backlog (4096), so the kernel never drops a handshake.
    storm_window: int = 1000
    storm_seconds: float = 60.0
    #: Near-peak latency: closed-loop peak for ``peak_seconds``, then the
    #: same connections at ``load_fraction`` of the slower server's peak.
    latency_connections: int = 100
    latency_size: int = 100
    peak_seconds: float = 1.0
    peak_warmup: float = 0.25
    load_fraction: float = 0.8
    latency_seconds: float = 2.0
    #: A run during which others used more than this many cores on ours is
    #: run again, up to ``attempts`` times in all; the quietest one is kept.
    quiet_threshold: float = 0.05
    attempts: int = 2


QUICK = Settings(
    repeats=1,
    echo_seconds=0.3,
    echo_warmup=0.1,
    http_seconds=1,
    ws_seconds=0.5,
    ws_warmup=0.1,
    rate_seconds=1.0,
    # Small counts, spread over several source addresses all the same.
    idle_connections=(1000, 2000),
    per_address=500,
    storm_connections=2000,
    storm_window=500,
    storm_seconds=20.0,
    peak_seconds=0.3,
    peak_warmup=0.1,
    latency_seconds=0.5,
    attempts=1,
)


def _rotated(items: Sequence[Spec], by: int) -> list[Spec]:
    by %= len(items)
    return [*items[by:], *items[:by]]


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _quietly(settings: Settings, measure: Callable[[], Record]) -> Record:
    best: Record | None = None
    for attempt in range(1, settings.attempts + 1):
        record = measure()
        record["attempts"] = attempt
        if best is None or record["foreign_cpu"] < best["foreign_cpu"]:
            best = record
        if record["foreign_cpu"] <= settings.quiet_threshold:
            break
        time.sleep(1.0)
    assert best is not None
    return best


def _echo_specs(frameworks: Sequence[str]) -> list[Spec]:
    specs = [Spec("echo", "c", "c")]
    for framework in frameworks:
        specs += [Spec("echo", "native", framework), Spec("echo", "protoshim", framework)]
    return specs


def _http_specs(frameworks: Sequence[str]) -> list[Spec]:
    specs = []
    for framework in frameworks:
        specs.append(Spec("http", "protoshim", framework))
        if framework in OWN_WSGI:
            specs.append(Spec("http", "wsgi", framework))
        if framework in NATIVE_HTTP:
            specs.append(Spec("http", "native", framework))
    # selectors and pyuv have no WSGI server: their rows compare with uvicorn's.
    if {"selectors", "pyuv"} & set(frameworks) and "asyncio" not in frameworks:
        specs.append(Spec("http", "wsgi", "asyncio"))
    return specs


def _asgi_specs(frameworks: Sequence[str]) -> list[Spec]:
    specs = [Spec("asgi", "protoshim", framework) for framework in frameworks]
    wanted = set(frameworks)
    # selectors and pyuv have no server of their own: their rows compare with uvicorn's.
    if {"selectors", "pyuv"} & wanted:
        wanted.add("asyncio")
    for impl, framework, module in ASGI_SERVERS:
        if framework not in wanted:
            continue
        if importlib.util.find_spec(module) is None:
            print(f"benchmarks: {module} is not installed, left out", file=sys.stderr)
            continue
        specs.append(Spec("asgi", impl, framework))
    specs += [Spec("asgi", "native", fw) for fw in frameworks if fw in NATIVE_ASGI]
    return specs


def _tag(record: Record, spec: Spec, repeat: int, position: int) -> Record:
    record.update(
        server=spec.label,
        kind=spec.kind,
        impl=spec.impl,
        framework=spec.framework,
        repeat=repeat,
        position=position,
    )
    return record


def run_echo(
    settings: Settings, frameworks: Sequence[str], loadgen: Path, pinning: Pinning, logs: Path
) -> Iterator[Record]:
    """Measure echo throughput and fixed-rate latency, all servers side by side."""
    specs = _echo_specs(frameworks)
    with Servers(specs, loadgen, pinning, logs) as servers:
        for size in settings.echo_sizes:
            for conns in settings.echo_connections:
                _progress(f"echo: {size} B x {conns} connections")
                for repeat in range(settings.repeats):
                    for position, spec in enumerate(_rotated(specs, repeat)):
                        server = servers.running[spec]
                        record = _quietly(
                            settings,
                            functools.partial(
                                measure_echo,
                                server,
                                loadgen,
                                pinning,
                                conns,
                                size,
                                settings.echo_seconds,
                                settings.echo_warmup,
                            ),
                        )
                        yield _tag(record, spec, repeat, position)
        _progress(f"latency: {settings.rate:g} messages/s over {settings.rate_connections}")
        for repeat in range(settings.repeats):
            for position, spec in enumerate(_rotated(specs, repeat)):
                record = _quietly(
                    settings,
                    functools.partial(
                        measure_rate,
                        servers.running[spec],
                        loadgen,
                        pinning,
                        settings.rate_connections,
                        settings.rate_size,
                        settings.rate,
                        settings.rate_seconds,
                    ),
                )
                yield _tag(record, spec, repeat, position)


def _wrk_rounds(
    settings: Settings,
    specs: Sequence[Spec],
    servers: Servers,
    pinning: Pinning,
    paths: Sequence[str],
    phase: str,
) -> Iterator[Record]:
    """Run wrk on each path against every server, in rotated order each repeat."""
    for path in paths:
        _progress(f"{phase}: GET {path} x {settings.http_connections} connections")
        for repeat in range(settings.repeats):
            for position, spec in enumerate(_rotated(specs, repeat)):
                record = _quietly(
                    settings,
                    functools.partial(
                        measure_http,
                        servers.running[spec],
                        pinning,
                        path,
                        settings.http_connections,
                        settings.http_seconds,
                    ),
                )
                yield _tag(record, spec, repeat, position)


def run_http(
    settings: Settings, frameworks: Sequence[str], loadgen: Path, pinning: Pinning, logs: Path
) -> Iterator[Record]:
    """Measure HTTP requests/s with wrk, all servers side by side."""
    specs = _http_specs(frameworks)
    with Servers(specs, loadgen, pinning, logs) as servers:
        yield from _wrk_rounds(settings, specs, servers, pinning, settings.http_paths, "http")


def run_asgi(
    settings: Settings, frameworks: Sequence[str], loadgen: Path, pinning: Pinning, logs: Path
) -> Iterator[Record]:
    """Measure ASGI servers: requests/s with wrk, WebSocket echoes/s, side by side."""
    specs = _asgi_specs(frameworks)
    with Servers(specs, loadgen, pinning, logs) as servers:
        yield from _wrk_rounds(settings, specs, servers, pinning, settings.asgi_paths, "asgi")
        ws_specs = [s for s in specs if serves_websocket(s.impl, s.framework)]
        size, conns = settings.ws_size, settings.ws_connections
        _progress(f"asgi: WebSocket echo, {size} B x {conns} connections")
        for repeat in range(settings.repeats):
            for position, spec in enumerate(_rotated(ws_specs, repeat)):
                record = _quietly(
                    settings,
                    functools.partial(
                        measure_ws,
                        servers.running[spec],
                        loadgen,
                        pinning,
                        "/ws",
                        conns,
                        size,
                        settings.ws_seconds,
                        settings.ws_warmup,
                    ),
                )
                yield _tag(record, spec, repeat, position)


def run_idle(
    settings: Settings, frameworks: Sequence[str], loadgen: Path, pinning: Pinning, logs: Path
) -> Iterator[Record]:
    """Measure memory per idle connection at each count, each server fresh and alone."""
    specs = _echo_specs(frameworks)
    allowed = allow_connections(max(settings.idle_connections))
    counts = sorted({min(n, allowed) for n in settings.idle_connections})
    _progress(f"idle: {', '.join(map(str, counts))} connections per server")
    for repeat in range(settings.idle_repeats):
        for position, spec in enumerate(_rotated(specs, repeat)):
            with Servers([spec], loadgen, pinning, logs) as servers:
                server = servers.running[spec]
                records = measure_idle_memory(
                    server, loadgen, pinning, counts, settings.per_address
                )
            for record in records:
                yield _tag(record, spec, repeat, position)


def run_storm(
    settings: Settings, frameworks: Sequence[str], loadgen: Path, pinning: Pinning, logs: Path
) -> Iterator[Record]:
    """Time an accept storm on each server, fresh and alone."""
    specs = _echo_specs(frameworks)
    conns = allow_connections(settings.storm_connections)
    _progress(f"storm: {conns} connections, {settings.storm_window} at a time unanswered")
    for repeat in range(settings.repeats):
        for position, spec in enumerate(_rotated(specs, repeat)):
            # Fresh, so that no server works through an earlier storm's
            # closes during this one: they all share one core.
            with Servers([spec], loadgen, pinning, logs) as servers:
                record = measure_storm(
                    servers.running[spec],
                    loadgen,
                    pinning,
                    conns,
                    settings.storm_window,
                    settings.per_address,
                    settings.storm_seconds,
                )
            yield _tag(record, spec, repeat, position)


def run_latency(
    settings: Settings, frameworks: Sequence[str], loadgen: Path, pinning: Pinning, logs: Path
) -> Iterator[Record]:
    """Measure latency near the peak, native and protoshim at the same offered rate."""
    conns, size = settings.latency_connections, settings.latency_size
    specs = _echo_specs(frameworks)[1:]  # native and protoshim, framework by framework
    with Servers(specs, loadgen, pinning, logs) as servers:
        for repeat in range(settings.repeats):
            for fw in frameworks:
                pair = _rotated(
                    [Spec("echo", impl, fw) for impl in ("native", "protoshim")], repeat
                )
                peaks = {
                    spec: measure_echo(
                        servers.running[spec],
                        loadgen,
                        pinning,
                        conns,
                        size,
                        settings.peak_seconds,
                        settings.peak_warmup,
                    )["rounds_per_s"]
                    for spec in pair
                }
                slower = min(peaks.values())
                if slower <= 0:
                    raise RuntimeError(f"latency: no round trips on {fw} while finding its peak")
                offered = settings.load_fraction * slower
                _progress(f"latency: {fw} at {offered:,.0f} messages/s over {conns} connections")
                for position, spec in enumerate(pair):
                    record = _quietly(
                        settings,
                        functools.partial(
                            measure_rate,
                            servers.running[spec],
                            loadgen,
                            pinning,
                            conns,
                            size,
                            offered,
                            settings.latency_seconds,
                        ),
                    )
                    record.update(
                        peak_rounds_per_s=peaks[spec],
                        offered_per_s=offered,
                        load_fraction=settings.load_fraction,
                    )
                    yield _tag(record, spec, repeat, position)


PHASES = {
    "echo": run_echo,
    "http": run_http,
    "asgi": run_asgi,
    "idle": run_idle,
    "storm": run_storm,
    "latency": run_latency,
}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _first_line(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except OSError:
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def machine() -> dict[str, Any]:
    """Describe the machine and every version that could change a result."""
    import protoshim

    cpu = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        memory = int(meminfo.readline().split()[1]) * 1024
    commit = _first_line(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "python": platform.python_version(),
        "protoshim_commit": commit,
        "frameworks": protoshim.frameworks(),
        "packages": {
            name: _version(name)
            for name in (
                *("uvicorn", "h11", "httptools", "websockets", "daphne", "hypercorn"),
                *("twisted", "tornado", "gevent", "uvloop", "pyuv"),
            )
        },
        "wrk": _first_line(["wrk", "--version"]),
        "gcc": _first_line(["gcc", "--version"]),
    }


def _run(args: argparse.Namespace) -> int:
    settings = QUICK if args.quick else Settings()
    if args.repeats:
        settings = Settings(**{**asdict(settings), "repeats": args.repeats})
    frameworks = [f for f in args.frameworks.split(",") if f] if args.frameworks else []
    phases = [p for p in args.phases.split(",") if p] or list(PHASES)
    for kind, given, known in (("framework", frameworks, FRAMEWORKS), ("phase", phases, PHASES)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            names, choices = ", ".join(unknown), ", ".join(known)
            print(f"benchmarks: unknown {kind} {names} (choose from {choices})", file=sys.stderr)
            return 2
    installed = set(_installed_frameworks())
    frameworks = [f for f in (frameworks or FRAMEWORKS) if f in installed]
    missing = sorted(set(FRAMEWORKS) - installed)
    if missing:
        print(f"benchmarks: not installed, left out: {', '.join(missing)}", file=sys.stderr)
    if {"http", "asgi"} & set(phases) and shutil.which("wrk") is None:
        raise SystemExit("benchmarks: wrk is needed for the HTTP phases (apt-get install wrk)")
    out = args.out or (DEFAULT_OUT if not args.quick else Path(tempfile.mkdtemp(prefix="bench-")))
    pinning = Pinning.detect()
    with tempfile.TemporaryDirectory(prefix="bench-build-") as build:
        loadgen = build_loadgen(Path(build))
        logs = Path(build) / "logs"
        logs.mkdir()
        results: dict[str, Any] = {
            "machine": machine(),
            "settings": asdict(settings),
            "quick": args.quick,
            "pinning": {"server": sorted(pinning.server), "client": sorted(pinning.client)},
            "records": [],
        }
        started = time.monotonic()
        try:
            for phase in phases:
                for record in PHASES[phase](settings, frameworks, loadgen, pinning, logs):
                    record["phase"] = phase
                    results["records"].append(record)
        except Exception:
            _dump_logs(logs)
            raise
        results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    readme = None if args.quick or args.no_readme else ROOT / "README.md"
    write_outputs(results, Path(out), readme)
    _progress(f"done in {results['elapsed_seconds']} s; results in {out}")
    return 0


def _dump_logs(logs: Path) -> None:
    for log in sorted(logs.glob("*.log")):
        text = log.read_text(errors="replace").strip()
        if text:
            print(f"--- {log.name}\n{text[-3000:]}", file=sys.stderr)


def _installed_frameworks() -> list[str]:
    import protoshim

    return list(protoshim.frameworks())


def _report(args: argparse.Namespace) -> int:
    results = json.loads(Path(args.results).read_text())
    out = Path(args.out) if args.out else Path(args.results).parent
    write_outputs(results, out, Path(args.readme) if args.readme else None)
    return 0


def _profile(args: argparse.Namespace) -> int:
    from ._profile import profile

    profile(Spec(args.kind, args.impl, args.framework), args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run what it asks for."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="measure (the default command)")
    for p in (parser, run):
        p.add_argument("--quick", action="store_true", help="short runs, one repeat (CI-sized)")
        p.add_argument("--out", type=Path, help="where results go (default docs/benchmarks)")
        p.add_argument("--phases", default=",".join(PHASES), help="comma-separated phases")
        p.add_argument("--frameworks", default="", help="comma-separated subset")
        p.add_argument("--repeats", type=int, default=0, help="override the repeat count")
        p.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    report = sub.add_parser("report", help="redraw table and chart from results.json")
    report.add_argument("results")
    report.add_argument("--out", help="output folder (default: beside results.json)")
    report.add_argument("--readme", help="README to update between the bench markers")
    prof = sub.add_parser("profile", help="sample a server under load with py-spy")
    prof.add_argument("kind", choices=("echo", "http", "asgi"))
    prof.add_argument("impl")
    prof.add_argument("framework")
    prof.add_argument("--connections", type=int, default=10)
    prof.add_argument("--size", type=int, default=100, help="echo or WebSocket message size")
    prof.add_argument("--path", default="/", help="HTTP path (asgi: /ws for WebSocket echo)")
    prof.add_argument("--seconds", type=int, default=5)
    prof.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    if args.command == "report":
        return _report(args)
    if args.command == "profile":
        return _profile(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
