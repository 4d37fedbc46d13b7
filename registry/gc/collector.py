"""Online garbage collection: mark and sweep while every replica keeps serving pushes and pulls.

One run:

1. **Inventory**: one listing of `repositories/` (revisions, tags, layer links, upload sessions), one of `blobs/`.
2. **Retention** (`retention:` rules) and, with `delete_untagged`, removal of manifests no tag reaches (children
   of a tagged index and, with `keep_referrers`, referrers of kept manifests stay). Untagged manifests younger than
   the grace period stay too: a multi-arch push writes its children by digest before the index that tags them.
3. **Mark**: every blob a kept manifest references (config, layers, child manifests, the manifest itself).
4. **Set aside**: each unmarked blob older than the grace period (`stat().modified`, re-read just before) is moved
   to a quarantine area, and this process's blob-existence memory forgets it.
5. **Settle**, then **mark again** (a fresh listing; manifests are read once per digest), and for each quarantined
   blob: restore it when a manifest now references it, else delete it for good.
6. Remove dangling `_layers/` links, upload sessions older than `uploads.purge_after`, and what interrupted writes
   left in the store for as long (temporary files; incomplete S3 multipart uploads, which are billed until aborted).

Steps 4 and 5 are the quarantine protocol (set aside, restore, purge, and the servers' touch rule), which
registry/store/quarantine.py states with the invariant it keeps: no blob a manifest references is deleted for good,
whatever the interleaving with pushes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from registry import paths
from registry.digests import Digest
from registry.errors import RegistryError
from registry.gc.eviction import evict_unused
from registry.gc.retention import Removal, plan_retention, reachable, rule_for
from registry.gc.settings import GcSettings, ImmutableTagRule, RetentionRule, UploadsSettings
from registry.proxy.settings import budgets, evictions
from registry.settings import Settings
from registry.store.events import Origin, acting_as
from registry.store.inventory import Inventory, read_blobs, read_manifests, read_repositories, read_tags
from registry.store.registry import Registry
from storage_backends import PathNotFound, StorageBackend, StorageError

GC_ORIGIN = Origin(actor="moorage:gc")
logger = logging.getLogger("moorage.gc")


@dataclass(frozen=True, slots=True)
class GcOptions:
    grace: float = 3600.0
    settle: float = 5.0
    delete_untagged: bool = False
    keep_referrers: bool = True
    purge_uploads_after: float = 86400.0
    retention: tuple[RetentionRule, ...] = ()
    immutable_tags: tuple[ImmutableTagRule, ...] = ()
    dry_run: bool = False
    evictions: tuple[tuple[str, float], ...] = ()
    """(upstream, evict_after): cached repositories of that upstream unused for so long go (registry/gc/eviction)."""
    budgets: tuple[tuple[str, int], ...] = ()
    """(upstream, max_bytes): beyond it, that upstream's least recently used cached repositories go."""

    @classmethod
    def of(cls, settings: Settings, **overrides: Any) -> GcOptions:
        """The options the settings say (every section GC reads), with `overrides` (None: the settings' value)."""
        proxy = {
            "evictions": tuple(sorted(evictions(settings.proxy).items())),
            "budgets": tuple(sorted(budgets(settings.proxy).items())),
        }
        return cls.from_settings(
            settings.gc, settings.uploads, settings.retention, settings.immutable_tags, **proxy, **overrides
        )

    @classmethod
    def from_settings(
        cls,
        gc: GcSettings,
        uploads: UploadsSettings,
        retention: Iterable[RetentionRule] = (),
        immutable_tags: Iterable[ImmutableTagRule] = (),
        **overrides: Any,
    ) -> GcOptions:
        options = cls(
            grace=gc.grace,
            settle=gc.settle,
            delete_untagged=gc.delete_untagged,
            keep_referrers=gc.keep_referrers,
            purge_uploads_after=uploads.purge_after,
            retention=tuple(retention),
            immutable_tags=tuple(immutable_tags),
        )
        return cls(**{**_as_dict(options), **{k: v for k, v in overrides.items() if v is not None}})


def _as_dict(options: GcOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in GcOptions.__slots__}


