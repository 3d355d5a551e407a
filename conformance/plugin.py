"""Run the conformance suite against one framework's event loop.

The plugin is installed through the ``pytest11`` entry point, so it is loaded
by every pytest run.  It stays inert unless a test asks for one of its
fixtures or the conformance suite is selected (a path or ``--pyargs``
module inside the suite, or ``--conformance-report``).

What it provides:

* ``--framework NAME`` picks the adapter under test (default ``asyncio``);
  ``--conformance-report PATH`` writes the results as JSON.
* ``adapter`` (session) and ``loop`` (a new loop per test, closed afterwards)
  fixtures, and ``run(coro, timeout=...)`` to drive a coroutine on that loop
  without ever hanging.
* ``@pytest.mark.requires("udp", ...)`` skips a test, with the adapter's own
  reason, when the adapter declares a capability missing.
* ``http_parser``: parametrises a test over the HTTP protocol's request
  parsers (``h11``, ``httptools``); only the tests of parsing and framing
  take it, so the rest of the suite runs once.
* Strictness: the loop's exception handler is a recorder and any unexpected
  call fails the test (request ``expect_exceptions`` to receive the calls
  instead); a test that leaves file descriptors open fails.
* A run of the suite in which no test passed exits with a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import importlib.util
import json
import os
import platform
import re
import threading
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

import protoshim

from .runner import PROGRESS_ENV
from .switch import LoopSwitch

__all__ = [
    "DEFAULT_FRAMEWORK",
    "DEFAULT_TIMEOUT",
    "ConformanceTimeout",
    "ExceptionRecorder",
    "RunCoroutine",
    "adapter",
    "expect_exceptions",
    "fd_guard",
    "http_parser",
    "loop",
    "open_fds",
    "record_outside_test",
    "run",
]

DEFAULT_FRAMEWORK = "asyncio"
#: Seconds a single ``run()`` may take before the test fails.
DEFAULT_TIMEOUT = 10.0
#: Extra seconds after the timeout before the loop is stopped from a thread,
#: for loops whose timers are broken.
_WATCHDOG_GRACE = 5.0
#: Seconds after which a completely stuck process dumps its tracebacks and
#: exits: a crash is better than a CI run that hangs until it is killed.
_HARD_STOP_GRACE = 60.0
#: How long teardown waits for cancelled tasks and executors.
_TEARDOWN_TIMEOUT = 10.0
#: How long closed descriptors may take to disappear (some frameworks close
#: them from a callback or a helper thread).
_FD_SETTLE_SECONDS = 2.0

SUITE_DIR = Path(__file__).resolve().parent

T = TypeVar("T")

Context = dict[str, Any]


class RunCoroutine(Protocol):
    """Run a coroutine to completion on the test's loop, with a timeout."""

    def __call__(self, coro: Coroutine[Any, Any, T], timeout: float = ...) -> T:
        """Return the coroutine's result; fail the test if it takes too long."""
        ...


class ConformanceTimeout(AssertionError):
    """A coroutine run by ``run()`` did not finish in time."""


# --------------------------------------------------------------------------
# Session state


@dataclass
class _Result:
    outcome: str
    reason: str = ""


@dataclass
class _State:
    framework: str
    explicit: bool
    report_path: Path | None
    requested: bool
    _adapter: protoshim.Adapter | None = None
    switch: LoopSwitch | None = None
    stable_ids: dict[str, str] = field(default_factory=dict)
    results: dict[str, _Result] = field(default_factory=dict)
    failure_message: str = ""

    def adapter(self) -> protoshim.Adapter:
        """Resolve the selected adapter once; an unknown name is a usage error."""
        if self._adapter is None:
            try:
                self._adapter = protoshim.get_adapter(self.framework)
            except protoshim.UnknownFramework as exc:
                raise pytest.UsageError(f"--framework: {exc}") from None
        return self._adapter


_STATE = pytest.StashKey[_State]()
_RECORDER = pytest.StashKey["ExceptionRecorder"]()


def _state(config: pytest.Config) -> _State:
    """Return this run's state."""
    return config.stash[_STATE]


def _in_suite(path: Path) -> bool:
    """Return True for the suite's test modules, in this folder or a subpackage."""
    try:
        resolved = path.resolve()
    except OSError:
        return False
    return (
        resolved.is_relative_to(SUITE_DIR)
        and resolved.name.startswith("test_")
        and resolved.suffix == ".py"
    )


