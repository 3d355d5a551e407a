"""``--reload``: serve from a child process that is replaced when code changes.

The parent binds the listeners and never imports the application; each child
is forked from it, so it imports the application afresh and inherits the same
sockets.  Connections that arrive while a child is being replaced wait in the
listen backlog instead of being refused.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from ._errors import CliError

__all__ = ["run_reloading"]

logger = logging.getLogger("protoshim.error")

#: How long a child that does not stop on SIGTERM gets beyond the grace period.
_STOP_MARGIN = 5.0


def run_reloading(serve: Callable[[], int], directories: Sequence[Path], grace: float) -> int:
    """Run ``serve`` in a forked child, fork a new one whenever a Python file
    under ``directories`` changes, and stop on SIGINT or SIGTERM.

    ``serve`` returns the child's exit status; a child that fails (a syntax
    error, say) is not retried until the next change.
    """
    try:
        from watchfiles import PythonFilter, watch
    except ImportError:
        raise CliError("--reload needs watchfiles: pip install 'protoshim[reload]'") from None
    for directory in directories:
        if not directory.is_dir():
            raise CliError(f"--reload-dir: {directory} is not a directory")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    watched = ", ".join(str(d) for d in directories)
    logger.info("protoshim: watching %s for changes", watched)
    child: int | None = _fork(serve, previous)
    try:
        for changes in watch(
            *directories,
            watch_filter=PythonFilter(),
            stop_event=stop,
            yield_on_timeout=True,
            rust_timeout=1000,
            raise_interrupt=False,
        ):
            if child is not None and _exited(child):
                child = None
            if not changes:
                continue
            names = sorted({os.path.relpath(path) for _, path in changes})
            logger.warning("protoshim: %s changed, reloading", ", ".join(names))
            if child is not None:
                _stop(child, grace)
            child = _fork(serve, previous)
    finally:
        if child is not None:
            _stop(child, grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _fork(serve: Callable[[], int], handlers: Mapping[signal.Signals, Any]) -> int:
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        # The child serves with the signal handling it would have alone.
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        status = serve()
    except BaseException:
        logger.exception("protoshim: the server failed")
    finally:
        logging.shutdown()
        os._exit(status)


def _exited(pid: int) -> bool:
    done, status = os.waitpid(pid, os.WNOHANG)
    if not done:
        return False
    code = os.waitstatus_to_exitcode(status)
    if code:
        logger.warning("protoshim: the server exited with status %d; waiting for changes", code)
    return True


def _stop(pid: int, grace: float) -> None:
    """SIGTERM the child, and SIGKILL it if it outlives the grace period."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace + _STOP_MARGIN
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
