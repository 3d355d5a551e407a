"""The ``protoshim`` command: serve a protocol factory on any framework.

Every failure a user can cause (a bad ``MODULE:FACTORY``, an unknown
framework, a port in use) ends in one line on stderr and exit status 2.  An
ASGI application whose lifespan startup fails ends in one line and status 3.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._registry import UnknownFramework, frameworks, get_adapter

if TYPE_CHECKING:
    from .protocols.http import HTTPConfig, Lifespan

__all__ = ["main"]

USAGE_ERROR = 2
#: the application itself refused to start (uvicorn uses the same status)
APP_ERROR = 3
#: Seconds that open connections get to finish after Ctrl-C or SIGTERM.
SHUTDOWN_GRACE = 5.0
#: A protocol with this method is asked to finish its current work and then
#: close; any other protocol's transport is closed (flushed) at once.
SHUTDOWN_HOOK = "begin_shutdown"


class CliError(Exception):
    """A mistake in the command line or the environment, reported in one line."""


class AppError(Exception):
    """The application failed to start or stop, reported in one line."""


def load_object(spec: str) -> Any:
    """Import ``MODULE:NAME`` (NAME may be dotted) and return the object.

    The current directory is searched first, as ``python -m`` and uvicorn do,
    so ``protoshim serve --asgi main:app`` finds ``./main.py``.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"expected MODULE:NAME, got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
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


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535; 0 picks a free one)")
    return port


def _missing(exc: ImportError, what: str) -> CliError:
    """Say which package ``what`` lacks, and the extra that installs it."""
    package = exc.name or "a missing package"
    return CliError(f"{what} needs {package}: pip install 'protoshim[http]'")


class _Connections:
    """Track the transports of a server so shutdown can close each one."""

    def __init__(self) -> None:
        self.open: dict[asyncio.BaseTransport, asyncio.BaseProtocol] = {}
        self.idle: asyncio.Event | None = None

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], Any]:
        def tracked() -> asyncio.BaseProtocol:
            protocol = factory()
            made, lost = protocol.connection_made, protocol.connection_lost
            transports: list[asyncio.BaseTransport] = []

            def connection_made(transport: asyncio.BaseTransport) -> None:
                transports.append(transport)
                self.open[transport] = protocol
                made(transport)

            def connection_lost(exc: Exception | None) -> None:
                try:
                    lost(exc)
                finally:
                    for transport in transports:
                        self.open.pop(transport, None)
                    if not self.open and self.idle is not None:
                        self.idle.set()

            # Instance attributes shadow the class's methods, so the protocol's
            # own class (Protocol or BufferedProtocol) is left untouched.
            protocol.connection_made = connection_made  # type: ignore[method-assign]
            protocol.connection_lost = connection_lost  # type: ignore[method-assign]
            return protocol

        return tracked

    async def close_all(self, timeout: float) -> bool:
        """Close every connection; return True if some had to be aborted."""
        if not self.open:
            return False
        self.idle = asyncio.Event()
        for transport, protocol in list(self.open.items()):
            hook = getattr(protocol, SHUTDOWN_HOOK, None)
            if callable(hook):
                hook()
            else:
                transport.close()
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            for transport in list(self.open):
                # Not an isinstance check: uvloop's transports do not
                # inherit from asyncio's classes.
                abort = getattr(transport, "abort", None)
                if callable(abort):
                    abort()
            return True
        return False


