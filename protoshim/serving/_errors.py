"""The two ways serving fails before it starts, each reported in one line."""

from __future__ import annotations

__all__ = ["AppError", "CliError", "missing_package"]


class CliError(Exception):
    """A mistake in the command line or the environment, reported in one line."""


class AppError(Exception):
    """The application failed to start or stop, reported in one line."""


def missing_package(exc: ImportError, what: str) -> CliError:
    """Say which package ``what`` lacks, and the extra that installs it."""
    package = exc.name or "a missing package"
    return CliError(f"{what} needs {package}: pip install 'protoshim[http]'")
