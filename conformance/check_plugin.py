"""Check the conformance plugin itself: options, strictness, skips and the report.

Not part of the suite (its name does not match ``test_*.py``, so
``pytest conformance`` never collects it).  Run it explicitly::

    pytest conformance/check_plugin.py

Every check runs pytest in a subprocess, because the plugin's state, the
event loop policy and warnings filters are process-wide.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import protoshim

pytest_plugins = ["pytester"]

SUITE_TEST = "test_loop.py::test_call_soon_runs_callbacks_in_fifo_order"
SUITE_ID = "test_loop::test_call_soon_runs_callbacks_in_fifo_order"
TIMEOUT = 120


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=TIMEOUT)


def _suite(name: str = "") -> str:
    """Name a suite module or test for --pyargs-free runs from any directory."""
    return str(Path(__file__).resolve().parent / name)


@pytest.fixture
def fake_adapter(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> str:
    """Install a third-party style adapter, "fake", that declares every capability missing."""
    site = pytester.mkdir("site")
    (site / "fake_adapter.py").write_text(
        textwrap.dedent(
            """
            import dataclasses

            import protoshim

            ADAPTER = protoshim.Adapter(
                name="fake",
                loop_factory="asyncio:new_event_loop",
                requires="asyncio",
                distribution="fake-adapter",
                missing={cap: f"fake lacks {cap} on purpose" for cap in protoshim.CAPABILITIES},
            )


            @dataclasses.dataclass(frozen=True)
            class WithKnownFailures(protoshim.Adapter):
                known_failures: dict = dataclasses.field(default_factory=dict)


            KNOWN = WithKnownFailures(
                name="fake-known",
                loop_factory="asyncio:new_event_loop",
                requires="asyncio",
                distribution="fake-adapter",
                known_failures={
                    "test_loop::test_call_soon_runs_callbacks_in_fifo_order": "issue 0: pretend"
                },
            )
            """
        )
    )
    dist = site / "fake_adapter-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-adapter\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[protoshim.adapters]\nfake = fake_adapter:ADAPTER\nfake-known = fake_adapter:KNOWN\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(site))
    return "fake"


def test_unknown_framework_is_a_one_line_usage_error(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--framework", "no-such-loop", _suite())
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.strip()]
    assert len(errors) == 1
    assert "unknown framework 'no-such-loop'" in errors[0]
    for installed in protoshim.frameworks():
        assert installed in errors[0]


def test_report_has_stable_ids_and_outcomes(pytester: pytest.Pytester) -> None:
    report = pytester.path / "out" / "report.json"
    result = _run(
        pytester, "--framework", "asyncio", "--conformance-report", str(report), _suite(SUITE_TEST)
    )
    assert result.ret == pytest.ExitCode.OK
    document = json.loads(report.read_text())
    adapter = protoshim.get_adapter("asyncio")
    assert document["framework"] == "asyncio"
    assert document["version"] == adapter.version()
    assert document["python"].split()[-1] == adapter.version()  # the stdlib loop's version
    assert document["results"] == {SUITE_ID: {"outcome": "passed", "reason": ""}}


def test_report_ids_do_not_depend_on_how_the_suite_is_named(pytester: pytest.Pytester) -> None:
    report = pytester.path / "report.json"
    result = _run(
        pytester,
        "--pyargs",
        "protoshim.conformance.test_loop",
        "-k",
        "fifo_order",
        "--conformance-report",
        str(report),
    )
    assert result.ret == pytest.ExitCode.OK
    assert list(json.loads(report.read_text())["results"]) == [SUITE_ID]


def test_a_run_that_passes_nothing_fails(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--framework", "asyncio", "-k", "matches_no_test_at_all", _suite())
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*no test passed on framework 'asyncio'*"])


def test_missing_capabilities_skip_with_the_adapters_reason(
    pytester: pytest.Pytester, fake_adapter: str
) -> None:
    report = pytester.path / "report.json"
    result = _run(
        pytester,
        "--framework",
        fake_adapter,
        "--conformance-report",
        str(report),
        _suite("test_udp.py"),
    )
    # everything skipped: nothing passed, so the run fails
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*no test passed on framework 'fake'*"])
    document = json.loads(report.read_text())
    assert document["framework"] == "fake"
    assert document["version"] == "0.1"
    assert document["results"]
    reason = "fake lacks udp: fake lacks udp on purpose"
    for outcome in document["results"].values():
        assert outcome == {"outcome": "skipped", "reason": reason}


def test_a_third_party_adapter_runs_the_suite(pytester: pytest.Pytester, fake_adapter: str) -> None:
    # Tests that need no capability still run on an adapter that lacks them all.
    result = _run(pytester, "--framework", fake_adapter, _suite(SUITE_TEST))
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*protoshim conformance: fake 0.1*", "*1 passed*"])


def test_declared_known_failures_are_strict_xfails(
    pytester: pytest.Pytester, fake_adapter: str
) -> None:
    report = pytester.path / "report.json"
    result = _run(
        pytester,
        "--framework",
        "fake-known",
        "--conformance-report",
        str(report),
        _suite("test_loop.py"),
        "-k",
        "test_call_soon_",
    )
    # the declared failure passes on this loop: a strict XPASS fails the run
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    results = json.loads(report.read_text())["results"]
    assert results[SUITE_ID] == {
        "outcome": "xpassed",
        "reason": "known fake-known difference: issue 0: pretend",
    }
    assert results["test_loop::test_call_soon_passes_arguments"]["outcome"] == "passed"


STRICT_TESTS = """
import asyncio
import socket

