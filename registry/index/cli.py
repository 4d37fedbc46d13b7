"""`moorage index rebuild`, `moorage database migrate` and `moorage database import`: the metadata database's
schema, and filling it from storage (see registry/admin.py for the shared parts).

Safe beside running servers: they share the SQLite file (WAL) or the PostgreSQL database, and storage stays the
source of truth.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from registry.admin import EXIT_FAILURE, EXIT_OK, open_registry, set_main
from registry.database import DATABASE_ERRORS
from registry.index.database import SCHEMA_VERSION
from registry.index.setup import open_index
from registry.settings import Settings
from storage_backends import StorageError


def add_commands(commands: Any) -> None:
    """Register subcommands on the `moorage` parser's subparsers."""
    index = commands.add_parser(
        "index", help="manage the metadata index", description="Manage the metadata index (catalog and search)."
    )
    actions = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    rebuild = actions.add_parser(
        "rebuild",
        help="build the metadata index from storage",
        description="Read every repository from storage into the metadata index (database.url or index.path), "
        "replacing what it held. Servers keep running; on S3 with SQLite each host has its own index file, so run it "
        "where it is needed.",
    )
    set_main(rebuild, run_rebuild)

    database = commands.add_parser(
        "database",
        help="manage the metadata database",
        description="The metadata database (database.url: PostgreSQL, or an SQLite file): its schema, and filling it "
        "from storage.",
    )
    steps = database.add_subparsers(dest="database_command", required=True, metavar="ACTION")
    migrate = steps.add_parser(
        "migrate",
        help="create or upgrade the database's schema",
        description="Create the tables, or bring an older schema to this version (an older index is emptied: an "
        "import or the servers refill it from storage). Servers do this at start too, one at a time.",
    )
    set_main(migrate, run_migrate)
    importer = steps.add_parser(
        "import",
        help="fill the database from storage, with progress; resumable",
        description="Read every repository of the storage (a Distribution root or bucket included) into the "
        "database while the registry serves. Idempotent; an interrupted import resumes where it stopped.",
    )
    importer.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    importer.add_argument("--quiet", action="store_true", help="no progress bar")
    set_main(importer, run_import)


async def run_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    async with open_registry(settings) as registry:
        index = open_index(settings, registry)
        started = time.monotonic()
        try:
            await index.open()
            count = await index.rebuild(reread=True)
        except (StorageError, OSError) as e:
            print(f"moorage: index rebuild failed: {e}", file=sys.stderr)
            return EXIT_FAILURE
        else:
            if index.behind:
                print(f"moorage: index rebuild: could not read {', '.join(sorted(index.behind))}", file=sys.stderr)
                return EXIT_FAILURE
        finally:
            await index.aclose()
    print(f"indexed {count} repositories in {time.monotonic() - started:.1f}s into {index.where}")
    if index.skipped:
        print(f"{index.skipped} manifests or configs could be indexed only in part (the log says which and why)")
    return EXIT_OK


async def run_migrate(args: argparse.Namespace, settings: Settings) -> int:
    async with open_registry(settings) as registry:
        index = open_index(settings, registry)
        try:
            await index.open()
        except DATABASE_ERRORS as e:
            print(f"moorage: database migrate failed: {e}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            await index.aclose()
    print(f"{index.where}: schema version {SCHEMA_VERSION}")
    return EXIT_OK


async def run_import(args: argparse.Namespace, settings: Settings) -> int:
    # Here, not at the top: `moorage serve` loads this module and must not load the client's libraries.
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    async with open_registry(settings) as registry:
        index = open_index(settings, registry)
        started = time.monotonic()
        with Progress(
            TextColumn("importing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            disable=args.quiet or not sys.stderr.isatty(),
            console=Console(stderr=True),
        ) as bar:
            task = bar.add_task("repositories", total=None)
            try:
                await index.open()
                count = await index.rebuild(
                    reread=args.fresh,
                    resume=not args.fresh,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
            except (StorageError, OSError, *DATABASE_ERRORS) as e:
                print(f"moorage: database import stopped: {e} (run it again to resume)", file=sys.stderr)
                return EXIT_FAILURE
            finally:
                await index.aclose()
    if index.behind:
        print(f"moorage: database import: could not read {', '.join(sorted(index.behind))}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"imported {count} repositories in {time.monotonic() - started:.1f}s into {index.where}")
    return EXIT_OK
