"""The client's subcommands of `moorage`: push, pull, cp, mirror, tag, rm, inspect, tags, catalog, search, login,
logout.

`add_commands(commands)` adds them to `moorage`'s subparsers; `run(args)` executes the chosen one. Every failure
is one line on stderr (`moorage: manifest unknown: team/app:2.0`) and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from registry.client.errors import ClientError
from registry.client.tasks import first_error
from registry.client.terminal import printable

# The command handlers (and httpx, rich) load only when a client command runs: `moorage serve` shares this
# parser, and its worker should not carry them.
DEFAULT_ATTEMPTS = 5  # registry.client.transport.DEFAULT_ATTEMPTS
FORMATS = ("oci", "docker-archive")  # registry.client.pull.FORMATS

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--insecure",
        "--plain-http",
        dest="insecure",
        action="store_true",
        help="use plain HTTP (automatic for localhost and 127.0.0.1)",
    )
    parser.add_argument("--ca-file", metavar="FILE", help="verify the registry's TLS certificate with this CA bundle")
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_ATTEMPTS - 1,
        metavar="N",
        help=f"retry failed requests N times, with backoff (default {DEFAULT_ATTEMPTS - 1})",
    )


def _output_flags(parser: argparse.ArgumentParser, *, transfers: bool = False) -> None:
    parser.add_argument("--json", dest="json_output", action="store_true", help="machine-readable JSON on stdout")
    if transfers:
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
        parser.add_argument(
            "--concurrency", type=int, default=4, metavar="N", help="blobs transferred in parallel (default 4)"
        )


def parse_size(text: str) -> int:
    """`4194304`, `64KiB`, `16MiB`, `1GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB`: all binary)."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = value[-1:] if value[-1:] in units else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 16MiB)")
    return int(number) * units[unit]


def _chunk_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chunk-size",
        type=parse_size,
        metavar="SIZE",
        help="upload in PATCH requests of SIZE (e.g. 64MiB) so a dropped connection loses less; "
        "default: each blob in one streamed request",
    )


