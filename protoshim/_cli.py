"""The ``protoshim`` command: serve a protocol factory on any framework.

Every failure a user can cause (a bad ``MODULE:FACTORY``, an unknown
framework, a port in use) ends in one line on stderr and exit status 2.  An
ASGI application whose lifespan startup fails ends in one line and status 3.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import ssl
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._registry import UnknownFramework, frameworks, get_adapter
from .serving import (
    DEFAULT_BACKLOG,
    HTTP_ALPN,
    LEVELS,
    SHUTDOWN_GRACE,
    AppError,
    Bind,
    CliError,
    Target,
    TLSConfig,
    activated_binds,
    configure_logging,
    load_target,
    open_listeners,
    parse_bind,
    parse_cert_reqs,
    run_server,
)
from .serving._errors import missing_package
from .serving._listen import parse_fd
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


#: HTTPConfig fields set by options of the serve command's "HTTP" group
_HTTP_OPTIONS = {
    "http": "parser",
    "proxy_headers": "proxy_headers",
    "forwarded_allow_ips": "forwarded_allow_ips",
    "timeout_keep_alive": "keepalive_timeout",
    "limit_concurrency": "limit_concurrency",
}


def _workers(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count} workers: give at least 1")
    return count


def _http_config(args: argparse.Namespace) -> HTTPConfig | None:
    given = {
        field: getattr(args, option)
        for option, field in _HTTP_OPTIONS.items()
        if getattr(args, option) is not None
    }
    if not given:
        return None
    if args.factory:
        first = next(option for option, field in _HTTP_OPTIONS.items() if field in given)
        raise CliError(f"--{first.replace('_', '-')} needs --asgi or --wsgi")
    from .protocols.http import HTTPConfig

    for option, field in _HTTP_OPTIONS.items():
        if field in given:
            try:
                HTTPConfig(**{field: given[field]})
            except ValueError as exc:
                raise CliError(f"--{option.replace('_', '-')}: {exc}") from None
    trusted = os.environ.get("FORWARDED_ALLOW_IPS")
    if trusted is not None and args.proxy_headers and args.forwarded_allow_ips is None:
        given["forwarded_allow_ips"] = trusted  # as uvicorn: the option wins over it
    try:
        return HTTPConfig(**given)
    except ValueError as exc:  # FORWARDED_ALLOW_IPS, the one value not from an option
        raise CliError(f"FORWARDED_ALLOW_IPS: {exc}") from None


def _binds(args: argparse.Namespace) -> list[Bind]:
    """Every listener the options name: --host/--port is one of them when
    either is given, or when no other listener is."""
    binds = [parse_bind(text) for text in args.bind]
    if args.uds is not None:
        binds.append(Bind("unix", path=args.uds))
    if args.fd is not None:
        binds.append(Bind("fd", fd=parse_fd(args.fd, "--fd")))
    binds.extend(activated_binds())
    if args.host is not None or args.port is not None or not binds:
        host = "127.0.0.1" if args.host is None else args.host
        port = args.default_port if args.port is None else args.port
        binds.insert(0, Bind("tcp", host=host, port=port))
    return binds


def _serve_target(
    args: argparse.Namespace, load: Callable[[], Target], alpn: Sequence[str] = ()
) -> None:
    if args.grace < 0:
        raise CliError(f"--grace must be >= 0, got {args.grace}")
    max_requests = getattr(args, "limit_max_requests", None)
    if max_requests is not None and getattr(args, "factory", None):
        raise CliError("--limit-max-requests needs --asgi or --wsgi")
    if not args.backlog.isdigit() or int(args.backlog) < 1:
        raise CliError(f"--backlog must be a whole number >= 1, got {args.backlog!r}")
    backlog = int(args.backlog)
    cert_reqs = ssl.CERT_NONE if args.cert_reqs is None else parse_cert_reqs(args.cert_reqs)
    tls = TLSConfig(args.certfile, args.keyfile, args.keyfile_password, args.ca_certs, cert_reqs)
    context = tls.context(alpn)
    binds = _binds(args)
    configure_logging(
        getattr(args, "log_level", None),
        getattr(args, "log_config", None),
        getattr(args, "access_log", None),
    )

    def serve(target: Target, sockets: list[socket.socket], started: Started | None = None) -> None:
        run_server(
            target,
            sockets,
            args.framework,
            args.grace,
            context,
            backlog,
            max_requests=max_requests,
            started=started,
        )

    if args.workers > 1 and args.reload:
        raise CliError("--reload and --workers cannot be combined")
    if args.workers == 1 and not args.reload:
        target = load()  # a broken app is reported before the port is taken
        with open_listeners(binds, backlog) as listeners:
            serve(target, listeners.sockets)
        return
    with open_listeners(binds, backlog) as listeners:
        sockets = listeners.sockets
        # Each child imports the application after the fork, as gunicorn does:
        # what it imports (a framework, a reactor) is never forked, and the
        # children that SIGHUP or a change of code start run the current code.
        if args.workers > 1:
            Supervisor(
                lambda started: _report(lambda: serve(load(), sockets, started)),
                args.workers,
                args.grace,
            ).run()
        else:
            from .serving._reload import run_reloading

            directories = args.reload_dir or [Path(args.app_dir or os.getcwd())]
            run_reloading(
                lambda started: _report(lambda: serve(load(), sockets, started)),
                directories,
                args.grace,
            )


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
            load_target,
            "asgi",
            args.asgi,
            config,
            root_path=args.root_path,
            lifespan=args.lifespan,
            app_dir=args.app_dir,
        )
    elif args.wsgi:
        load = functools.partial(
            load_target, "wsgi", args.wsgi, config, root_path=args.root_path, app_dir=args.app_dir
        )
    else:
        load = functools.partial(load_target, "factory", args.factory, app_dir=args.app_dir)
    _serve_target(args, load, HTTP_ALPN if args.asgi or args.wsgi else ())


def _cmd_demo(args: argparse.Namespace) -> None:
    get_adapter(args.framework)
    try:
        from .examples.echo_test import protocol_factory
    except ImportError as exc:
        raise missing_package(exc, "the demo") from None

    port = args.default_port if args.port is None else args.port
    _serve_target(args, lambda: Target(protocol_factory(port), "the Echo Test demo"), HTTP_ALPN)


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


def _add_listener_arguments(sub: argparse.ArgumentParser, default_port: int) -> None:
    """Where to listen and with which TLS: docs/listeners.md describes each option."""
    group = sub.add_argument_group(
        "listeners", "every listener named is served; 127.0.0.1:PORT if none is"
    )
    group.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    group.add_argument(
        "--port", type=_port, help=f"TCP port to listen on (default: {default_port})"
    )
    group.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="HOST:PORT, [V6]:PORT, unix:PATH or fd://N; may be repeated",
    )
    group.add_argument("--uds", metavar="PATH", help="listen on a Unix socket at PATH")
    group.add_argument("--fd", metavar="N", help="serve on the inherited listening socket N")
    group.add_argument(
        "--backlog",
        default=str(DEFAULT_BACKLOG),
        metavar="N",
        help="connections the kernel queues before accepting (default: %(default)s)",
    )
    group.add_argument("--certfile", metavar="PATH", help="TLS certificate chain (PEM)")
    group.add_argument("--keyfile", metavar="PATH", help="its private key (PEM)")
    group.add_argument("--keyfile-password", metavar="TEXT", help="password of the private key")
    group.add_argument("--ca-certs", metavar="PATH", help="CA certificates to check clients with")
    group.add_argument(
        "--cert-reqs",
        metavar="MODE",
        help="client certificates: 0/none (default), 1/optional or 2/required",
    )
    sub.set_defaults(default_port=default_port)


def _logging_options(command: argparse.ArgumentParser) -> None:
    group = command.add_argument_group("logging")
    group.add_argument(
        "--log-level", choices=LEVELS, help="level of the protoshim loggers (default: info)"
    )
    group.add_argument(
        "--log-config",
        metavar="FILE",
        help="logging configuration: dictConfig .json or .yaml, or fileConfig .ini",
    )
    group.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        help="log one line per request to protoshim.access (default: on)",
    )


def _http_options(command: argparse.ArgumentParser) -> None:
    group = command.add_argument_group("HTTP")
    group.add_argument(
        "--proxy-headers",
        action="store_true",
        default=None,
        help="take the client address and scheme from X-Forwarded-For/-Proto or "
        "Forwarded, when the peer is trusted",
    )
    group.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="comma-separated IPs and networks trusted with proxy headers, * for all "
        "(default: $FORWARDED_ALLOW_IPS or 127.0.0.1)",
    )
    group.add_argument(
        "--timeout-keep-alive",
        type=float,
        metavar="SECONDS",
        help="close a kept-alive connection idle this long (default: 5)",
    )
    group.add_argument(
        "--limit-concurrency",
        type=int,
        metavar="N",
        help="answer 503 beyond N connections or requests in progress",
    )
    group.add_argument(
        "--limit-max-requests",
        type=int,
        metavar="N",
        help="stop gracefully after N requests",
    )


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
        "--root-path",
        default="",
        metavar="PATH",
        help="where the app is mounted (ASGI root_path, WSGI SCRIPT_NAME)",
    )
    serve.add_argument(
        "--http",
        choices=("h11", "httptools"),
        help="HTTP request parser (default: httptools if installed)",
    )
    _logging_options(serve)
    _http_options(serve)
    serve.set_defaults(handler=_cmd_serve)

    demo = commands.add_parser("demo", help="serve the Echo Test demo (Flask, WebSocket, assets)")
    demo.set_defaults(handler=_cmd_demo)

    for sub, default_port in ((serve, 8888), (demo, 8081)):
        sub.add_argument("--framework", default="asyncio", help="adapter name (default: asyncio)")
        _add_listener_arguments(sub, default_port)
        sub.add_argument(
            "--grace",
            type=float,
            default=SHUTDOWN_GRACE,
            metavar="SECONDS",
            help="time open connections get to finish on Ctrl-C or SIGTERM (default: %(default)s)",
        )
        comforts = sub.add_argument_group("development")
        comforts.add_argument(
            "--reload",
            action="store_true",
            help="restart the server when a Python file changes (needs watchfiles)",
        )
        comforts.add_argument(
            "--reload-dir",
            action="append",
            type=Path,
            metavar="DIR",
            help="folder to watch with --reload; may be repeated (default: the app folder)",
        )
        comforts.add_argument(
            "--app-dir",
            default="",
            metavar="DIR",
            help="folder searched first for MODULE (default: the current folder)",
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
    _defaults_from_environment((serve, demo), os.environ)
    return parser


#: Prefix of the environment variables that give an option's default:
#: ``PROTOSHIM_PORT=9000`` is ``--port 9000``, ``PROTOSHIM_RELOAD=1`` is ``--reload``.
ENV_PREFIX = "PROTOSHIM_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _defaults_from_environment(
    parsers: Iterable[argparse.ArgumentParser], environ: Mapping[str, str]
) -> None:
    """Take each option's default from ``PROTOSHIM_<OPTION>`` when it is set;
    the command line still wins."""
    for parser in parsers:
        for action in parser._actions:
            if not action.option_strings or action.dest in ("help", "version"):
                continue
            name = ENV_PREFIX + action.dest.upper()
            if name not in environ:
                continue
            parser.set_defaults(**{action.dest: _env_value(action, name, environ[name])})


def _env_value(action: argparse.Action, name: str, text: str) -> Any:
    if action.nargs == 0:  # a flag such as --reload
        if text.lower() not in _TRUE | _FALSE:
            raise _EnvError(f"{name}: expected 1 or 0, true or false, got {text!r}")
        on = text.lower() in _TRUE
        return on if action.const is True else not on
    words = text.split() if isinstance(action, argparse._AppendAction) else [text]
    values: list[Any] = []
    for word in words:
        try:
            value = action.type(word) if callable(action.type) else word
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise _EnvError(f"{name}: {exc}") from None
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise _EnvError(f"{name}: {text!r} is not one of {choices}")
        values.append(value)
    return values if isinstance(action, argparse._AppendAction) else values[0]


class _EnvError(CliError):
    """A ``PROTOSHIM_*`` variable that the option it sets would refuse."""


def _matrix(argv: list[str]) -> int:
    # Its own parser: everything after `--` is the user's pytest command.
    from .conformance.runner import main as matrix_main

    try:
        return matrix_main(argv)
    except KeyboardInterrupt:
        return 130


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["matrix"]:
        return _matrix(given[1:])
    try:
        parser = _parser()
    except _EnvError as exc:
        print(f"protoshim: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    args = parser.parse_args(given)
    return _report(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