import pytest

LEAKED = []


def test_unexpected_handler_call_fails(loop, run):
    async def main():
        loop.call_soon(lambda: 1 / 0)
        await asyncio.sleep(0.01)

    run(main())


def test_expected_handler_call_passes(loop, run, expect_exceptions):
    async def main():
        loop.call_soon(lambda: 1 / 0)
        await asyncio.sleep(0.01)

    run(main())
    assert isinstance(expect_exceptions[0]["exception"], ZeroDivisionError)


def test_leaked_descriptor_fails(loop, run):
    LEAKED.append(socket.socket())
    run(asyncio.sleep(0))


def test_hang_fails_instead_of_hanging(loop, run):
    run(asyncio.sleep(3600), timeout=0.2)


def test_loop_is_current_and_closed_afterwards(loop, run):
    assert asyncio.get_event_loop_policy().get_event_loop() is loop
    LEAKED.append(loop)


def test_previous_loop_was_closed():
    assert LEAKED[-1].is_closed()


@pytest.mark.requires("no-such-capability")
def test_unknown_capability_is_an_error():
    pass
"""


def test_strictness(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_strict=STRICT_TESTS)
    result = _run(pytester, "-v", "--framework", "asyncio", "test_strict.py")
    outcomes = result.parseoutcomes()
    result.stdout.fnmatch_lines_random(
        [
            "*test_unexpected_handler_call_fails FAILED*",
            "*test_expected_handler_call_passes PASSED*",
            "*test_leaked_descriptor_fails ERROR*",
            "*test_hang_fails_instead_of_hanging FAILED*",
            "*test_loop_is_current_and_closed_afterwards PASSED*",
            "*test_previous_loop_was_closed PASSED*",
            "*test_unknown_capability_is_an_error ERROR*",
            "*exception handler was called unexpectedly*ZeroDivisionError*",
            "*leaked 1 file descriptor(s)*socket:*",
            "*did not finish within 0.2 s*",
            "*unknown capability 'no-such-capability'*",
        ]
    )
    assert outcomes == {"passed": 4, "failed": 2, "errors": 2}
    # --framework alone does not make other tests part of the suite
    assert "no test passed" not in result.stdout.str()


def test_plugin_is_inert_for_other_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = _run(pytester, "test_plain.py")
    assert result.ret == pytest.ExitCode.OK
    assert "protoshim conformance" not in result.stdout.str()
    empty = _run(pytester, "-k", "nothing", "test_plain.py")
    assert empty.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert "no test passed" not in empty.stdout.str()
