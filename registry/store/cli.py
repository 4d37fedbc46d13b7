"""`moorage repo rm NAME` and `moorage du [REPO]`: repository deletion and storage accounting, straight on the
store (see registry/admin.py for the shared parts)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from registry.admin import EXIT_CONFIG_ERROR, EXIT_FAILURE, EXIT_OK, open_registry, set_main
from registry.errors import RegistryError
from registry.settings import Settings
from registry.store.usage import QuotaLimits, StorageUsage, measure, with_quotas
from registry.store.usage import readable_size as _size


def add_commands(commands: Any) -> None:
    """Register subcommands on the `moorage` parser's subparsers."""
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
    table = await _quota_table(settings)
    usage = with_quotas(usage, table.limit_of, settings.policy.quota_warning)
    print(json.dumps(usage.as_dict(), indent=2) if args.json else format_usage(usage))
    return EXIT_OK


async def _quota_table(settings: Settings) -> QuotaLimits:
    """The quotas in force: the config's and the admin API's (from the policy database, when it can be read)."""
    # The policy feature's, asked here only (the store itself never imports features).
    from registry.database import DATABASE_ERRORS, EngineCorrupt
    from registry.policy.database import PolicyDatabase, PolicySnapshot
    from registry.policy.quotas import QuotaTable
    from registry.policy.setup import policy_target

    target = policy_target(settings)

    def read() -> PolicySnapshot:
        if isinstance(target, Path) and not target.exists():
            return PolicySnapshot(version=0)  # no admin change yet: nothing to read, nothing to create
        db = PolicyDatabase.open(target)
        try:
            return db.snapshot()
        finally:
            db.close()

    try:
        snapshot = await asyncio.to_thread(read)
    except (*DATABASE_ERRORS, EngineCorrupt, OSError) as e:
        print(f"moorage: the policy database cannot be read ({e}): quotas of the config file only", file=sys.stderr)
        snapshot = PolicySnapshot(version=0)
    return QuotaTable(settings.quotas, snapshot)


def format_usage(usage: StorageUsage) -> str:
    width = max([len("REPOSITORY"), *(len(r.name) for r in usage.repositories)])
    quotas = any(r.quota_bytes is not None for r in usage.repositories)
    header = f"{'REPOSITORY':<{width}}  {'MANIFESTS':>9}  {'TAGS':>5}  {'BLOBS':>6}  {'LOGICAL':>10}"
    lines = [header + ("  QUOTA" if quotas else "")]
    for r in usage.repositories:
        line = f"{r.name:<{width}}  {r.manifests:>9}  {r.tags:>5}  {r.blobs:>6}  {_size(r.logical_bytes):>10}"
        if r.quota_bytes is not None:
            share = r.logical_bytes / r.quota_bytes * 100 if r.quota_bytes else 0.0
            line += (
                f"  {_size(r.quota_bytes)} ({share:.0f}% used{', over the warning level' if r.quota_warning else ''})"
            )
        lines.append(line)
    lines.append(
        f"logical {_size(usage.logical_bytes)} ({usage.logical_bytes} bytes), physical {_size(usage.physical_bytes)} "
        f"({usage.physical_bytes} bytes): dedup saves {_size(usage.saved_bytes)}"
    )
    if usage.stored_bytes is not None:
        lines.append(f"stored {_size(usage.stored_bytes)} ({usage.stored_bytes} bytes), garbage included")
    return "\n".join(lines)
