"""Start servers, drive them with the C load generator or wrk, record what happened.

Servers run in their own processes pinned to one core; the client runs pinned
to the other, so neither takes CPU from the other.  Each workload runs every
server of its phase in turn, repeat after repeat, with the order rotated on
each repeat, so that every ratio compares runs made minutes apart at most,
and drift in the machine falls on both sides of it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

Record = dict[str, Any]


@dataclass(frozen=True)
class Spec:
    """Which server: ``kind`` (echo, http), ``impl`` and ``framework``."""

    kind: str  # echo, http or asgi
    impl: str  # protoshim, native, wsgi, c (the C echo server), or an ASGI server's name
    framework: str

    @property
    def label(self) -> str:
        """Name the server in results: ``echo/native/twisted``."""
        return f"{self.kind}/{self.impl}/{self.framework}"


@dataclass
class Pinning:
    """Cores for servers and clients, or none on a one-core machine."""

    server: set[int] = field(default_factory=set)
    client: set[int] = field(default_factory=set)

    @classmethod
    def detect(cls) -> Pinning:
        """Pin servers to the first usable core and clients to the second."""
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return cls()
        return cls({cores[0]}, {cores[1]})

    def preexec(self, cores: set[int]) -> Callable[[], None] | None:
        """Return a ``preexec_fn`` that pins the child to ``cores``, if any."""
        if not cores:
            return None
        return lambda: os.sched_setaffinity(0, cores)


def build_loadgen(out_dir: Path) -> Path:
    """Compile ``loadgen.c`` with gcc into ``out_dir``; return the binary."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SystemExit("benchmarks: gcc is needed to build the load generator")
    binary = out_dir / "loadgen"
    source = Path(__file__).with_name("loadgen.c")
    subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-o", str(binary), str(source)], check=True)
    return binary


class Server:
    """One server process: started, warmed up, measured, stopped."""

    def __init__(self, spec: Spec, loadgen: Path, pinning: Pinning, log_dir: Path) -> None:
        self.spec = spec
        if spec.impl == "c":
            argv = [str(loadgen), "server", "0"]
        else:
            argv = [sys.executable, "-m", "benchmarks._servers", spec.kind, spec.impl]
            argv.append(spec.framework)
        self._log = (log_dir / (spec.label.replace("/", "-") + ".log")).open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=pinning.preexec(pinning.server),  # noqa: PLW1509 - no threads here
        )
        self.port = self._read_port()

    def _read_port(self) -> int:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"{self.spec.label} did not start; see {self._log.name}")
        return int(line)

    @property
    def pid(self) -> int:
        """Return the server's process id."""
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """Return the user + system CPU time of the server, all its threads."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        """Return the server's resident set size in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def warm_up(self) -> None:
        """Open one connection, make one exchange on it, close it."""
        with socket.create_connection((HOST, self.port), timeout=30) as sock:
            if self.spec.kind == "echo":
                sock.sendall(b"w" * 100)
                got = b""
                while len(got) < 100:
                    chunk = sock.recv(100 - len(got))
                    if not chunk:
                        raise RuntimeError(f"{self.spec.label} closed during warm-up")
                    got += chunk
            else:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                got = b""
                while chunk := sock.recv(65536):
                    got += chunk
                if not got.startswith(b"HTTP/1.1 200") or not got.endswith(b"Hello, World!"):
                    raise RuntimeError(f"{self.spec.label} answered {got[:80]!r}")

    def stop(self) -> None:
        """Send SIGTERM, wait, kill if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


class Servers:
    """Start a set of servers together and stop them all on exit."""

    def __init__(
        self, specs: Sequence[Spec], loadgen: Path, pinning: Pinning, log_dir: Path
    ) -> None:
        self.specs = list(specs)
        self.loadgen, self.pinning, self.log_dir = loadgen, pinning, log_dir
        self.running: dict[Spec, Server] = {}

    def __enter__(self) -> Servers:
        try:
            for spec in self.specs:
                server = Server(spec, self.loadgen, self.pinning, self.log_dir)
                self.running[spec] = server
                server.warm_up()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.running.values():
            server.stop()


def _core_ticks(cores: set[int]) -> tuple[int, int]:
    """Return (user + nice + system, steal) clock ticks summed over ``cores``."""
    busy = steal = 0
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if (
                name.startswith("cpu")
                and name[3:].isdigit()
                and (not cores or int(name[3:]) in cores)
            ):
                ticks = [int(v) for v in values]
                busy += ticks[0] + ticks[1] + ticks[2]
                steal += ticks[7]
    return busy, steal


class Interference:
    """Measure CPU that others used on our cores while a measurement ran.

    The machine may be shared (other test runs, other builds).  Busy time on
    the server's and client's cores, less what the server and the client
    used themselves, is what someone else took; the hypervisor's steal time
    is reported beside it.
    """

    def __init__(self, server: Server, pinning: Pinning) -> None:
        self.server = server
        self.cores = pinning.server | pinning.client
        self.ticks_per_s = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Interference:
        self.t0 = time.monotonic()
        self.server0 = self.server.cpu_seconds()
        self.busy0, self.steal0 = _core_ticks(self.cores)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        busy, steal = _core_ticks(self.cores)
        self.server_cpu = self.server.cpu_seconds() - self.server0
        self.busy = (busy - self.busy0) / self.ticks_per_s
        self.steal = (steal - self.steal0) / self.ticks_per_s

    def annotate(self, record: Record, client_cpu: float) -> None:
        """Add ``foreign_cpu`` and ``steal`` (cores, averaged over the run) to ``record``."""
        foreign = self.busy - self.server_cpu - client_cpu
        record["foreign_cpu"] = round(max(0.0, foreign) / self.wall, 4)
        record["steal"] = round(self.steal / self.wall, 4)


def _client_run(
    argv: list[str], pinning: Pinning, timeout: float, ok: tuple[int, ...] = (0,)
) -> tuple[str, float]:
    """Run a client; return its stdout and the CPU seconds it used.

    An exit status in ``ok`` other than 0 means the client finished with a
    result that says what went short (answers late, a storm unfinished).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=pinning.preexec(pinning.client),
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in ok:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done.stdout, cpu