@dataclass(slots=True)
class GcReport:
    dry_run: bool
    blobs_removed: dict[Digest, int] = field(default_factory=dict)
    blobs_restored: list[Digest] = field(default_factory=list)
    blobs_kept_young: int = 0
    blobs_in_use: int = 0
    removals: list[Removal] = field(default_factory=list)
    links_removed: list[tuple[str, Digest]] = field(default_factory=list)
    uploads_purged: list[tuple[str, str]] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)
    """Pull-through cache repositories removed as unused (registry/gc/eviction.py)."""
    abandoned_writes_purged: int = 0
    """Leftovers of interrupted writes in the store (temporary files, incomplete S3 multipart uploads)."""
    seconds: float = 0.0

    @property
    def bytes_reclaimed(self) -> int:
        return sum(self.blobs_removed.values())

    @property
    def manifests_removed(self) -> list[Removal]:
        return [r for r in self.removals if r.kind == "manifest"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "blobs_removed": [
                {"digest": str(d), "size": s} for d, s in sorted(self.blobs_removed.items(), key=lambda i: str(i[0]))
            ],
            "bytes_reclaimed": self.bytes_reclaimed,
            "blobs_restored": [str(d) for d in self.blobs_restored],
            "blobs_kept_young": self.blobs_kept_young,
            "blobs_in_use": self.blobs_in_use,
            "tags_removed": [
                {"repository": r.repository, "tag": r.target, "reason": r.reason}
                for r in self.removals
                if r.kind == "tag"
            ],
            "manifests_removed": [
                {"repository": r.repository, "digest": r.target, "reason": r.reason} for r in self.manifests_removed
            ],
            "links_removed": [{"repository": n, "digest": str(d)} for n, d in self.links_removed],
            "uploads_purged": [{"repository": n, "uuid": u} for n, u in self.uploads_purged],
            "abandoned_writes_purged": self.abandoned_writes_purged,
            "evicted": self.evicted,
            "seconds": round(self.seconds, 3),
        }