def add_commands(commands: Any) -> None:
    """Add the client's subcommands to `moorage`'s subparsers (an argparse `_SubParsersAction`)."""

    def add(name: str, handler: str, help_text: str, description: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text, description=description)
        parser.set_defaults(client_handler=handler)
        _connection_flags(parser)
        return parser

    push = add(
        "push",
        "cmd_push",
        "push an OCI layout, OCI archive or docker-save tarball",
        "Push SRC (an OCI image layout directory, an OCI archive .tar, or a `docker save` tarball; "
        "PATH:TAG picks one image of several) to REF. A multi-platform index is pushed whole.",
    )
    push.add_argument("src", metavar="SRC")
    push.add_argument("ref", metavar="REF", help="e.g. registry.example:5000/team/app:1.0")
    push.add_argument("--tag", "-t", action="append", default=[], metavar="T", help="also tag as T (repeatable)")
    push.add_argument(
        "--mount-from",
        metavar="REPO",
        help="mount blobs the destination lacks from REPO on the same registry instead of uploading them",
    )
    _output_flags(push, transfers=True)
    _chunk_flag(push)

    pull = add(
        "pull",
        "cmd_pull",
        "pull an image into an OCI layout or a docker-archive tarball",
        "Pull REF into DEST: an OCI layout directory (default) or a tarball that `docker load` accepts. Every "
        "blob is verified against its digest; on failure nothing is left at DEST.",
    )
    pull.add_argument("ref", metavar="REF")
    pull.add_argument("dest", metavar="DEST")
    pull.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="pull only this platform of an index")
    pull.add_argument("--format", choices=FORMATS, default="oci", help="oci (directory, default) or docker-archive")
    _output_flags(pull, transfers=True)

    cp = add(
        "cp",
        "cmd_cp",
        "copy an image between repositories or registries",
        "Copy SRC_REF to DST_REF: cross-repository mount on one registry, streamed between two.",
    )
    cp.add_argument("src", metavar="SRC_REF")
    cp.add_argument("dst", metavar="DST_REF")
    _output_flags(cp, transfers=True)
    _chunk_flag(cp)

    mirror = add(
        "mirror",
        "cmd_mirror",
        "bring images into a pull-through cache ahead of time",
        "Read each REF through a Moorage pull-through cache (e.g. localhost:5000/dockerhub/library/alpine:3.20) as a "
        "client pulls it, so that the cache holds it: this machine's platform of a multi-platform image, or every "
        "platform with --all. With --to, copy each image whole into DEST/<REF's repository> instead.",
    )
    mirror.add_argument("refs", metavar="REF", nargs="*")
    mirror.add_argument("--file", "-f", metavar="FILE", help="read more references from FILE, one per line")
    which = mirror.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every platform of a multi-platform image")
    which.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="this platform of a multi-platform image")
    mirror.add_argument("--to", metavar="DEST", help="copy into DEST (host[:port][/prefix]) instead of warming")
    _output_flags(mirror, transfers=True)

    tag = add("tag", "cmd_tag", "add a tag to an image", "Point NEW_TAG (in REF's repository) at REF's manifest.")
    tag.add_argument("ref", metavar="REF")
    tag.add_argument("new_tag", metavar="NEW_TAG")
    _output_flags(tag)

    rm = add(
        "rm",
        "cmd_rm",
        "delete an image's manifest",
        "Delete the manifest REF names (by tag or digest); every tag pointing at it goes with it.",
    )
    rm.add_argument("ref", metavar="REF")
    _output_flags(rm)

    inspect = add("inspect", "cmd_inspect", "show an image", "Show REF's manifest, config, platforms and sizes.")
    inspect.add_argument("ref", metavar="REF")
    _output_flags(inspect)

    tags = add("tags", "cmd_tags", "list a repository's tags", "List the tags of REPO (host[:port]/name).")
    tags.add_argument("repo", metavar="REPO")
    _output_flags(tags)

    catalog = add("catalog", "cmd_catalog", "list a registry's repositories", "List REGISTRY's repositories.")
    catalog.add_argument("registry", metavar="REGISTRY")
    _output_flags(catalog)

    search = add(
        "search",
        "cmd_search",
        "search a registry's repositories",
        "Search REGISTRY for TERM (GET /api/v1/search, else Docker's /v1/search).",
    )
    search.add_argument("registry", metavar="REGISTRY")
    search.add_argument("term", metavar="TERM")
    search.add_argument("--limit", type=int, default=25, metavar="N", help="at most N results (1-100, default 25)")
    _output_flags(search)

    login = add(
        "login",
        "cmd_login",
        "save credentials for a registry",
        "Check credentials against REGISTRY and save them in docker's config.json ($DOCKER_CONFIG or ~/.docker).",
    )
    login.add_argument("registry", metavar="REGISTRY")
    login.add_argument("-u", "--username")
    login.add_argument("-p", "--password", help="prefer --password-stdin: arguments are visible to other users")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")

    logout = add("logout", "cmd_logout", "forget a registry's credentials", "Remove REGISTRY's saved credentials.")
    logout.add_argument("registry", metavar="REGISTRY")


def run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """uvloop where available (it ships with the server's dependencies): its socket reads cost a third of
    asyncio's, which shows on multi-GiB pulls."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; kept for platforms without it
        return asyncio.run(main)
    return uvloop.run(main)


def run(args: argparse.Namespace) -> int:
    """Run the chosen client command; errors become one line on stderr and exit status 1."""
    from registry.client import commands

    handler: Handler = getattr(commands, args.client_handler)
    if args.retries < 0:
        print("moorage: --retries must be at least 0", file=sys.stderr)
        return EXIT_FAILURE
    if getattr(args, "concurrency", 1) < 1:
        print("moorage: --concurrency must be at least 1", file=sys.stderr)
        return EXIT_FAILURE
    if getattr(args, "limit", 25) not in range(1, 101):
        print("moorage: --limit must be between 1 and 100", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return run_event_loop(handler(args))
    except KeyboardInterrupt:
        print("moorage: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as e:  # one line, never a traceback
        error = first_error(e)
        if isinstance(error, (SystemExit, KeyboardInterrupt)):
            raise
        if isinstance(error, ClientError):
            message = str(error)
        elif isinstance(error, OSError):
            message = f"{error.filename + ': ' if error.filename else ''}{error.strerror or error}"
        else:
            message = f"unexpected error: {type(error).__name__}: {error}"
        print(f"moorage: {printable(message)}", file=sys.stderr)
        return EXIT_FAILURE


def is_client_command(args: argparse.Namespace) -> bool:
    return hasattr(args, "client_handler")
