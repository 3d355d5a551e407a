"""Compare stream implementations for the Tornado adapter on the echo benchmark.

``python -m benchmarks.tornado_streams [--repeats N] [--seconds S] [VARIANT ...]``
runs each variant's echo server in its own process, pinned as the benchmark
harness pins them, and drives it with the harness's load generator: 100-byte
messages on 100 connections and 64 KiB messages on 10, each variant in turn,
``N`` times with the order rotated, then prints the medians side by side.

Variants: ``adapter`` (the adapter as it is), ``fd`` (core's descriptor
streams, ``FdDriver``, on the same driver), and ``native`` (Tornado's own
``TCPServer``/``IOStream`` echo, for scale).  Bounded: about
``2 * N * len(VARIANTS) * (S + 1)`` seconds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ._harness import Pinning, Server, Spec, build_loadgen, measure_echo

VARIANTS = ("adapter", "fd", "native")
WORKLOADS = ((100, 100), (65536, 10))  # (message size, connections)


class _Variant(Server):
    """One variant's echo server process."""

    def __init__(self, variant: str, pinning: Pinning, log_dir: Path) -> None:
        self.spec = Spec("echo", variant, "tornado")
        argv = [sys.executable, "-m", "benchmarks.tornado_streams", "--serve", variant]
        self._log = (log_dir / f"{variant}.log").open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=pinning.preexec(pinning.server),  # noqa: PLW1509 - no threads here
        )
        self.port = self._read_port()


def _serve(variant: str) -> None:
    from ._servers import _listening_socket, _serve_asyncio_loop, echo_native

    sock = _listening_socket()
    if variant == "native":
        echo_native("tornado", sock)
        return
    import protoshim
    from protoshim.protocols.echo import EchoServer

    if variant == "adapter":
        loop = protoshim.new_event_loop("tornado")
    else:
        from protoshim._fdio import FdDriver
        from protoshim._loop import EventLoop
        from protoshim.adapters.tornado._loop import TornadoDriver, _new_io_loop

        class FdTornadoDriver(FdDriver, TornadoDriver):  # type: ignore[misc]
            """The adapter's driver with core's descriptor streams and listener."""

        loop = EventLoop(FdTornadoDriver(_new_io_loop(), owned=True))
    _serve_asyncio_loop(loop, EchoServer, sock)


def main(argv: list[str] | None = None) -> None:
    """Measure, then print messages per second and server CPU per message."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", help=f"any of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve)
        return
    variants = args.variants or list(VARIANTS)
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    pinning = Pinning.detect()
    results: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        loadgen = build_loadgen(Path(tmp))
        servers = [_Variant(v, pinning, Path(tmp)) for v in variants]
        try:
            for server in servers:
                server.warm_up()
            for repeat in range(args.repeats):
                shift = repeat % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    for size, conns in WORKLOADS:
                        record = measure_echo(
                            server, loadgen, pinning, conns, size, args.seconds, 0.25
                        )
                        rate = record["rounds_per_s"]
                        cpu_us = record["server_cpu"] / rate * 1e6 if rate else 0.0
                        key = (server.spec.impl, size, conns)
                        results.setdefault(key, []).append((rate, cpu_us))
        finally:
            for server in servers:
                server.stop()
    print(f"{'variant':<8} {'size':>6} {'conns':>5} {'msg/s (median, min-max)':>30} {'cpu us/msg':>10}")
    for (variant, size, conns), runs in sorted(results.items(), key=lambda kv: kv[0][1:]):
        rates = [r for r, _ in runs]
        cpu = statistics.median(c for _, c in runs)
        spread = f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
        print(f"{variant:<8} {size:>6} {conns:>5} {spread:>30} {cpu:>10.1f}")


if __name__ == "__main__":
    main()
