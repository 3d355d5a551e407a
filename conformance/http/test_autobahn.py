"""The Autobahn TestSuite's WebSocket cases (a quick selection) against the echo handler.

kosoku runs the cases from a child process; the loop under test serves.
``nox -s autobahn`` runs every case on each framework (about 13 minutes
each, mostly compressing large messages).
"""

from __future__ import annotations

import asyncio

import pytest

from protoshim.conformance.http._support import serving
from protoshim.conformance.plugin import RunCoroutine
from protoshim.conformance.thirdparty.autobahn import (
    QUICK_CASES,
    echo_server,
    failures,
    run_cases,
    summary,
)

pytest.importorskip("kosoku", reason="kosoku (the Autobahn case runner) is not installed")

pytestmark = pytest.mark.requires("tcp")


def test_autobahn_quick_cases_pass(loop: asyncio.AbstractEventLoop, run: RunCoroutine) -> None:
    async def main() -> None:
        async with serving(loop, echo_server()) as served:
            verdicts = await run_cases(served.port, QUICK_CASES)
        failed = failures(verdicts)
        assert not failed, f"{len(failed)} Autobahn cases failed ({summary(verdicts)}):\n" + (
            "\n".join(failed)
        )
        compression = [verdict for verdict in verdicts if verdict.case.startswith(("12.", "13."))]
        assert len(compression) == 9  # permessage-deflate is agreed and works
        assert len(verdicts) > 200

    run(main(), timeout=60)
