"""`moorage index rebuild`: build this host's metadata index from storage (see registry/admin.py for the shared parts).

Safe beside running servers: they share the SQLite file (WAL), and storage stays the source of truth.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from registry.admin import EXIT_FAILURE, EXIT_OK, open_registry, set_main
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
