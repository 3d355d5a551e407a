"""Run the Autobahn TestSuite's cases against protoshim's WebSocket echo server.

kosoku (a native runner of Autobahn's own fuzzingclient case files) plays
the client.  It runs in a child process of its own, so the loop under test
serves and nothing else: a verdict is about the server, never about kosoku
sharing its loop.

``python -m protoshim.conformance.thirdparty.autobahn --framework NAME``
serves the echo handler on that framework, runs every case (1.* to 13.*,
compression included) and prints the verdict counts; it exits 1 if a case
failed.  ``nox -s autobahn`` runs it on each framework.  The conformance
suite runs :data:`QUICK_CASES` with the same functions
(``conformance/http/test_autobahn.py``).

A case passes when kosoku says so: its behaviour is OK, NON-STRICT or
INFORMATIONAL, and so is its closing behaviour (or OK).  UNIMPLEMENTED
counts as a failure: the server implements every feature the cases probe.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from protoshim.protocols.http import HTTPConfig, HTTPServerProtocol, WebSocket, http_server

__all__ = [
    "ALL_CASES",
    "QUICK_CASES",
    "Verdict",
    "echo_server",
    "failures",
    "run_cases",
    "summary",
]

#: Every case group of the suite (it has no groups 8 and 11).
ALL_CASES = [f"{group}.*" for group in (1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13)]
#: What the conformance suite runs, in about 5 s: every group but 9 (up to
#: 16 MiB per message), and of the compression groups the two smallest
#: cases of the default offer and the smallest of each offer in group 13
#: (1000 messages per case; the large ones take most of the quarter of an
#: hour the whole suite needs).
QUICK_CASES = [
    *(f"{group}.*" for group in (1, 2, 3, 4, 5, 6, 7, 10)),
    "12.1.1",
    "12.1.2",
    *(f"13.{kind}.1" for kind in range(1, 8)),
]
#: Each case sends up to 16 MiB in one message and expects it echoed.
MAX_MESSAGE_SIZE = 32 * 1024 * 1024
#: Named in full: run with ``-m``, ``__name__`` is ``__main__``.
_MODULE = "protoshim.conformance.thirdparty.autobahn"
#: How often the loop under test looks at the client process.
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Verdict:
    """Hold kosoku's verdict on one case."""

    case: str
    behavior: str
    behavior_close: str
    passed: bool


async def echo(socket: WebSocket) -> None:
    """Send every message back unchanged, as the Autobahn cases expect."""
    async for message in socket:
        await socket.send(message)


def echo_server() -> Callable[[], HTTPServerProtocol]:
    """Return a protocol factory serving :func:`echo` at ``/``."""
    config = HTTPConfig(websocket_max_message_size=MAX_MESSAGE_SIZE)
    return http_server(websockets={"/": echo}, config=config)


async def run_cases(
    port: int,
    cases: Sequence[str] = ALL_CASES,
    concurrency: int = 4,
    exclude: Sequence[str] = (),
) -> list[Verdict]:
    """Run ``cases`` against ws://127.0.0.1:``port`` from a child process.

    The running loop only serves and polls the child, so this works on
    every framework without asking the loop to watch a process.
    """
    with tempfile.TemporaryDirectory(prefix="autobahn-") as folder:
        output = Path(folder) / "verdicts.json"
        command = [
            *(sys.executable, "-m", _MODULE, "client", f"ws://127.0.0.1:{port}"),
            *("--json", str(output), "--concurrency", str(concurrency)),
            *(argument for case in cases for argument in ("-i", case)),
            *(argument for case in exclude for argument in ("-x", case)),
        ]
        errors = Path(folder) / "stderr.txt"
        with errors.open("wb") as stderr:
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=stderr)
        try:
            while child.poll() is None:
                await asyncio.sleep(_POLL_SECONDS)
        finally:
            if child.poll() is None:  # cancelled or timed out
                child.kill()
                child.wait()
        if child.returncode != 0:
            tail = errors.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the Autobahn client exited with {child.returncode}:\n{tail}")
        return [Verdict(**fields) for fields in json.loads(output.read_text())]