def _measure_loadgen(
    server: Server,
    loadgen: Path,
    pinning: Pinning,
    args: list[str],
    seconds: float,
    ok: tuple[int, ...] = (0,),
) -> Record:
    """Run the load generator with ``args`` against ``server``; return its record."""
    argv = [str(loadgen), args[0], HOST, str(server.port), *args[1:]]
    with Interference(server, pinning) as watch:
        out, client_cpu = _client_run(argv, pinning, timeout=seconds + 120, ok=ok)
    record: Record = json.loads(out)
    # Over the whole run, warm-up included: /proc has no finer clock.
    record["server_cpu"] = watch.server_cpu / watch.wall
    watch.annotate(record, client_cpu)
    return record


def measure_echo(
    server: Server,
    loadgen: Path,
    pinning: Pinning,
    conns: int,
    size: int,
    seconds: float,
    warmup: float,
) -> Record:
    """Run closed-loop ping-pong against ``server``; return the load generator's record."""
    args = ["echo", str(conns), str(size), str(seconds), str(warmup)]
    return _measure_loadgen(server, loadgen, pinning, args, seconds)


def measure_rate(
    server: Server,
    loadgen: Path,
    pinning: Pinning,
    conns: int,
    size: int,
    rate: float,
    seconds: float,
) -> Record:
    """Send at a fixed rate against ``server``; return latencies from the schedule.

    A server still behind 10 s after the last send is recorded, not fatal:
    the record's ``late_at_end`` counts the answers it still owed.
    """
    args = ["rate", str(conns), str(size), str(rate), str(seconds)]
    return _measure_loadgen(server, loadgen, pinning, args, seconds, ok=(0, 4))


def measure_storm(
    server: Server,
    loadgen: Path,
    pinning: Pinning,
    conns: int,
    window: int,
    per_address: int,
    seconds: float,
) -> Record:
    """Open ``conns`` connections at once to ``server``; return how long it took to serve them.

    A storm that ``seconds`` does not see through is recorded with the
    connections ``accepted`` so far.
    """
    args = ["storm", str(conns), str(window), str(per_address), str(seconds)]
    return _measure_loadgen(server, loadgen, pinning, args, seconds, ok=(0, 4))


def measure_ws(
    server: Server,
    loadgen: Path,
    pinning: Pinning,
    path: str,
    conns: int,
    size: int,
    seconds: float,
    warmup: float,
) -> Record:
    """Run closed-loop WebSocket echo at ``path``; return the load generator's record."""
    args = ["ws", path, str(conns), str(size), str(seconds), str(warmup)]
    record = _measure_loadgen(server, loadgen, pinning, args, seconds)
    record["path"] = path
    return record


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _wrk_seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    value, unit = float(match[1]), match[2]
    return value * {"m": 60.0, "h": 3600.0}.get(unit, _UNITS.get(unit, 1.0))


