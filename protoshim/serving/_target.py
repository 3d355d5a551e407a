"""What a server serves: ``MODULE:NAME`` turned into a protocol factory."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._errors import CliError, missing_package

if TYPE_CHECKING:
    from ..protocols.http import HTTPConfig, Lifespan

__all__ = ["Kind", "Target", "load_object", "load_target", "make_target"]

Kind = Literal["factory", "asgi", "wsgi"]


@dataclass(frozen=True)
class Target:
    """A protocol factory ready to serve, and how to describe it."""

    factory: Callable[[], asyncio.BaseProtocol]
    label: str
    #: the ASGI lifespan to run around the server, if any
    lifespan: Lifespan | None = None


def load_object(spec: str, app_dir: str = "") -> Any:
    """Import ``MODULE:NAME`` (NAME may be dotted) and return the object.

    ``app_dir`` (the current directory if empty) is searched first, as
    ``python -m`` and uvicorn do, so ``protoshim serve --asgi main:app`` finds
    ``./main.py``.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"expected MODULE:NAME, got {spec!r}")
    folder = os.path.abspath(app_dir or os.getcwd())
    if not os.path.isdir(folder):
        raise CliError(f"--app-dir: {app_dir} is not a directory")
    if folder not in sys.path and not (folder == os.getcwd() and "" in sys.path):
        sys.path.insert(0, folder)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise CliError(f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:  # the module's own code failed: say where, in one line
        raise CliError(f"cannot import {module_name!r}: {_where(exc)}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _where(exc: BaseException) -> str:
    """Describe an exception with the file and line it was raised at."""
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    # The innermost frame outside importlib's machinery is the app's line.
    mine = [f for f in frames if "importlib" not in f.filename]
    place = f" ({mine[-1].filename}, line {mine[-1].lineno})" if mine else ""
    return f"{type(exc).__name__}: {exc}{place}"


def load_target(
    kind: Kind,
    spec: str,
    config: HTTPConfig | None = None,
    *,
    root_path: str = "",
    lifespan: Literal["auto", "on", "off"] = "auto",
    app_dir: str = "",
) -> Target:
    """Import ``spec`` and wrap it as ``kind`` says, checking it can be called."""
    if kind != "factory":
        # Before the app's import, so a missing package is named as such.
        try:
            importlib.import_module("..protocols.http", __package__)
        except ImportError as exc:
            raise missing_package(exc, f"--{kind}") from None
    obj = load_object(spec, app_dir)
    if not callable(obj):
        raise CliError(f"{spec} is not callable")
    return make_target(kind, obj, spec, config, root_path=root_path, lifespan=lifespan)


def make_target(
    kind: Kind,
    obj: Callable[..., Any],
    label: str,
    config: HTTPConfig | None = None,
    *,
    root_path: str = "",
    lifespan: Literal["auto", "on", "off"] = "auto",
) -> Target:
    """Wrap an application or protocol factory already loaded as ``kind`` says."""
    if kind == "asgi":
        from ..protocols.http import Lifespan, asgi_server

        steps = Lifespan(obj, lifespan)
        return Target(asgi_server(obj, config, root_path=root_path, lifespan=steps), label, steps)
    if kind == "wsgi":
        from ..protocols.http import wsgi_protocol_factory

        return Target(wsgi_protocol_factory(obj, config, root_path), label)
    return Target(obj, label)