class GarbageCollector:
    def __init__(self, registry: Registry, options: GcOptions) -> None:
        self.registry = registry
        self.options = options
        self.backend = registry.backend

    async def run(self) -> GcReport:
        """One collection; what it removes emits the store's events as the actor `moorage:gc`."""
        with acting_as(GC_ORIGIN):
            report = await self._run()
        if not report.dry_run:
            await record_summary(self.backend, report)
        return report

    async def _run(self) -> GcReport:
        started = asyncio.get_running_loop().time()
        options = self.options
        report = GcReport(dry_run=options.dry_run)
        now = _now()
        report.evicted = await evict_unused(
            self.registry, dict(options.evictions), now.timestamp(), options.dry_run, dict(options.budgets)
        )
        inventory = Inventory()
        await read_repositories(self.registry, inventory)
        await read_tags(self.registry, inventory)
        await read_blobs(self.registry, inventory)
        await read_manifests(self.registry, inventory, _all_revisions(inventory))

        await self._remove_manifests(inventory, report, now)
        marked = self._mark(inventory)
        grace = dt.timedelta(seconds=options.grace)
        candidates: dict[Digest, int] = {}
        for digest, (size, modified) in sorted(inventory.blobs.items(), key=lambda item: str(item[0])):
            if digest in marked:
                report.blobs_in_use += 1
            elif now - modified <= grace:
                report.blobs_kept_young += 1
            else:
                candidates[digest] = size
        if options.dry_run:
            report.blobs_removed = candidates
        else:
            await self._sweep(candidates, inventory, report)
        await self._remove_dangling_links(inventory, report)
        await self._purge_uploads(inventory, report, now)
        report.seconds = asyncio.get_running_loop().time() - started
        return report

    async def _remove_manifests(self, inventory: Inventory, report: GcReport, now: dt.datetime) -> None:
        """Retention, then (with delete_untagged) manifests no tag reaches; applied to `inventory` as well, so that
        a dry run marks what a real run would."""
        options = self.options
        grace = dt.timedelta(seconds=options.grace)
        for contents in list(inventory.repositories.values()):
            removals: list[Removal] = []
            rule = rule_for(list(options.retention), contents.name)
            if rule is not None:
                removals += plan_retention(
                    contents, inventory, rule, list(options.immutable_tags), options.keep_referrers, now
                )
                self._apply_in_memory(contents.name, inventory, removals)
            if options.delete_untagged:
                alive = reachable(contents, inventory, contents.tags.values(), options.keep_referrers)
                young = [d for d, pushed in contents.revisions.items() if now - pushed <= grace]
                alive |= reachable(contents, inventory, young, options.keep_referrers)
                untagged = [
                    Removal(contents.name, "manifest", str(d), "untagged (gc.delete_untagged)")
                    for d in sorted(contents.revisions, key=str)
                    if d not in alive
                ]
                self._apply_in_memory(contents.name, inventory, untagged)
                removals += untagged
            if not removals:
                continue
            if not options.dry_run:
                removals = await self._apply(removals, inventory)
            report.removals += removals

    @staticmethod
    def _apply_in_memory(name: str, inventory: Inventory, removals: list[Removal]) -> None:
        contents = inventory.repositories[name]
        for removal in removals:
            if removal.kind == "tag":
                contents.tags.pop(removal.target, None)
                contents.tag_links.pop(removal.target, None)
            else:
                digest = Digest.parse(removal.target)
                contents.revisions.pop(digest, None)
                for tag in [t for t, d in contents.tags.items() if d == digest]:
                    del contents.tags[tag]

    async def _apply(self, removals: list[Removal], inventory: Inventory) -> list[Removal]:
        """What was removed: each removal is decided again at the moment of removing, not from the listing."""
        applied = []
        for removal in removals:
            try:
                if removal.kind == "tag":
                    done = await self.registry.tags.delete_if_current(
                        removal.repository, removal.target, Digest.parse(removal.digest)
                    )
                else:
                    digest = Digest.parse(removal.target)
                    references = inventory.manifests.get(digest)
                    subject = references.subject if references is not None else None
                    done = await self.registry.manifests.delete_if_untagged(removal.repository, digest, subject)
            except RegistryError as e:
                # Made immutable meanwhile, or unreadable: nothing to do.
                logger.info("gc: not removing %s %s of %s: %s", removal.kind, removal.target, removal.repository, e)
                done = False
            if done:
                applied.append(removal)
            else:
                logger.info(
                    "gc: %s %s of %s changed since the listing: kept", removal.kind, removal.target, removal.repository
                )
        return applied

    @staticmethod
    def _mark(inventory: Inventory) -> set[Digest]:
        marked: set[Digest] = set()
        for name in inventory.repositories:
            marked |= inventory.referenced_by(name)
        return marked

    async def _sweep(self, candidates: dict[Digest, int], inventory: Inventory, report: GcReport) -> None:
        grace = dt.timedelta(seconds=self.options.grace)
        aside: dict[Digest, int] = {}
        for digest, size in candidates.items():
            if await self._set_aside(digest, grace):
                aside[digest] = size
        # What an interrupted run (or another replica's run, once settled) left in quarantine goes through the same
        # check; a quarantined copy's modification time is when it was set aside.
        settled = _now() - dt.timedelta(seconds=self.options.settle)
        leftovers = {d: s for d, (s, at) in inventory.quarantined.items() if d not in aside and at < settled}
        if not aside and not leftovers:
            return
        if aside and self.options.settle:
            await asyncio.sleep(self.options.settle)
        second = Inventory(manifests=inventory.manifests)
        await read_repositories(self.registry, second)
        await read_manifests(self.registry, second, _all_revisions(second))
        marked = self._mark(second)
        quarantine = self.registry.blobs.quarantine
        for digest, size in {**leftovers, **aside}.items():
            if digest in marked:
                if await quarantine.restore(digest):
                    report.blobs_restored.append(digest)
                continue
            if not await quarantine.purge(digest):
                continue  # pushed again meanwhile: the set-aside copy was a duplicate
            self.registry.blobs.forget_digest(digest)
            report.blobs_removed[digest] = size
            inventory.blobs.pop(digest, None)
        for digest in report.blobs_restored:
            inventory.blobs.setdefault(digest, (0, _now()))

    async def _set_aside(self, digest: Digest, grace: dt.timedelta) -> bool:
        try:
            return await self.registry.blobs.quarantine.set_aside(digest, grace, _now())
        finally:
            self.registry.blobs.forget_digest(digest)

    async def _remove_dangling_links(self, inventory: Inventory, report: GcReport) -> None:
        """`_layers/` links to blobs that are neither stored nor set aside, and have not been written lately."""
        keep_after = _now() - dt.timedelta(seconds=max(self.options.grace, self.options.settle))
        for contents in inventory.repositories.values():
            for digest in sorted(contents.layer_links, key=str):
                if digest in inventory.blobs and digest not in report.blobs_removed:
                    continue
                link = paths.layer_link(contents.name, digest)
                try:
                    if (await self.backend.stat(link)).modified > keep_after:
                        continue
                except PathNotFound:
                    continue
                if await self.backend.exists(paths.blob_data(digest)) or await self.backend.exists(
                    paths.quarantined_blob(digest)
                ):
                    continue
                report.links_removed.append((contents.name, digest))
                if not self.options.dry_run:
                    await self.registry.blobs.drop_link(contents.name, digest)

    async def _purge_uploads(self, inventory: Inventory, report: GcReport, now: dt.datetime) -> None:
        limit = dt.timedelta(seconds=self.options.purge_uploads_after)
        for contents in inventory.repositories.values():
            for upload_id, started in sorted(contents.uploads.items()):
                if now - started > limit:
                    report.uploads_purged.append((contents.name, upload_id))
                    if not self.options.dry_run:
                        # Idle for that long; a marker kept fresh is a live completion's (UploadStore.cancel).
                        await self.registry.uploads.cancel(contents.name, upload_id, purging=True)
        # Same age limit: no request writes for as long as an upload session may stay idle.
        report.abandoned_writes_purged = await self.backend.purge_abandoned_writes(
            self.options.purge_uploads_after, dry_run=self.options.dry_run
        )


async def record_summary(backend: StorageBackend, report: GcReport) -> None:
    """The last run's summary, for the UI's storage page (any replica may have run it, in either mode)."""
    summary = {
        "finished_at": time.time(),
        "seconds": round(report.seconds, 3),
        "bytes_reclaimed": report.bytes_reclaimed,
        "blobs_removed": len(report.blobs_removed),
        "manifests_removed": len(report.manifests_removed),
        "uploads_purged": len(report.uploads_purged),
    }
    try:
        await backend.put_content(paths.GC_LAST_REPORT, json.dumps(summary).encode())
    except StorageError as e:
        logger.warning("gc: could not record the run's summary: %s", e)


def _all_revisions(inventory: Inventory) -> list[Digest]:
    return [d for contents in inventory.repositories.values() for d in contents.revisions]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