def summary(verdicts: Sequence[Verdict]) -> dict[str, int]:
    """Count the cases by behaviour (``UNCLEAN`` etc. added for closes that failed)."""
    counts = collections.Counter(verdict.behavior for verdict in verdicts)
    counts.update(
        f"close {verdict.behavior_close}"
        for verdict in verdicts
        if verdict.behavior_close not in ("OK", "INFORMATIONAL")
    )
    return dict(sorted(counts.items()))


def failures(verdicts: Sequence[Verdict]) -> list[str]:
    """Describe each case that did not pass."""
    return [
        f"{verdict.case}: {verdict.behavior}, close {verdict.behavior_close}"
        for verdict in verdicts
        if not verdict.passed
    ]


# --------------------------------------------------------------------------
# Command line


def _client(
    url: str, cases: Sequence[str], exclude: Sequence[str], concurrency: int, output: Path
) -> None:
    """Run kosoku and write its verdicts as JSON (the child side of run_cases)."""
    import kosoku

    async def drive() -> list[kosoku._kosoku.CaseResult]:
        try:
            return await kosoku.run_fuzzingclient(url, cases, exclude, concurrency=concurrency)
        except kosoku.FailureError as failure:  # carries every case's result
            return failure.results

    results = asyncio.run(drive())
    verdicts = [
        Verdict(
            result.case_id,
            result.behavior.value,
            result.behavior_close.value,
            result.passed,
        )
        for result in results
    ]
    output.write_text(json.dumps([asdict(verdict) for verdict in verdicts]))


async def _serve_and_run(
    cases: Sequence[str], exclude: Sequence[str], concurrency: int
) -> tuple[list[Verdict], float]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(echo_server(), "127.0.0.1", 0)
    started = time.monotonic()
    try:
        port = server.sockets[0].getsockname()[1]
        verdicts = await run_cases(port, cases, concurrency, exclude)
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)
    return verdicts, time.monotonic() - started


def main(argv: Sequence[str] | None = None) -> int:
    """Serve on ``--framework`` and run the cases; return 1 if any failed."""
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}")
    commands = parser.add_subparsers(dest="command")
    client = commands.add_parser("client", help="run kosoku only (used by run_cases)")
    client.add_argument("url")
    client.add_argument("--json", type=Path, required=True)
    for each in (parser, client):
        each.add_argument("-i", "--case", action="append", help="case id or glob (repeatable)")
        each.add_argument("-x", "--exclude", action="append", default=[], help="case to leave out")
        each.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--framework", default="asyncio")
    parser.add_argument("--report", type=Path, help="write the verdicts and counts as JSON")
    args = parser.parse_args(argv)
    cases = args.case or ALL_CASES
    if args.command == "client":
        _client(args.url, cases, args.exclude, args.concurrency, args.json)
        # kosoku's native part sometimes aborts (SIGABRT, no message) while
        # the interpreter shuts down, after the verdicts are written: leave
        # without that teardown so a finished run is not reported as a crash.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    import protoshim

    verdicts, seconds = protoshim.run(
        _serve_and_run(cases, args.exclude, args.concurrency), framework=args.framework
    )
    counts = summary(verdicts)
    failed = failures(verdicts)
    print(f"{args.framework}: {len(verdicts)} cases in {seconds:.0f} s: {counts}")
    for line in failed:
        print(f"  FAILED {line}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "framework": args.framework,
            "seconds": round(seconds, 1),
            "cases": cases,
            "excluded": args.exclude,
            "counts": counts,
            "verdicts": [asdict(verdict) for verdict in verdicts],
        }
        args.report.write_text(json.dumps(report, indent=1))
    return 1 if failed or not verdicts else 0


if __name__ == "__main__":
    sys.exit(main())
