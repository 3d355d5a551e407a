"""The adapter registry: entry points, availability, and clear errors."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import protoshim


def test_asyncio_is_always_listed() -> None:
    listed = protoshim.frameworks()
    assert listed["asyncio"] == ".".join(map(str, sys.version_info[:3]))
    assert "selectors" in listed


def test_unknown_framework_names_the_installed_ones() -> None:
    with pytest.raises(protoshim.UnknownFramework, match=r"'nope'.*installed: .*asyncio"):
        protoshim.new_event_loop("nope")


def test_unknown_capability_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown capability"):
        protoshim.get_adapter("asyncio").supports("teleport")


def test_reference_adapter_is_the_stdlib_loop() -> None:
    loop = protoshim.new_event_loop("asyncio")
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
    finally:
        loop.close()


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Install a fake distribution that registers an adapter by entry point."""
    package = tmp_path / "thirdparty_loop.py"
    package.write_text(
        textwrap.dedent(
            """
            from protoshim import Adapter
            ADAPTER = Adapter(
                name="thirdparty",
                loop_factory="protoshim.adapters.selectors._loop:new_event_loop",
                requires="thirdparty_loop",
                distribution="thirdparty-loop",
                missing={"udp": "this framework has no datagrams"},
            )
            """
        )
    )
    dist = tmp_path / "thirdparty_loop-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-loop\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(
        "[protoshim.adapters]\nthirdparty = thirdparty_loop:ADAPTER\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "thirdparty"
    sys.modules.pop("thirdparty_loop", None)


def test_third_party_adapter_plugs_in_by_entry_point(third_party: str) -> None:
    assert protoshim.frameworks()[third_party] == "1.2.3"
    adapter = protoshim.get_adapter(third_party)
    assert not adapter.supports("udp")
    assert adapter.missing["udp"] == "this framework has no datagrams"
    assert protoshim.run(asyncio.sleep(0, "ok"), framework=third_party) == "ok"


def test_loops_are_created_and_closed_many_times() -> None:
    for name in protoshim.frameworks():
        for _ in range(5):
            assert protoshim.run(asyncio.sleep(0, name), framework=name) == name


def test_runner_accepts_loop_factory() -> None:
    with asyncio.Runner(loop_factory=protoshim.loop_factory("selectors")) as runner:
        loop = runner.get_loop()
        assert runner.run(asyncio.sleep(0, 7)) == 7
        assert type(loop).__name__ == "EventLoop"