def _stable_id(item: pytest.Item) -> str:
    """Name a test by its module's path inside the suite, e.g. ``test_udp::test_echo``."""
    module = item.path.resolve().relative_to(SUITE_DIR).with_suffix("").as_posix()
    rest = item.nodeid.split("::", 1)[1] if "::" in item.nodeid else item.name
    return f"{module}::{rest}"


def _arg_selects_suite(arg: str, pyargs: bool) -> bool:
    target = arg.split("::", 1)[0]
    if pyargs and target.startswith("protoshim.conformance"):
        try:
            spec = importlib.util.find_spec(target)
        except (ImportError, ValueError):
            return False
        if spec is None or spec.origin is None:
            return False
        target = str(Path(spec.origin).parent if spec.submodule_search_locations else spec.origin)
    try:
        resolved = Path(target).resolve()
    except OSError:
        return False
    if not resolved.is_relative_to(SUITE_DIR):
        return False
    return resolved.is_dir() or _in_suite(resolved)


# --------------------------------------------------------------------------
# Hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--framework`` and ``--conformance-report``."""
    group = parser.getgroup("protoshim-conformance", "protoshim conformance suite")
    group.addoption(
        "--framework",
        default=None,
        metavar="NAME",
        help=f"protoshim adapter whose loop the conformance suite runs on "
        f"(default: {DEFAULT_FRAMEWORK}); one framework per process",
    )
    group.addoption(
        "--conformance-report",
        default=None,
        metavar="PATH",
        help="write the conformance results of this run as JSON to PATH",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and check ``--framework`` early."""
    config.addinivalue_line(
        "markers",
        "requires(*capabilities): skip unless the adapter under test provides every "
        "named capability (see protoshim.CAPABILITIES); the skip gives the adapter's reason",
    )
    framework: str | None = config.getoption("framework")
    report: str | None = config.getoption("conformance_report")
    pyargs = bool(config.getoption("pyargs", False))
    # --framework alone does not select the suite: other test directories may
    # use the fixtures with it.
    suite = any(_arg_selects_suite(str(arg), pyargs) for arg in config.args)
    requested = report is not None or suite
    state = _State(
        framework=framework or DEFAULT_FRAMEWORK,
        explicit=framework is not None,
        report_path=Path(report) if report else None,
        requested=requested,
    )
    config.stash[_STATE] = state
    config.pluginmanager.register(_SuiteHooks(state), "protoshim-conformance-suite")
    if state.explicit:
        adapter = state.adapter()  # a typo must fail now, as a usage error
        if not suite:
            # A project's own tests: every loop they make runs on the framework.
            state.switch = LoopSwitch(adapter)
            state.switch.install()
            config.pluginmanager.register(state.switch, "protoshim-loop-switch")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put back the event loop policy the switch replaced."""
    state = config.stash.get(_STATE, None)
    if state is not None and state.switch is not None:
        state.switch.uninstall()


def pytest_report_header(config: pytest.Config) -> str | None:
    """Name the adapter under test when the suite or a framework is selected."""
    state = _state(config)
    if not (state.requested or state.explicit):
        return None
    adapter = state.adapter()
    missing = ", ".join(sorted(adapter.missing)) or "none"
    return f"protoshim conformance: {adapter.name} {adapter.version()} (missing: {missing})"


class _SuiteHooks:
    """Per-run hooks: stable ids, outcomes, the no-pass rule and the report."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        """Give suite tests a stable id and make every warning an error for them."""
        if not _in_suite(item.path):
            return
        self.state.requested = True
        stable_id = self.state.stable_ids[item.nodeid] = _stable_id(item)
        # An adapter may declare tests it is known to fail (an optional
        # ``known_failures`` mapping of stable id -> reason).  They become
        # strict xfails: reported as such, and a fix shows up as XPASS.
        adapter = self.state.adapter()
        known: Mapping[str, str] = getattr(adapter, "known_failures", None) or {}
        if stable_id in known:
            reason = f"known {adapter.name} difference: {known[stable_id]}"
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
        # A third-party project's pytest configuration may not turn warnings
        # into errors; an unclosed transport's ResourceWarning must fail anyway.
        item.add_marker(pytest.mark.filterwarnings("error"))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Fold the setup/call/teardown reports of a suite test into one outcome."""
        stable_id = self.state.stable_ids.get(report.nodeid)
        if stable_id is None:
            if self.state.switch is None or self.state.report_path is None:
                return
            # A project's own test, reported under its node id.
            self.state.requested = True
            stable_id = self.state.stable_ids[report.nodeid] = report.nodeid
        result = _fold(self.state.results.get(stable_id), report)
        if result is not None:
            self.state.results[stable_id] = result

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Fail a suite run in which nothing passed, and write the JSON report."""
        state = self.state
        if not state.requested or session.config.getoption("collectonly"):
            return
        passed = sum(1 for result in state.results.values() if result.outcome == "passed")
        if passed == 0:
            counts = Counter(result.outcome for result in state.results.values())
            summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
            state.failure_message = (
                f"protoshim conformance: no test passed on framework {state.framework!r} "
                f"({summary or 'nothing ran'}); a run that checks nothing must not succeed"
            )
            if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if state.report_path is not None:
            _write_report(state)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Explain why a run that passed nothing failed, and where the report is."""
        if self.state.failure_message:
            terminalreporter.write_line(self.state.failure_message, red=True, bold=True)
        if self.state.report_path is not None and self.state.requested:
            terminalreporter.write_line(f"protoshim conformance report: {self.state.report_path}")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the progress file ``protoshim matrix`` watches, with the test count."""
    path = os.environ.get(PROGRESS_ENV)
    if path:
        Path(path).write_text(f"total {len(session.items)}\n", encoding="utf-8")


def pytest_runtest_logfinish(nodeid: str) -> None:
    """Add one line to the progress file per finished test."""
    path = os.environ.get(PROGRESS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as progress:
            progress.write(nodeid + "\n")


def record_outside_test(item: pytest.Item) -> None:
    """Count a test from outside the suite as one of this run's tests.

    A third-party suite run on the adapter (anyio's, say) calls this for each
    test it keeps: the test's outcome is folded, reported in
    ``--conformance-report`` under its node id, and counts for the rule that
    a run must pass something.
    """
    state = _state(item.config)
    state.requested = True
    state.stable_ids[item.nodeid] = item.nodeid


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test whose required capabilities the adapter lacks."""
    capabilities = [cap for mark in item.iter_markers("requires") for cap in mark.args]
    if not capabilities:
        return
    adapter = _state(item.config).adapter()
    for capability in capabilities:
        if not adapter.supports(capability):
            pytest.skip(f"{adapter.name} lacks {capability}: {adapter.missing[capability]}")


# --------------------------------------------------------------------------
# Report


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def failure_line(report: pytest.TestReport) -> str:
    """Return one stable line: the skip reason or the first line of the failure."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, "Skipped: reason")
        text = str(longrepr[2]).removeprefix("Skipped: ")
    else:
        crash = getattr(longrepr, "reprcrash", None)
        message = getattr(crash, "message", None)
        text = message if isinstance(message, str) else str(longrepr)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # Object addresses differ between runs and would make every cell "changed".
    return _ADDRESS.sub("0x…", lines[0])[:300] if lines else ""


def _fold(previous: _Result | None, report: pytest.TestReport) -> _Result | None:
    """Return the test's outcome after this phase, or None to keep the previous one."""
    wasxfail: str | None = getattr(report, "wasxfail", None)
    if report.when == "setup":
        return _fold_setup(report, wasxfail)
    if report.when == "call":
        return _fold_call(report, wasxfail)
    # teardown: an error here spoils a pass, but a failure stays a failure
    if report.failed and (previous is None or previous.outcome in ("passed", "skipped")):
        return _Result("error", failure_line(report))
    return None


def _fold_setup(report: pytest.TestReport, wasxfail: str | None) -> _Result | None:
    if report.failed:
        return _Result("error", failure_line(report))
    if not report.skipped:
        return None
    if wasxfail is not None:
        return _Result("xfailed", wasxfail)
    return _Result("skipped", failure_line(report))


def _fold_call(report: pytest.TestReport, wasxfail: str | None) -> _Result:
    if wasxfail is not None:
        return _Result("xfailed" if report.skipped else "xpassed", wasxfail)
    if report.failed:
        text = str(report.longrepr)
        if text.startswith("[XPASS(strict)]"):  # how xfail_strict reports a pass
            return _Result("xpassed", text.removeprefix("[XPASS(strict)]").strip())
        return _Result("failed", failure_line(report))
    return _Result(
        "skipped" if report.skipped else "passed", failure_line(report) if report.skipped else ""
    )


def _result_entry(state: _State, test_id: str, result: _Result) -> dict[str, Any]:
    entry: dict[str, Any] = {"outcome": result.outcome, "reason": result.reason}
    if state.switch is not None:
        entry["loops"] = state.switch.loops.get(test_id, [])
    return entry


def _write_report(state: _State) -> None:
    assert state.report_path is not None
    adapter = state.adapter()
    document = {
        "framework": adapter.name,
        "reference": adapter.reference,
        "version": adapter.version(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "results": {
            test_id: _result_entry(state, test_id, result)
            for test_id, result in sorted(state.results.items())
        },
    }
    state.report_path.parent.mkdir(parents=True, exist_ok=True)
    state.report_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------
# Strictness: exception handler and file descriptors


class ExceptionRecorder:
    """Stand in for the loop's exception handler and keep every context."""

    def __init__(self) -> None:
        self.contexts: list[Context] = []
        self.expected = False
        self._reported = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: Context) -> None:
        """Record one call of the exception handler."""
        self.contexts.append(context)

    def check(self) -> None:
        """Raise AssertionError for calls nobody expected (each call once)."""
        if self.expected:
            return
        new = self.contexts[self._reported :]
        self._reported = len(self.contexts)
        if new:
            details = "; ".join(_describe(context) for context in new)
            raise AssertionError(
                f"the loop's exception handler was called unexpectedly "
                f"({len(new)} time(s)): {details}"
            )


def _describe(context: Context) -> str:
    message = str(context.get("message", "")) or "<no message>"
    exc = context.get("exception")
    return f"{message} [{exc!r}]" if exc is not None else message


def open_fds() -> dict[int, str] | None:
    """Map this process's open descriptors to what they point at, or None if unknown."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(directory):
            break
    else:
        return None
    found: dict[int, str] = {}
    for name in os.listdir(directory):
        try:
            found[int(name)] = os.readlink(os.path.join(directory, name))
        except OSError:
            continue  # the descriptor listdir itself used, now closed
    return found


@pytest.fixture
def fd_guard(adapter: protoshim.Adapter) -> Iterator[None]:
    """Fail the test if it leaves more descriptors open than it found.

    Depends on ``adapter`` so that process-wide resources a framework creates
    on first use (reactors, hubs, resolvers) exist before the count is taken.
    """
    # No gc.collect() here: a full collection costs tens of milliseconds, and
    # garbage freed during the test can only lower the count, never fail it.
    before = open_fds()
    yield
    if before is None:
        return
    deadline = time.monotonic() + _FD_SETTLE_SECONDS
    while True:
        after = open_fds() or {}
        if len(after) <= len(before) or time.monotonic() >= deadline:
            break
        gc.collect()  # unreachable cycles may still hold sockets
        time.sleep(0.01)
    if len(after) > len(before):
        new = {fd: target for fd, target in after.items() if before.get(fd) != target}
        listing = ", ".join(f"{fd} -> {target}" for fd, target in sorted(new.items()))
        pytest.fail(
            f"test leaked {len(after) - len(before)} file descriptor(s): {listing}",
            pytrace=False,
        )


class _Quiet(asyncio.Protocol):
    """Tell when the connection is gone."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        """Resolve ``lost``."""
        if not self.lost.done():
            self.lost.set_result(None)


def _warm_up(adapter: protoshim.Adapter) -> None:
    """Exercise a first loop so one-time framework resources are not counted as leaks."""

    async def exercise(loop: asyncio.AbstractEventLoop) -> None:
        await asyncio.sleep(0)
        if adapter.supports("tcp"):
            accepted: list[_Quiet] = []

            def factory() -> _Quiet:
                accepted.append(_Quiet(loop))
                return accepted[-1]

            server = await loop.create_server(factory, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            transport, client = await loop.create_connection(
                lambda: _Quiet(loop), "127.0.0.1", port
            )
            transport.close()
            await client.lost
            while not accepted:
                await asyncio.sleep(0.01)
            await accepted[0].lost  # the server side closes on the client's EOF
            server.close()
            await server.wait_closed()
            await loop.getaddrinfo("localhost", port)
        if adapter.supports("threads"):
            await loop.run_in_executor(None, int)
        await asyncio.sleep(0.01)

    loop = adapter.new_event_loop()
    # Best effort: the tests themselves report anything that goes wrong here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.wait_for(exercise(loop), 5.0))
        finally:
            with contextlib.suppress(Exception):
                _close_loop(loop)
        gc.collect()


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def adapter(pytestconfig: pytest.Config) -> protoshim.Adapter:
    """Return the adapter selected with ``--framework``."""
    selected = _state(pytestconfig).adapter()
    _warm_up(selected)
    return selected


#: the HTTP parsers ``http_parser`` runs a test with
HTTP_PARSERS = ("h11", "httptools")


@pytest.fixture(params=HTTP_PARSERS)
def http_parser(request: pytest.FixtureRequest) -> str:
    """Return each HTTP request parser in turn; skip one that is not installed."""
    name: str = request.param
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"the {name} parser needs the {name} package")
    return name


@pytest.fixture
def loop(
    adapter: protoshim.Adapter, fd_guard: None, request: pytest.FixtureRequest
) -> Iterator[asyncio.AbstractEventLoop]:
    """Yield a new loop of the adapter, current for the test, closed afterwards."""
    recorder = ExceptionRecorder()
    request.node.stash[_RECORDER] = recorder
    new_loop = adapter.new_event_loop()
    new_loop.set_exception_handler(recorder)
    asyncio.set_event_loop(new_loop)
    try:
        yield new_loop
    finally:
        try:
            _close_loop(new_loop)
        finally:
            asyncio.set_event_loop(None)
        gc.collect()  # let __del__-time reports reach the recorder now
    try:
        recorder.check()
    finally:
        # Contexts hold transports and protocols; drop them before fd_guard counts.
        recorder.contexts.clear()


@pytest.fixture
def expect_exceptions(
    loop: asyncio.AbstractEventLoop, request: pytest.FixtureRequest
) -> list[Context]:
    """Return the list of exception handler contexts; calls no longer fail the test."""
    recorder: ExceptionRecorder = request.node.stash[_RECORDER]
    recorder.expected = True
    return recorder.contexts


@pytest.fixture
def run(
    loop: asyncio.AbstractEventLoop, adapter: protoshim.Adapter, request: pytest.FixtureRequest
) -> RunCoroutine:
    """Return ``run(coro, timeout=10.0)``: run ``coro`` on the test's loop."""
    recorder = request.node.stash[_RECORDER]
    watchdog = _Watchdog(loop) if adapter.supports("threads") else None
    hard_stop = float(request.config.getini("faulthandler_timeout") or 0) <= 0

    def run_coroutine(coro: Coroutine[Any, Any, T], timeout: float = DEFAULT_TIMEOUT) -> T:
        if hard_stop:
            faulthandler.dump_traceback_later(timeout + _HARD_STOP_GRACE, exit=True)
        try:
            if watchdog is None:
                result = loop.run_until_complete(_bounded(coro, timeout))
            else:
                with watchdog.armed(timeout + _WATCHDOG_GRACE):
                    result = loop.run_until_complete(_bounded(coro, timeout))
        finally:
            if hard_stop:
                faulthandler.cancel_dump_traceback_later()
        recorder.check()
        return result

    return run_coroutine


async def _bounded(coro: Awaitable[T], timeout: float) -> T:
    try:
        async with asyncio.timeout(timeout) as scope:
            return await coro
    except TimeoutError:
        if scope.expired():
            raise ConformanceTimeout(
                f"did not finish within {timeout:g} s: the loop under test hung or lost a wake-up"
            ) from None
        raise


class _Watchdog:
    """Stop a loop from another thread if its own timers never fire."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @contextlib.contextmanager
    def armed(self, seconds: float) -> Iterator[None]:
        done = threading.Event()

        def watch() -> None:
            if not done.wait(seconds):
                with contextlib.suppress(RuntimeError):  # loop already closed
                    self._loop.call_soon_threadsafe(self._loop.stop)

        thread = threading.Thread(target=watch, name="conformance-watchdog", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left, shut down generators and the executor, then close."""
    if loop.is_closed():
        return
    try:
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(
                _bounded(asyncio.gather(*tasks, return_exceptions=True), _TEARDOWN_TIMEOUT)
            )
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                loop.call_exception_handler(
                    {
                        "message": "unhandled exception in a task cancelled at teardown",
                        "exception": task.exception(),
                        "task": task,
                    }
                )
        loop.run_until_complete(_bounded(loop.shutdown_asyncgens(), _TEARDOWN_TIMEOUT))
        loop.run_until_complete(_bounded(loop.shutdown_default_executor(), _TEARDOWN_TIMEOUT))
    finally:
        loop.close()
