"""The wheel holds one top-level package, ``protoshim``, and it imports."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
    )
    (found,) = out.glob("protoshim-*.whl")
    return found


def test_wheel_has_only_the_protoshim_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"protoshim", "twisted"}
    # Under twisted/ only the twistd drop-in, never a package of ours.
    assert [n for n in names if n.startswith("twisted/")] == [
        "twisted/plugins/protoshim_twistd.py"
    ]
    for expected in (
        "protoshim/py.typed",
        "protoshim/_loop.py",
        "protoshim/adapters/asyncio/__init__.py",
        "protoshim/adapters/selectors/_loop.py",
        "protoshim/protocols/echo/__init__.py",
        "protoshim/conformance/plugin.py",
    ):
        assert expected in names


def test_wheel_declares_entry_points(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    (entry_points,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
    text = archive.read(entry_points).decode()
    assert "[protoshim.adapters]" in text
    assert "asyncio = protoshim.adapters.asyncio:ASYNCIO" in text
    assert "[pytest11]" in text


def test_wheel_installs_and_imports(wheel: Path, tmp_path: Path) -> None:
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True
    )
    script = (
        "import protoshim, protoshim.protocols.echo, protoshim.adapters.selectors;"
        "import asyncio;"
        "print(sorted(protoshim.frameworks()));"
        "print(protoshim.run(asyncio.sleep(0, 'ran'), framework='selectors'))"
    )
    result = subprocess.run(
        [str(python), "-c", script], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    lines = result.stdout.splitlines()
    assert "'selectors'" in lines[0] and "'asyncio'" in lines[0]
    assert lines[1] == "ran"
