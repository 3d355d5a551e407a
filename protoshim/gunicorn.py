"""gunicorn worker classes: gunicorn's arbiter over protoshim's loops and HTTP server.

::

    gunicorn -k protoshim.gunicorn.Worker -w 4 -b 127.0.0.1:8000 app:app
    PROTOSHIM_FRAMEWORK=twisted gunicorn -k protoshim.gunicorn.Worker app:app
    gunicorn -k protoshim.gunicorn.TwistedWorker app:app

``Worker`` runs on the framework named by ``PROTOSHIM_FRAMEWORK`` (default
``asyncio``); ``AsyncioWorker``, ``UvloopWorker``, ``SelectorsWorker``,
``TwistedWorker``, ``TornadoWorker``, ``GeventWorker`` and ``PyuvWorker``
each name theirs.  What gunicorn loads is served as an ASGI 3 application
if it is a coroutine function or its ``__call__`` is one, as a protocol
factory if it is an ``asyncio.BaseProtocol`` subclass, and as a WSGI
application otherwise; ``PROTOSHIM_INTERFACE=asgi|wsgi|protocol`` overrides
the guess.

The worker keeps gunicorn's contract (``gunicorn/workers/base.py``): it
notifies the arbiter every ``timeout / 2`` seconds, stops when its parent
changes, and after ``max_requests`` requests (plus jitter) it stops
gracefully so the arbiter starts a fresh one.  SIGTERM stops it gracefully
within ``graceful_timeout``; SIGINT and SIGQUIT stop it at once; SIGUSR1
reopens the log files; SIGABRT exits.  Serving and shutting down are
:class:`protoshim.serving.Server`'s, the same as ``protoshim serve``'s.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import ssl
import sys
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker as BaseWorker

from .serving import AppError, CliError, Server, Target, make_target, run_loop
from .serving._target import Kind

__all__ = [
    "FRAMEWORK_ENV",
    "INTERFACE_ENV",
    "AsyncioWorker",
    "GeventWorker",
    "PyuvWorker",
    "SelectorsWorker",
    "TornadoWorker",
    "TwistedWorker",
    "UvloopWorker",
    "Worker",
    "detect_interface",
]

#: names the framework of :class:`Worker`
FRAMEWORK_ENV = "PROTOSHIM_FRAMEWORK"
#: ``asgi``, ``wsgi`` or ``protocol``: how to serve the application, unguessed
INTERFACE_ENV = "PROTOSHIM_INTERFACE"

_KINDS: dict[str, Kind] = {"asgi": "asgi", "wsgi": "wsgi", "protocol": "factory"}
_LIFESPANS: dict[str, Literal["auto", "on", "off"]] = {"auto": "auto", "on": "on", "off": "off"}


def detect_interface(app: Any) -> str:
    """Guess how ``app`` is served: ``"asgi"``, ``"protocol"`` or ``"wsgi"``."""
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(
        getattr(app, "__call__", None)  # noqa: B004 -- the method itself is inspected
    ):
        return "asgi"
    if isinstance(app, type) and issubclass(app, asyncio.BaseProtocol):
        return "protocol"
    return "wsgi"


class Worker(BaseWorker):  # type: ignore[misc]  # gunicorn has no type information
    """Serve gunicorn's application on a protoshim loop, over gunicorn's sockets."""

    #: the adapter to run on; None reads ``PROTOSHIM_FRAMEWORK`` (default asyncio)
    framework: ClassVar[str | None] = None

    def init_signals(self) -> None:
        """Reset gunicorn's handlers: the loop installs its own in :meth:`run`."""
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)

    def run(self) -> None:
        """Serve until a signal, the request limit or the parent's exit."""
        self._framework = self.framework or os.environ.get(FRAMEWORK_ENV) or "asyncio"
        try:
            run_loop(self._framework, self._serve())
        except (AppError, CliError) as exc:
            # The arbiter stops rather than restart a worker that cannot boot.
            self.log.error("protoshim: %s", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    async def _serve(self) -> bool:
        loop = asyncio.get_running_loop()
        # Before the first connection, which may already reach max_requests.
        self._stopped = asyncio.Event()
        self._grace = float(self.cfg.graceful_timeout)
        kind, target = self._target()
        # A protocol factory's "request" is a connection; HTTP apps count requests.
        if kind == "factory":
            server = Server(target, on_connection=self._counted)
        else:
            server = Server(target, on_request=self._counted)
        await server.start([listener.sock for listener in self.sockets], self._ssl_context())
        interface = "protocol" if kind == "factory" else kind
        self.log.info("protoshim: serving %s (%s) on %s", target.label, interface, self._framework)
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self._stop,
            signal.SIGINT: self._quit,
            signal.SIGQUIT: self._quit,
            signal.SIGUSR1: self.log.reopen_files,
            signal.SIGABRT: self._abort,
        }
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        # gunicorn already passes half its timeout.  The beat goes on while
        # connections drain: the arbiter bounds that with graceful_timeout.
        self._beat(loop, self.timeout or 1.0)
        try:
            await self._stopped.wait()
            return await server.stop(self._grace)
        finally:
            for sig in handlers:
                loop.remove_signal_handler(sig)

    def _target(self) -> tuple[Kind, Target]:
        app = self.wsgi
        name = os.environ.get(INTERFACE_ENV) or detect_interface(app)
        kind = _KINDS.get(name)
        if kind is None:
            raise CliError(f"{INTERFACE_ENV}={name!r}: give asgi, wsgi or protocol")
        config = None
        if kind != "factory" and self.cfg.keepalive > 0:
            from .protocols.http import HTTPConfig

            config = HTTPConfig(keepalive_timeout=float(self.cfg.keepalive))
        label = str(getattr(self.app, "app_uri", None) or app)
        # Newer gunicorns have this setting, with the same three values.
        setting = getattr(self.cfg, "asgi_lifespan", None) or "auto"
        lifespan = _LIFESPANS.get(setting)
        if lifespan is None:
            raise CliError(f"asgi_lifespan={setting!r}: give auto, on or off")
        return kind, make_target(kind, app, label, config, lifespan=lifespan)

    def _counted(self) -> None:
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self._stop()

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.cfg.is_ssl:
            return None
        from gunicorn import sock

        if hasattr(sock, "ssl_context"):  # gunicorn 21 and later: honours its ssl_context hook
            context: ssl.SSLContext = sock.ssl_context(self.cfg)
            return context
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.cfg.ca_certs)
        context.load_cert_chain(self.cfg.certfile, self.cfg.keyfile)
        return context

    def _beat(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.notify()
        if self.ppid != os.getppid() and self.alive:
            self.log.info("Parent changed, shutting down: %s", self)
            self._stop()
        loop.call_later(interval, self._beat, loop, interval)

    def _stop(self) -> None:
        self.alive = False
        self._stopped.set()

    def _quit(self) -> None:
        self.cfg.worker_int(self)
        if self._stopped.is_set():
            # Already draining: quick means now, whatever is still running.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        self._grace = 0.0
        self._stop()

    def _abort(self) -> None:
        self.alive = False
        self.cfg.worker_abort(self)
        sys.exit(1)


class AsyncioWorker(Worker):
    """:class:`Worker` on the stdlib asyncio loop."""

    framework = "asyncio"


class UvloopWorker(Worker):
    """:class:`Worker` on uvloop."""

    framework = "uvloop"


class SelectorsWorker(Worker):
    """:class:`Worker` on protoshim's core over the stdlib selectors."""

    framework = "selectors"


class TwistedWorker(Worker):
    """:class:`Worker` on a Twisted reactor."""

    framework = "twisted"


class TornadoWorker(Worker):
    """:class:`Worker` on a Tornado IOLoop."""

    framework = "tornado"


class GeventWorker(Worker):
    """:class:`Worker` on the gevent hub."""

    framework = "gevent"


class PyuvWorker(Worker):
    """:class:`Worker` on a libuv loop through pyuv."""

    framework = "pyuv"
