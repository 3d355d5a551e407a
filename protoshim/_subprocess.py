"""Pipes and subprocesses for :class:`protoshim.EventLoop`.

The transports are asyncio's own Unix pipe and subprocess transports: they
need nothing from a loop but ``call_soon`` and descriptor watching, which
every driver provides, so pipes and subprocesses behave exactly as on the
stdlib loop on every framework.

A child is waited for by a thread blocked in ``waitpid`` on its pid alone,
as the stdlib loop does by default.  Waiting on one pid (never on any child)
leaves alone the children that a framework reaps itself, and under gevent's
monkey-patching the thread is a greenlet and ``waitpid`` gevent's
cooperative one.
"""

from __future__ import annotations

import asyncio
import os
import threading
from asyncio import unix_events
from asyncio.log import logger
from typing import Any

__all__ = ["make_subprocess_transport", "read_pipe_transport", "write_pipe_transport"]

# Private in the stubs; these are the stdlib loop's own classes.
_ReadPipe: Any = getattr(unix_events, "_UnixReadPipeTransport")  # noqa: B009
_WritePipe: Any = getattr(unix_events, "_UnixWritePipeTransport")  # noqa: B009
_Subprocess: Any = getattr(unix_events, "_UnixSubprocessTransport")  # noqa: B009


def read_pipe_transport(
    loop: asyncio.AbstractEventLoop,
    pipe: Any,
    protocol: asyncio.BaseProtocol,
    waiter: asyncio.Future[None] | None = None,
    extra: dict[str, Any] | None = None,
) -> asyncio.ReadTransport:
    transport: asyncio.ReadTransport = _ReadPipe(loop, pipe, protocol, waiter, extra)
    return transport


def write_pipe_transport(
    loop: asyncio.AbstractEventLoop,
    pipe: Any,
    protocol: asyncio.BaseProtocol,
    waiter: asyncio.Future[None] | None = None,
    extra: dict[str, Any] | None = None,
) -> asyncio.WriteTransport:
    transport: asyncio.WriteTransport = _WritePipe(loop, pipe, protocol, waiter, extra)
    return transport


async def make_subprocess_transport(
    loop: asyncio.AbstractEventLoop,
    protocol: asyncio.BaseProtocol,
    args: Any,
    shell: bool,
    stdin: Any,
    stdout: Any,
    stderr: Any,
    bufsize: int,
    extra: dict[str, Any] | None = None,
    **kwargs: Any,
) -> asyncio.SubprocessTransport:
    """Start the child, watch it, and return once its pipes are connected."""
    waiter = loop.create_future()
    transport = _Subprocess(
        loop,
        protocol,
        args,
        shell,
        stdin,
        stdout,
        stderr,
        bufsize,
        waiter=waiter,
        extra=extra,
        **kwargs,
    )
    _watch_child(loop, transport)
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transport.close()
        await transport._wait()
        raise
    result: asyncio.SubprocessTransport = transport
    return result


def _watch_child(loop: asyncio.AbstractEventLoop, transport: Any) -> None:
    pid: int = transport.get_pid()
    thread = threading.Thread(
        target=_wait_for_exit, args=(loop, pid, transport), name=f"waitpid-{pid}", daemon=True
    )
    thread.start()


def _wait_for_exit(loop: asyncio.AbstractEventLoop, pid: int, transport: Any) -> None:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        # Reaped by someone else: the status is lost, as on the stdlib loop,
        # which logs it (a warning could kill this thread under -W error and
        # leave process.wait() hanging).
        returncode = 255
        logger.warning("Unknown child process pid %d, will report returncode 255", pid)
    else:
        returncode = os.waitstatus_to_exitcode(status)
    try:
        # One more turn of the loop first, so output read together with the
        # exit reaches the protocol before process_exited().
        loop.call_soon_threadsafe(loop.call_soon, transport._process_exited, returncode)
    except RuntimeError:
        pass  # the loop was closed while the child ran; nobody is listening
