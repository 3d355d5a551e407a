"""Hostile HTTP input: a corpus of malformed and smuggling requests.

Each file of ``corpus/`` is sent on its own connection, followed by a
pipelined canary request.  The server must answer with the status the file
name gives (400, 413, 431 or 501) and ``Connection: close``, then close
without answering the canary; nothing may reach the application, and
nothing may be logged as an error.  The server must still serve afterwards.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from protoshim.conformance.http._support import Served, request, serving, small_config
from protoshim.conformance.plugin import RunCoroutine
from protoshim.conformance.reliability._servers import App, no_tracebacks
from protoshim.protocols.http import HTTPServerProtocol, ParserName

from .conftest import Figure

pytestmark = [pytest.mark.slow, pytest.mark.requires("tcp")]

CORPUS = Path(__file__).resolve().parent / "corpus"
CANARY = b"GET /canary HTTP/1.1\r\nHost: t\r\n\r\n"
STATUSES = {400, 413, 431, 501}
#: the server's body limit, which the 413 cases exceed
MAX_BODY = 1024 * 1024


def corpus() -> list[tuple[str, int, bytes]]:
    """Return (name, expected status, raw bytes) for every corpus file."""
    cases = []
    for path in sorted(CORPUS.glob("*.http")):
        status = int(path.name.split("-", 1)[0])
        cases.append((path.stem, status, path.read_bytes()))
    return cases


def test_corpus_is_large_and_well_named(figure: Figure) -> None:
    cases = corpus()
    figure("cases", len(cases), headline=True)
    assert len(cases) >= 40, f"only {len(cases)} cases in {CORPUS}"
    assert {status for _, status, _ in cases} == STATUSES


async def _refusal(served: Served, raw: bytes) -> tuple[int, str | None, bytes]:
    """Send ``raw`` and the canary; return the status, Connection header and what followed."""
    client = await served.connect()
    client.send(raw + CANARY)
    response = await client.response()
    rest = await client.everything()
    client.tr.close()
    await asyncio.shield(client.lost)
    return response.status, response.header("connection"), rest


def test_every_hostile_request_is_refused_and_the_canary_never_answered(
    loop: asyncio.AbstractEventLoop,
    run: RunCoroutine,
    caplog: pytest.LogCaptureFixture,
    figure: Figure,
    http_parser: ParserName,
) -> None:
    app = App()
    config = small_config(max_body_size=MAX_BODY, header_timeout=5.0, parser=http_parser)

    async def main() -> tuple[dict[str, str], int]:
        wrong: dict[str, str] = {}
        async with serving(loop, lambda: HTTPServerProtocol(app, config)) as served:
            for name, expected, raw in corpus():
                status, connection, rest = await _refusal(served, raw)
                if (status, connection, rest) != (expected, "close", b""):
                    wrong[name] = f"{status} {connection!r} then {rest[:60]!r}"
            # Still serving: an ordinary request on a new connection.
            good = await served.exchange(request("GET", "/"))
            return wrong, good.status

    wrong, good_status = run(main(), timeout=60)
    cases = len(corpus())
    figure("refused as expected", f"{cases - len(wrong)}/{cases}", headline=True)
    assert wrong == {}
    assert app.calls == 1  # only the good request reached the application
    assert good_status == 200
    no_tracebacks(caplog)