async def _serve(
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    label: str,
    framework: str,
    grace: float,
    lifespan: Lifespan | None = None,
) -> bool:
    loop = asyncio.get_running_loop()
    connections = _Connections()
    if lifespan is not None:
        await _lifespan_step(lifespan.startup)
    try:
        server = await loop.create_server(connections.wrap(factory), host, port)
    except OSError as exc:
        if lifespan is not None:
            await _lifespan_step(lifespan.shutdown)
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    addresses = ", ".join(_format(s.getsockname()) for s in server.sockets)
    print(
        f"protoshim: serving {label} on {framework} at {addresses} (Ctrl-C to stop)",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        print("protoshim: shutting down", flush=True)
        server.close()
        forced = await connections.close_all(grace)
        await server.wait_closed()
        if lifespan is not None:
            await _lifespan_step(lifespan.shutdown)
    return forced


async def _lifespan_step(step: Callable[[], Awaitable[None]]) -> None:
    from .protocols.http import LifespanFailed

    try:
        await step()
    except LifespanFailed as exc:
        raise AppError(str(exc)) from None


def _format(address: Any) -> str:
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


def _run_server(
    args: argparse.Namespace,
    factory: Callable[[], asyncio.BaseProtocol],
    label: str,
    lifespan: Lifespan | None = None,
) -> None:
    if args.grace < 0:
        raise CliError(f"--grace must be >= 0, got {args.grace}")
    adapter = get_adapter(args.framework)
    with asyncio.Runner(loop_factory=adapter.new_event_loop) as runner:
        forced = runner.run(
            _serve(factory, args.host, args.port, label, args.framework, args.grace, lifespan)
        )
        if forced:
            # Work that outlived the grace period may still hold executor
            # threads, which no one can stop and the interpreter would wait
            # for at exit: the connections are gone, so leave now.
            print(
                "protoshim: connections outlived the grace period and were aborted",
                file=sys.stderr,
                flush=True,
            )
            sys.stdout.flush()
            os._exit(0)


def _http_config(args: argparse.Namespace) -> HTTPConfig | None:
    if not args.http:
        return None
    from .protocols.http import HTTPConfig

    try:
        return HTTPConfig(parser=args.http)
    except ValueError as exc:
        raise CliError(f"--http: {exc}") from None


def _cmd_serve(args: argparse.Namespace) -> None:
    get_adapter(args.framework)  # an unknown name fails before any import
    given = [what for what in (args.factory, args.asgi, args.wsgi) if what]
    if len(given) > 1:
        raise CliError("give one of MODULE:FACTORY, --asgi MODULE:APP and --wsgi MODULE:APP")
    config = _http_config(args)
    if args.asgi:
        try:
            from .protocols.http import Lifespan, asgi_server
        except ImportError as exc:
            raise _missing(exc, "--asgi") from None

        app = load_object(args.asgi)
        if not callable(app):
            raise CliError(f"{args.asgi} is not callable")
        lifespan = Lifespan(app, args.lifespan)
        serve_asgi = asgi_server(app, config, root_path=args.root_path, lifespan=lifespan)
        _run_server(args, serve_asgi, args.asgi, lifespan)
        return
    if args.wsgi:
        app = load_object(args.wsgi)
        if not callable(app):
            raise CliError(f"{args.wsgi} is not callable")
        try:
            from .protocols.http import wsgi_protocol_factory
        except ImportError as exc:
            raise _missing(exc, "--wsgi") from None
        factory: Any = wsgi_protocol_factory(app, config)
        label = args.wsgi
    elif args.factory:
        factory = load_object(args.factory)
        label = args.factory
    else:
        raise CliError("give a MODULE:FACTORY, --asgi MODULE:APP or --wsgi MODULE:APP")
    if not callable(factory):
        raise CliError(f"{label} is not callable")
    _run_server(args, factory, label)


def _cmd_demo(args: argparse.Namespace) -> None:
    get_adapter(args.framework)
    try:
        from .examples.echo_test import protocol_factory
    except ImportError as exc:
        raise _missing(exc, "the demo") from None

    _run_server(args, protocol_factory(args.port), "the Echo Test demo")


def _cmd_frameworks(args: argparse.Namespace) -> None:
    for name, version in frameworks().items():
        adapter = get_adapter(name)
        missing = f"  (missing: {', '.join(sorted(adapter.missing))})" if adapter.missing else ""
        print(f"{name:<10} {version:<10} {adapter.description}{missing}")


def _cmd_install_pyuv(args: argparse.Namespace) -> None:
    from ._pyuv_build import PyuvBuildError, install_pyuv

    try:
        print(install_pyuv(python=args.python, cache_dir=args.cache_dir, quiet=args.quiet))
    except PyuvBuildError as exc:
        raise CliError(str(exc)) from None


def _version() -> str:
    import importlib.metadata
    import platform

    try:
        mine = importlib.metadata.version("protoshim")
    except importlib.metadata.PackageNotFoundError:
        mine = "unknown"
    installed = ", ".join(f"{name} {version}" for name, version in frameworks().items())
    return f"protoshim {mine} (Python {platform.python_version()}; {installed})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protoshim",
        description="Run PEP 3156 protocols on any framework.",
        # --version prints one line, unwrapped
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve a protocol factory, an ASGI or a WSGI app")
    serve.add_argument("factory", nargs="?", metavar="MODULE:FACTORY")
    serve.add_argument("--asgi", metavar="MODULE:APP", help="serve an ASGI 3 application")
    serve.add_argument("--wsgi", metavar="MODULE:APP", help="serve a WSGI application over HTTP")
    serve.add_argument(
        "--lifespan",
        choices=("auto", "on", "off"),
        default="auto",
        help="run the ASGI lifespan scope: auto skips it if the app does not support it",
    )
    serve.add_argument(
        "--root-path", default="", metavar="PATH", help="where the ASGI app is mounted"
    )
    serve.add_argument(
        "--http",
        choices=("h11", "httptools"),
        help="HTTP request parser (default: httptools if installed)",
    )
    serve.set_defaults(handler=_cmd_serve)

    demo = commands.add_parser("demo", help="serve the Echo Test demo (Flask, WebSocket, assets)")
    demo.set_defaults(handler=_cmd_demo)

    for sub, default_port in ((serve, 8888), (demo, 8081)):
        sub.add_argument("--framework", default="asyncio", help="adapter name (default: asyncio)")
        sub.add_argument("--host", default="127.0.0.1", help="address to listen on")
        sub.add_argument("--port", type=_port, default=default_port, help="TCP port to listen on")
        sub.add_argument(
            "--grace",
            type=float,
            default=SHUTDOWN_GRACE,
            metavar="SECONDS",
            help="time open connections get to finish on Ctrl-C or SIGTERM (default: %(default)s)",
        )

    # Only listed here: main() hands everything after "matrix" to its own parser.
    commands.add_parser(
        "matrix", help="run a pytest command on every framework and draw the grid", add_help=False
    )

    listing = commands.add_parser("frameworks", help="list the installed adapters")
    listing.set_defaults(handler=_cmd_frameworks)

    pyuv = commands.add_parser("install-pyuv", help="build and install a pyuv for this Python")
    pyuv.add_argument("--python", default=sys.executable, help="interpreter to install into")
    pyuv.add_argument("--cache-dir", type=Path, default=None, help="where built wheels are kept")
    pyuv.add_argument("--quiet", action="store_true", help="print only the result")
    pyuv.set_defaults(handler=_cmd_install_pyuv)
    return parser


def _matrix(argv: list[str]) -> int:
    # Its own parser: everything after `--` is the user's pytest command.
    from .conformance.runner import main as matrix_main

    try:
        return matrix_main(argv)
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["matrix"]:
        return _matrix(given[1:])
    args = _parser().parse_args(given)
    try:
        args.handler(args)
    except (CliError, UnknownFramework) as exc:
        print(f"protoshim: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except AppError as exc:
        print(f"protoshim: error: {exc}", file=sys.stderr)
        return APP_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``protoshim frameworks | head``): not an error,
        # and the interpreter must not complain when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
