"""Where a server's log records go: ``protoshim.error`` and ``protoshim.access``.

Two named loggers, as uvicorn and gunicorn have them:

- ``protoshim.error``: server events (serving, shutting down) and
  application errors with their tracebacks;
- ``protoshim.access``: one line per request, in the combined log format.

Without a configuration file, the server's own lines (below WARNING) and the
access log go to stdout, where scripts read ``protoshim: serving ... at
HOST:PORT``, and warnings and errors go to stderr.
"""

from __future__ import annotations

import importlib
import json
import logging
import logging.config
from pathlib import Path
from typing import Any, Literal

from ._errors import CliError

__all__ = ["LEVELS", "configure_logging", "logging_configured"]

#: holds "configured" once configure_logging has run
_done: set[str] = set()

LEVELS = ("critical", "error", "warning", "info", "debug")
Level = Literal["critical", "error", "warning", "info", "debug"]


class _Below(logging.Filter):
    """Let through records less severe than ``level``."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def _default_config(level: str) -> dict[str, Any]:
    plain = {"format": "%(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"below_warning": {"()": _Below, "level": logging.WARNING}},
        "formatters": {"plain": plain},
        "handlers": {
            "out": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "plain",
                "filters": ["below_warning"],
            },
            "err": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "plain",
                "level": "WARNING",
            },
            "access": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "plain",
            },
        },
        "loggers": {
            # The parent: protoshim.error and every other protoshim logger.
            "protoshim": {"handlers": ["out", "err"], "level": level.upper()},
            "protoshim.access": {
                "handlers": ["access"],
                "level": level.upper(),
                "propagate": False,
            },
        },
    }


def configure_logging(
    level: Level | None = None, config_file: str | None = None, access_log: bool | None = None
) -> None:
    """Set up the server's loggers; raise :class:`CliError` for a bad setting.

    ``config_file`` is a :func:`logging.config.dictConfig` file (``.json``,
    ``.yaml``/``.yml`` with PyYAML) or a :func:`logging.config.fileConfig`
    one (anything else, e.g. ``.ini``) that replaces the default setup.
    ``level`` (default ``info``) is the level of the ``protoshim`` loggers;
    with a file, only when given.  ``access_log`` False silences the access
    log, True forces it on at INFO, None leaves it to the rest.
    """
    if level is not None and level not in LEVELS:
        raise CliError(f"--log-level must be one of {', '.join(LEVELS)}, not {level!r}")
    if config_file is None:
        logging.config.dictConfig(_default_config(level or "info"))
    else:
        _apply_file(Path(config_file))
        if level is not None:
            for name in ("protoshim", "protoshim.error", "protoshim.access"):
                logging.getLogger(name).setLevel(level.upper())
    _done.add("configured")
    access = logging.getLogger("protoshim.access")
    if access_log is False:
        access.disabled = True
    elif access_log:
        access.disabled = False
        if not access.isEnabledFor(logging.INFO):
            access.setLevel(logging.INFO)


def logging_configured() -> bool:
    """Tell whether :func:`configure_logging` has run in this process."""
    return "configured" in _done


def _apply_file(path: Path) -> None:
    where = f"--log-config {path}"
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            with path.open(encoding="utf-8") as file:
                logging.config.dictConfig(json.load(file))
        elif suffix in (".yaml", ".yml"):
            try:
                yaml: Any = importlib.import_module("yaml")  # optional, untyped
            except ImportError:
                raise CliError(f"{where}: YAML needs PyYAML: pip install pyyaml") from None
            with path.open(encoding="utf-8") as file:
                logging.config.dictConfig(yaml.safe_load(file))
        else:
            if not path.is_file():
                raise CliError(f"{where}: no such file")
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except CliError:
        raise
    except OSError as exc:
        raise CliError(f"{where}: {exc.strerror or exc}") from None
    except Exception as exc:
        # dictConfig raises ValueError, fileConfig KeyError or configparser's
        # errors, PyYAML its own: each is a mistake in the file.
        raise CliError(f"{where}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
