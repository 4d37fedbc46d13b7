"""`moorage` command line: `moorage serve [--config FILE] [--host H] [--port P] [--workers N]`."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Sequence
from typing import Any

from registry import __version__
from registry.client import cli as client_cli

EXIT_CONFIG_ERROR = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _commands() -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(prog="moorage", description="Moorage: a self-hosted OCI container registry.")
    parser.add_argument("--version", action="version", version=f"moorage {__version__}")
    return parser, parser.add_subparsers(dest="command", required=True, metavar="COMMAND")


def build_parser() -> argparse.ArgumentParser:
    from registry.auth import cli as auth_cli
    from registry.gc import cli as gc_cli
    from registry.index import cli as index_cli
    from registry.settings import CONFIG_ENV
    from registry.store import cli as store_cli

    parser, commands = _commands()
    serve = commands.add_parser(
        "serve",
        help="run the registry server",
        description="Run the registry. Settings come from the config file and "
        "MOORAGE_<SECTION>__<KEY> environment variables; flags win over both.",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help=f"YAML config file (default: ${CONFIG_ENV}, else config/moorage.yml if present)",
    )
    serve.add_argument("--host", help="address to listen on (http.host, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (http.port, default 5000)")
    serve.add_argument("--workers", type=int, help="worker processes (http.workers, default 1)")
    client_cli.add_commands(commands)
    for feature in (auth_cli, gc_cli, store_cli, index_cli):
        feature.add_commands(commands)
    return parser


MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own arena (up to 8 per core), and freed memory stays in them:
    with a pool of I/O threads that is tens of MiB of RSS for nothing. Two arenas cost no measurable speed."""
    os.environ.setdefault("MALLOC_ARENA_MAX", str(MALLOC_ARENAS))  # for worker processes, read at their start
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)  # for this process, whose allocator is already running


def serve(args: argparse.Namespace) -> int:
    from registry.settings import CONFIG_ENV, ConfigError, load_settings

    # Workers are separate processes that load the settings themselves: hand them the same sources.
    if args.config:
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    if args.host:
        os.environ["MOORAGE_HTTP__HOST"] = args.host
    if args.port is not None:
        os.environ["MOORAGE_HTTP__PORT"] = str(args.port)
    if args.workers is not None:
        os.environ["MOORAGE_HTTP__WORKERS"] = str(args.workers)
    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"moorage: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if settings.storage.backend == "filesystem":
        root = settings.storage.filesystem.root
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as e:
            print(
                f"moorage: config error: storage.filesystem.root: cannot create {root}: {e.strerror}", file=sys.stderr
            )
            return EXIT_CONFIG_ERROR

    limit_malloc_arenas()
    from registry.server import run

    run(settings)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # The client's commands parse on their own: they need none of the server's or the admin commands' modules, whose
    # imports (pydantic settings, Starlette, psycopg, ...) took ~0.35 s of every `moorage push` or `pull`.
    client_parser, client_commands = _commands()
    client_cli.add_commands(client_commands)
    if arguments and arguments[0] in client_commands.choices:
        return client_cli.run(client_parser.parse_args(arguments))
    args = build_parser().parse_args(arguments)
    if args.command == "serve":
        return serve(args)
    if client_cli.is_client_command(args):
        return client_cli.run(args)
    admin_run = getattr(args, "admin_run", None)
    if admin_run is not None:
        result: int = admin_run(args)
        return result
    return EXIT_CONFIG_ERROR  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
