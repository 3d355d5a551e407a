"""Sample a benchmark server under load with py-spy and say where its time goes.

``python -m benchmarks profile echo protoshim pyuv --connections 10`` starts
the server as the benchmark does, loads it (``asgi ... --path /ws``: with
WebSocket echoes), records its stacks with
``py-spy record --format raw`` and prints the functions with the most
samples, by self time and by inclusive time.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._harness import HOST, Pinning, Server, Spec, build_loadgen


def summarize(raw: str, top: int) -> str:
    """Return the top self and inclusive frames of py-spy's raw (collapsed) output."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        self_time[frames[-1]] += n
        # Inclusive time per function, not per line: strip ":LINE)".
        for function in {re.sub(r":\d+\)$", ")", frame) for frame in frames}:
            inclusive[function] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples", "", "self time:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in self_time.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


def profile(spec: Spec, args: argparse.Namespace) -> None:
    """Load the server described by ``spec`` and print py-spy's summary of it."""
    beside = Path(sys.executable).with_name("py-spy")
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("benchmarks: py-spy is needed to profile (pip install py-spy)")
    pinning = Pinning.detect()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        build = Path(tmp)
        loadgen = build_loadgen(build)
        server = Server(spec, loadgen, pinning, build)
        try:
            server.warm_up()
            length = args.seconds + 2
            if spec.kind == "echo":
                argv = [str(loadgen), "echo", HOST, str(server.port), str(args.connections)]
                argv += [str(args.size), str(length), "0"]
            elif spec.kind == "asgi" and args.path == "/ws":
                argv = [str(loadgen), "ws", HOST, str(server.port), args.path]
                argv += [str(args.connections), str(args.size), str(length), "0"]
            else:
                url = f"http://{HOST}:{server.port}{args.path}"
                argv = ["wrk", "-t1", f"-c{args.connections}", f"-d{length}s", url]
            load = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                preexec_fn=pinning.preexec(pinning.client),  # noqa: PLW1509 - no threads here
            )
            time.sleep(1.0)
            raw = build / "stacks.txt"
            subprocess.run(
                [
                    *(py_spy, "record", "--pid", str(server.pid), "--duration", str(args.seconds)),
                    *("--rate", "250", "--format", "raw", "--output", str(raw), "--threads"),
                ],
                check=True,
                capture_output=True,
            )
            load.wait(60)
            print(summarize(raw.read_text(), args.top))
        finally:
            server.stop()
