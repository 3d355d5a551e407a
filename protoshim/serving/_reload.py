"""``--reload``: one supervised worker, replaced whenever the code changes.

The supervisor of ``--workers`` does the work: its parent holds the sockets
and never imports the application, and on SIGHUP it starts a worker that
imports the current code before it stops the old one, so connections are
never refused and broken code leaves the old worker serving.  Here a thread
watches the files and sends that SIGHUP.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path

from ._errors import CliError
from ._workers import Supervisor, WorkerMain

__all__ = ["run_reloading"]

logger = logging.getLogger("protoshim.error")


def run_reloading(main: WorkerMain, directories: Sequence[Path], grace: float) -> None:
    """Run ``main`` in one supervised worker, replaced when a Python file
    under ``directories`` changes, until SIGINT or SIGTERM."""
    try:
        from watchfiles import PythonFilter, watch
    except ImportError:
        raise CliError("--reload needs watchfiles: pip install 'protoshim[reload]'") from None
    for directory in directories:
        if not directory.is_dir():
            raise CliError(f"--reload-dir: {directory} is not a directory")
    stop = threading.Event()

    def watching() -> None:
        for changes in watch(*directories, watch_filter=PythonFilter(), stop_event=stop):
            names = sorted({os.path.relpath(path) for _, path in changes})
            logger.warning("protoshim: %s changed, reloading", ", ".join(names))
            os.kill(os.getpid(), signal.SIGHUP)

    logger.info("protoshim: watching %s for changes", ", ".join(map(str, directories)))
    watcher = threading.Thread(target=watching, name="protoshim-reload", daemon=True)
    watcher.start()
    try:
        Supervisor(main, 1, grace).run()
    finally:
        stop.set()
        watcher.join(timeout=5)
