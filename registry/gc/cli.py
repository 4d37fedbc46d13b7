"""`moorage gc` (see registry/admin.py for the shared parts)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from registry.admin import EXIT_FAILURE, EXIT_OK, open_registry_and_index, set_main
from registry.database import DATABASE_ERRORS
from registry.durations import parse_duration
from registry.gc.collector import GcOptions, GcReport
from registry.gc.modes import collector, database_driven
from registry.gc.reviews import GcBusy
from registry.index.base import IndexUnavailable
from registry.settings import Settings
from registry.store.usage import readable_size as _size
from storage_backends import StorageError

INDEX_WAIT_SECONDS = 600.0  # an index being built (first start, new schema) before a database-driven run


def duration(text: str) -> float:
    value = parse_duration(text)
    if not isinstance(value, float) or value < 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 0s, 90m, 1h, 7d)")
    return value


def add_commands(commands: Any) -> None:
    """Register subcommands on the `moorage` parser's subparsers."""
    gc = commands.add_parser(
        "gc",
        help="collect garbage: retention, untagged manifests, unreferenced blobs, stale uploads",
        description="Garbage-collect the registry's storage while servers keep running. Blobs no manifest "
        "references and older than the grace period are removed; retention rules and stale upload sessions too.",
    )
    gc.add_argument("--dry-run", action="store_true", help="report what would be removed; change nothing")
    gc.add_argument("--delete-untagged", action="store_true", default=None, help="also remove manifests no tag reaches")
    gc.add_argument("--grace", type=duration, metavar="DURATION", help="keep blobs younger than this (gc.grace)")
    gc.add_argument(
        "--settle", type=duration, metavar="DURATION", help="how long set-aside blobs stay restorable (gc.settle)"
    )
    gc.add_argument(
        "--full",
        action="store_true",
        help="mark over all of storage (verifies and repairs what the database's review queues never saw), "
        "whatever gc.mode says",
    )
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    set_main(gc, run_gc)


async def run_gc(args: argparse.Namespace, settings: Settings) -> int:
    options = GcOptions.of(
        settings,
        dry_run=args.dry_run,
        delete_untagged=args.delete_untagged,
        grace=args.grace,
        settle=args.settle,
    )
    database = not getattr(args, "full", False) and database_driven(settings)
    try:
        async with open_registry_and_index(settings, start_index=database) as (registry, index):
            if database and index is not None and not await index.wait_ready(INDEX_WAIT_SECONDS):
                print(
                    "moorage: gc: the metadata index is still being built; try again later, or use --full",
                    file=sys.stderr,
                )
                return EXIT_FAILURE
            report = await collector(registry, index, options, database)()
    except StorageError as e:
        # Safe to run again: whatever this run set aside is restored or deleted by the next one.
        print(f"moorage: gc stopped: storage error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except (IndexUnavailable, GcBusy) as e:
        print(f"moorage: gc: {e}; try again later, or use --full", file=sys.stderr)
        return EXIT_FAILURE
    except DATABASE_ERRORS as e:
        print(f"moorage: gc stopped: the metadata database failed: {e}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_report(report))
    return EXIT_OK


def format_report(report: GcReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    lines = [f"{verb} cached repository {name} (unused)" for name in report.evicted]
    for removal in report.removals:
        what = "tag" if removal.kind == "tag" else "manifest"
        lines.append(f"{verb} {what} {removal.repository}:{removal.target} ({removal.reason})")
    for digest, size in sorted(report.blobs_removed.items(), key=lambda item: str(item[0])):
        lines.append(f"{verb} blob {digest} ({size} bytes)")
    lines += [f"{verb} dangling link {name}@{digest}" for name, digest in report.links_removed]
    lines += [f"{verb} upload session {name}/{upload_id}" for name, upload_id in report.uploads_purged]
    if report.abandoned_writes_purged:
        lines.append(f"{verb} {report.abandoned_writes_purged} leftovers of interrupted writes in the store")
    lines.append(
        f"{'dry run: ' if report.dry_run else ''}{len(report.blobs_removed)} blobs, {_size(report.bytes_reclaimed)} "
        f"{'reclaimable' if report.dry_run else 'reclaimed'}; {len(report.manifests_removed)} manifests, "
        f"{len(report.removals) - len(report.manifests_removed)} tags, {len(report.uploads_purged)} uploads; "
        f"{report.blobs_in_use} blobs in use, {report.blobs_kept_young} unreferenced but within the grace period"
        + (f", {len(report.blobs_restored)} restored" if report.blobs_restored else "")
        + f" ({report.seconds:.1f} s)"
    )
    return "\n".join(lines)