def parse_wrk(output: str) -> Record:
    """Read requests/s, latency percentiles and errors from ``wrk --latency`` output."""
    record: Record = {}
    match = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if match is None:
        raise ValueError("wrk printed no Requests/sec")
    record["requests_per_s"] = float(match[1])
    match = re.search(r"(\d+) requests in ([\d.]+\w+), ([\d.]+)(\w+) read", output)
    if match is None:
        raise ValueError("wrk printed no request count")
    record["requests"] = int(match[1])
    record["seconds"] = _wrk_seconds(match[2])
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+\w+)", output, re.M)
        record[f"p{pct}_us"] = _wrk_seconds(match[1]) * 1e6 if match else None
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    record["socket_errors"] = sum(int(n) for n in match.groups()) if match else 0
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    record["non_2xx"] = int(match[1]) if match else 0
    return record


def measure_http(server: Server, pinning: Pinning, path: str, conns: int, seconds: int) -> Record:
    """Run wrk (one thread, keep-alive) against ``server``; return its record."""
    url = f"http://{HOST}:{server.port}{path}"
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url]
    with Interference(server, pinning) as watch:
        out, client_cpu = _client_run(argv, pinning, timeout=seconds + 120)
    record = parse_wrk(out)
    record.update(
        mode="http",
        path=path,
        connections=conns,
        server_cpu=watch.server_cpu / watch.wall,
        client_cpu=client_cpu / watch.wall,
    )
    watch.annotate(record, client_cpu)
    return record


#: Descriptors a server or client needs beyond one per connection.
FD_MARGIN = 100


def allow_connections(wanted: int) -> int:
    """Raise RLIMIT_NOFILE for ``wanted`` connections; return how many it allows.

    Servers and the load generator inherit the hard limit and raise their
    soft limit to it.  Root with CAP_SYS_RESOURCE may raise the hard limit
    up to ``/proc/sys/fs/nr_open``; anyone else measures what it allows, and
    is told so.
    """
    need = wanted + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        except (ValueError, OSError):
            pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= need:
        if soft != resource.RLIM_INFINITY and soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        return wanted
    allowed = max(hard - FD_MARGIN, 1)
    print(
        f"benchmarks: RLIMIT_NOFILE's hard limit is {hard} and cannot be raised to {need} "
        "(that needs root with CAP_SYS_RESOURCE, up to /proc/sys/fs/nr_open): "
        f"measuring {allowed} connections instead of {wanted}",
        file=sys.stderr,
    )
    return allowed


def measure_idle_memory(
    server: Server, loadgen: Path, pinning: Pinning, counts: Sequence[int], per_address: int
) -> list[Record]:
    """Hold idle connections to ``server`` up to each of ``counts``; return RSS per connection.

    One load generator opens them one after another, ``per_address`` per
    loopback source address, and stops at each count while the server's
    RSS is read; every figure is measured from the RSS before the first.
    """
    rss0 = server.rss()
    checkpoints = ",".join(map(str, counts))
    hold = subprocess.Popen(
        [str(loadgen), "hold", HOST, str(server.port), checkpoints, str(per_address)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=pinning.preexec(pinning.client),  # noqa: PLW1509 - no threads here
    )
    assert hold.stdout is not None and hold.stdin is not None
    records: list[Record] = []
    try:
        for conns in counts:
            # Bounded: each connection gets 10 s in the load generator, and
            # the whole count 10 ms each (about 1.5 ms on a busy 2-core VM).
            ready, _, _ = select.select([hold.stdout], [], [], 60 + conns * 0.01)
            line = hold.stdout.readline() if ready else ""
            if not line:
                raise RuntimeError(f"could not hold {conns} connections to {server.spec.label}")
            record: Record = json.loads(line)
            time.sleep(0.5)  # let the server finish what the last connection started
            rss1 = server.rss()
            record.update(
                rss_before=rss0, rss_after=rss1, bytes_per_connection=(rss1 - rss0) / conns
            )
            records.append(record)
            if conns != counts[-1]:
                hold.stdin.write("\n")
                hold.stdin.flush()
    finally:
        hold.stdin.close()
        try:
            hold.wait(60)
        except subprocess.TimeoutExpired:
            hold.kill()
            hold.wait()
        hold.stdout.close()
    return records
