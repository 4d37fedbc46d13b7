"""`moorage gc`, `moorage repo rm NAME` and `moorage du [REPO]` (see registry/admin.py for the shared parts)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from registry.admin import EXIT_CONFIG_ERROR, EXIT_FAILURE, EXIT_OK, open_registry, set_main
from registry.durations import parse_duration
from registry.errors import RegistryError
from registry.gc.accounting import StorageUsage, measure
from registry.gc.collector import GarbageCollector, GcOptions, GcReport
from registry.settings import Settings
from storage_backends import StorageError


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
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    set_main(gc, run_gc)

    repo = commands.add_parser("repo", help="manage repositories", description="Manage repositories.")
    repo_commands = repo.add_subparsers(dest="repo_command", required=True, metavar="ACTION")
    rm = repo_commands.add_parser(
        "rm",
        help="delete a repository (its unique blobs go at the next GC)",
        description="Delete a repository: its tags, manifests, links and uploads now; blobs no other repository "
        "uses at the next GC.",
    )
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--force", action="store_true", help="delete even if it holds immutable tags")
    set_main(rm, run_repo_rm)

    du = commands.add_parser(
        "du",
        help="storage used per repository, and what dedup saves",
        description="Logical size per repository (each blob it references once), and for the registry logical "
        "vs physical bytes.",
    )
    du.add_argument("repository", nargs="?", metavar="REPO")
    du.add_argument("--json", action="store_true", help="print JSON")
    set_main(du, run_du)


async def run_gc(args: argparse.Namespace, settings: Settings) -> int:
    options = GcOptions.from_settings(
        settings.gc,
        settings.uploads,
        settings.retention,
        settings.immutable_tags,
        dry_run=args.dry_run,
        delete_untagged=args.delete_untagged,
        grace=args.grace,
        settle=args.settle,
    )
    try:
        async with open_registry(settings) as registry:
            report = await GarbageCollector(registry, options).run()
    except StorageError as e:
        # Safe to run again: whatever this run set aside is restored or deleted by the next one.
        print(f"moorage: gc stopped: storage error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_report(report))
    return EXIT_OK


def format_report(report: GcReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    lines = []
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


async def run_repo_rm(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.storage.delete:
        print("moorage: deletes are disabled on this registry (storage.delete)", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    async with open_registry(settings) as registry:
        try:
            deleted = await registry.repositories.delete(args.name, force=args.force)
        except RegistryError as e:
            print(f"moorage: {e.message}: {json.dumps(e.detail)}", file=sys.stderr)
            return EXIT_FAILURE
    print(f"deleted {deleted.name}: {deleted.tags} tags, {deleted.manifests} manifests; unique blobs go at the next gc")
    return EXIT_OK


async def run_du(args: argparse.Namespace, settings: Settings) -> int:
    async with open_registry(settings) as registry:
        try:
            usage = await measure(registry, only=args.repository)
        except RegistryError as e:
            print(f"moorage: {e.message}: {json.dumps(e.detail)}", file=sys.stderr)
            return EXIT_FAILURE
    print(json.dumps(usage.as_dict(), indent=2) if args.json else format_usage(usage))
    return EXIT_OK


def format_usage(usage: StorageUsage) -> str:
    width = max([len("REPOSITORY"), *(len(r.name) for r in usage.repositories)])
    lines = [f"{'REPOSITORY':<{width}}  {'MANIFESTS':>9}  {'TAGS':>5}  {'BLOBS':>6}  {'LOGICAL':>10}"]
    for r in usage.repositories:
        lines.append(f"{r.name:<{width}}  {r.manifests:>9}  {r.tags:>5}  {r.blobs:>6}  {_size(r.logical_bytes):>10}")
    lines.append(
        f"logical {_size(usage.logical_bytes)} ({usage.logical_bytes} bytes), physical {_size(usage.physical_bytes)} "
        f"({usage.physical_bytes} bytes): dedup saves {_size(usage.saved_bytes)}"
    )
    if usage.stored_bytes is not None:
        lines.append(f"stored {_size(usage.stored_bytes)} ({usage.stored_bytes} bytes), garbage included")
    return "\n".join(lines)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
