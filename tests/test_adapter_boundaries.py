"""Adapters use core only through its public module, ``protoshim.core``.

``docs/architecture.md`` promises that what an adapter needs of core is
part of the primitive interface: an adapter that imports a private module
of core (``protoshim._loop``, ``protoshim._fdio``...) reaches past it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"
SOURCES = sorted(ADAPTERS.glob("*/*.py"))


def core_imports(path: Path) -> list[tuple[int, str]]:
    """Return (line, module) for each import of a protoshim module outside the adapter."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level >= 3:  # from ...X: the protoshim package itself
                found.append((node.lineno, "protoshim." + (node.module or "")))
            elif node.level == 0 and (node.module or "").startswith("protoshim"):
                found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("protoshim")]
    return found


def test_every_adapter_is_checked() -> None:
    assert {p.parent.name for p in SOURCES} >= {
        "asyncio",
        "selectors",
        "twisted",
        "tornado",
        "gevent",
        "pyuv",
    }


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_an_adapter_imports_only_protoshim_core(path: Path) -> None:
    wrong = [
        f"line {line}: {module}"
        for line, module in core_imports(path)
        if module != "protoshim.core"
    ]
    assert not wrong, f"{path.parent.name}/{path.name} imports core's private modules: {wrong}"
