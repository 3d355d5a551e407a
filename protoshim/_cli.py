"""The ``protoshim`` command: serve a protocol factory on any framework.

Every failure a user can cause (a bad ``MODULE:FACTORY``, an unknown
framework, a port in use) ends in one line on stderr and exit status 2.  An
ASGI application whose lifespan startup fails ends in one line and status 3.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._registry import UnknownFramework, frameworks, get_adapter
from .serving import SHUTDOWN_GRACE, AppError, CliError, Target, bind_tcp, load_target, run_server
from .serving._errors import missing_package
from .serving._workers import Started, Supervisor

if TYPE_CHECKING:
    from .protocols.http import HTTPConfig

__all__ = ["main"]

USAGE_ERROR = 2
#: the application itself refused to start (uvicorn uses the same status)
APP_ERROR = 3


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535; 0 picks a free one)")
    return port


def _workers(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count} workers: give at least 1")
    return count


def _http_config(args: argparse.Namespace) -> HTTPConfig | None:
    if not args.http:
        return None
    from .protocols.http import HTTPConfig

    try:
        return HTTPConfig(parser=args.http)
    except ValueError as exc:
        raise CliError(f"--http: {exc}") from None


def _serve_target(args: argparse.Namespace, load: Callable[[], Target]) -> None:
    if args.grace < 0:
        raise CliError(f"--grace must be >= 0, got {args.grace}")
    if args.workers > 1:
        sockets = bind_tcp(args.host, args.port)

        # Each worker imports the application after the fork, as gunicorn
        # does: what it imports (a framework, a reactor) is never forked, and
        # the workers SIGHUP starts run the current code.
        def worker(started: Started) -> int:
            return _report(
                lambda: run_server(load(), sockets, args.framework, args.grace, started=started)
            )

        Supervisor(worker, args.workers, args.grace).run()
        return
    target = load()  # a broken app is reported before the port is taken
    run_server(target, bind_tcp(args.host, args.port), args.framework, args.grace)


def _cmd_serve(args: argparse.Namespace) -> None:
    get_adapter(args.framework)  # an unknown name fails before any import
    given = [what for what in (args.factory, args.asgi, args.wsgi) if what]
    if len(given) > 1:
        raise CliError("give one of MODULE:FACTORY, --asgi MODULE:APP and --wsgi MODULE:APP")
    if not given:
        raise CliError("give a MODULE:FACTORY, --asgi MODULE:APP or --wsgi MODULE:APP")
    config = _http_config(args)
    if args.asgi:
        load = functools.partial(
            load_target, "asgi", args.asgi, config, root_path=args.root_path, lifespan=args.lifespan
        )
    elif args.wsgi:
        load = functools.partial(load_target, "wsgi", args.wsgi, config)
    else:
        load = functools.partial(load_target, "factory", args.factory)
    _serve_target(args, load)


def _cmd_demo(args: argparse.Namespace) -> None:
    get_adapter(args.framework)
    try:
        from .examples.echo_test import protocol_factory
    except ImportError as exc:
        raise missing_package(exc, "the demo") from None

    _serve_target(args, lambda: Target(protocol_factory(args.port), "the Echo Test demo"))


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
        sub.add_argument(
            "--workers",
            type=_workers,
            default=1,
            metavar="N",
            help="worker processes sharing the port, restarted if they die (default: 1, no fork)",
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
    return _report(lambda: args.handler(args))


def _report(run: Callable[[], None]) -> int:
    """Run ``run``; turn the failures a user can cause into one line and a status."""
    try:
        run()
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
