"""GC driven by the metadata database: it looks only at what changed since it last ran.

The index keeps reference counts and two review queues (registry/index/database.py): a blob is queued when its last
reference goes or when it is pushed (it may never get one), a manifest when a write leaves it untagged or removes
the index or subject that kept it. One run:

1. **Retention**: `keep_last` / `keep_tags` rules prune the tags of repositories pushed to since the last run (of
   every repository they match when the rules changed); the index then queues the manifests that lost their tags.
2. **Manifests** due for review are decided again from the database: one that a tag, an index or (with
   `keep_referrers`) a subject still keeps, or that no rule deletes, leaves the queue; the others are deleted through
   the store (which looks at storage once more), in passes, so that an index and then its children go in one run.
3. **Blobs** whose grace period has passed since they were queued: a referenced one leaves the queue; the others go
   through the quarantine protocol (registry/store/quarantine.py): set aside if storage says the data is older than
   the grace period, then, after `gc.settle`, looked up again in the database (once this process's own deletions are
   in it): restored if referenced meanwhile, else purged with the repositories' links to it.
4. Upload sessions older than `uploads.purge_after` (a listing of each repository's sessions, at most every
   quarter of that age) and leftovers of interrupted writes.

Its cost follows what changed, not the registry's size. What the queues never saw (blobs stored before the
database existed, orphans of a crash before the index heard of a push, rules first enabled on old content) is
`moorage gc --full`'s: the mark over storage, which verifies and repairs.

Trusting the database needs it to be in line with storage: the run refuses to start (and restores what it set
aside) when this process's index is not ready, is behind on some repository, has stopped following the change
records, or an import is filling it. A push racing a removal is covered as in the full mark: the store's touch rule
and restore, and the settle period between setting aside and purging.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from registry import paths
from registry.database import DATABASE_ERRORS
from registry.digests import Digest
from registry.errors import RegistryError
from registry.gc.collector import GC_ORIGIN, GcOptions, GcReport, record_summary
from registry.gc.eviction import evict_unused
from registry.gc.retention import Removal, rule_for, tags_beyond
from registry.index.base import IndexUnavailable
from registry.store.events import acting_as
from registry.store.inventory import Inventory, read_uploads
from registry.store.registry import Registry
from storage_backends import PathNotFound

if TYPE_CHECKING:
    from registry.index.database import Database
    from registry.index.local import LocalIndex

logger = logging.getLogger("moorage.gc")
REVIEW_BATCH = 500
MAX_REVIEWED = 100_000  # blobs or manifests one run decides (the rest wait for the next run)
LEASE = "gc-review"
LEASE_SECONDS = 300.0
LAST_RUN = "gc_reviewed_at"
RULES = "gc_retention_rules"
UPLOADS_SWEPT = "gc_uploads_swept_at"
RECENT_PUSH_MARGIN = 120.0  # pushed this long before the last run: pruned again (clocks, slow writes)
NEVER = 1e18  # a review's due time while something keeps the manifest or no rule would remove it


class GcBusy(Exception):
    """Another process is running a database-driven collection."""


class ReviewCollector:
    def __init__(self, registry: Registry, index: LocalIndex, options: GcOptions) -> None:
        self.registry = registry
        self.index = index
        self.options = options
        self.owner = f"gc:{id(self):x}:{time.time_ns()}"

    async def run(self) -> GcReport:
        """One collection; what it removes emits the store's events as the actor `moorage:gc`. Raises
        IndexUnavailable when the database cannot be trusted yet, GcBusy when another run holds the lease."""
        db = await self._trusted()
        if self.options.dry_run:  # changes nothing: needs no lease, and waits for no other run
            return await self._run(db)
        if not await asyncio.to_thread(db.claim, LEASE, self.owner, LEASE_SECONDS):
            raise GcBusy("another database-driven GC run is in progress")
        renewing = asyncio.create_task(self._hold_lease(db))
        try:
            with acting_as(GC_ORIGIN):
                report = await self._run(db)
        finally:
            renewing.cancel()
            await asyncio.to_thread(db.release, LEASE, self.owner)
        await record_summary(self.registry.backend, report)
        return report

    async def _trusted(self) -> Database:
        db = self.index.gc_database()
        from registry.index.local import IMPORT_CHECKPOINT

        if await asyncio.to_thread(db.get_meta, IMPORT_CHECKPOINT):
            raise IndexUnavailable("`moorage database import` is filling the database")
        return db

    async def _hold_lease(self, db: Database) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                await asyncio.to_thread(db.claim, LEASE, self.owner, LEASE_SECONDS)
            except DATABASE_ERRORS as e:  # tried again at the next renewal, well before the lease runs out
                logger.warning("gc: could not renew the review lease: %s", e)

    async def _run(self, db: Database) -> GcReport:
        started = time.monotonic()
        report = GcReport(dry_run=self.options.dry_run)
        now = time.time()
        rules_changed = await asyncio.to_thread(db.get_meta, RULES) != self._rules_fingerprint()
        if rules_changed and not self.options.dry_run:
            # What no rule removed before may go now, and what went may stay: every untagged manifest is due again.
            await asyncio.to_thread(db.review_all_manifests)
        options = self.options
        report.evicted = await evict_unused(
            self.registry, dict(options.evictions), now, options.dry_run, dict(options.budgets)
        )
        if report.evicted and not options.dry_run:
            await self.index.settled()  # the deletions' rows are in the database before the reviews read it
        await self._prune_tags(db, report, now, rules_changed)
        await self._review_manifests(db, report, now)
        await self._review_blobs(db, report)
        await self._purge_uploads(db, report, now)
        if not self.options.dry_run:
            await asyncio.to_thread(db.set_meta, {LAST_RUN: repr(now), RULES: self._rules_fingerprint()})
        report.seconds = time.monotonic() - started
        return report

    # 1. Retention.

    def _rules_fingerprint(self) -> str:
        """What decides which tags and manifests go: when it changes, every repository and manifest is looked at."""
        options = self.options
        rules = [
            *(rule.describe() for rule in options.retention),
            *(rule.describe() for rule in options.immutable_tags),
            f"delete_untagged={options.delete_untagged} keep_referrers={options.keep_referrers}",
            f"grace={options.grace:g}",
        ]
        return hashlib.sha256(json.dumps(rules).encode()).hexdigest()

    async def _prune_tags(self, db: Database, report: GcReport, now: float, rules_changed: bool) -> None:
        rules = [rule for rule in self.options.retention if rule.prunes_tags]
        if not rules:
            return
        last = await asyncio.to_thread(db.get_meta, LAST_RUN)
        since = 0.0 if last is None or rules_changed else float(last) - RECENT_PUSH_MARGIN
        names = await asyncio.to_thread(db.pushed_since, since)
        for name in sorted(names):
            rule = rule_for(list(self.options.retention), name)
            if rule is None or not rule.prunes_tags:
                continue
            tags = await asyncio.to_thread(db.tag_times, name)
            pushed = {tag: dt.datetime.fromtimestamp(at, dt.UTC) for tag, (_, at) in tags.items()}
            for tag in tags_beyond(name, pushed, rule, list(self.options.immutable_tags)):
                removal = Removal(name, "tag", tag, rule.describe(), tags[tag][0])
                if self.options.dry_run or await self._untag(removal):
                    report.removals.append(removal)
        await self.index.settled()  # the manifests these untagged are queued before they are reviewed

    async def _untag(self, removal: Removal) -> bool:
        try:
            return await self.registry.tags.delete_if_current(
                removal.repository, removal.target, Digest.parse(removal.digest)
            )
        except RegistryError as e:  # made immutable meanwhile, or not a digest: nothing to do
            logger.info("gc: not removing tag %s of %s: %s", removal.target, removal.repository, e)
            return False

    # 2. Manifests.

    def _untagged_limit(self, name: str) -> float | None:
        """How old an untagged manifest of `name` must be to go; None when no rule removes them there."""
        limits = []
        rule = rule_for(list(self.options.retention), name)
        if rule is not None and rule.untagged_older_than is not None:
            limits.append(rule.untagged_older_than)
        if self.options.delete_untagged:
            limits.append(self.options.grace)
        return min(limits) if limits else None

    async def _review_manifests(self, db: Database, report: GcReport, now: float) -> None:
        reviewed = 0
        verdicts: dict[tuple[str, str], float] = {}  # what keeps which manifest, found once per run
        while reviewed < MAX_REVIEWED:
            # Each pass decides (removes, postpones or forgets) every row it read, so the next one reads new rows:
            # more of them, or the children and referrers of what the last pass removed.
            due = await asyncio.to_thread(db.due_manifests, now, REVIEW_BATCH)
            if not due:
                return
            for name, digest, pushed_at, was_due in due:
                reviewed += 1
                limit = self._untagged_limit(name)
                if limit is None:
                    # No rule removes it today; a change of rules makes it due again.
                    await self._unless_dry(db.postpone_manifest, name, digest, NEVER, was_due)
                    continue
                if pushed_at + limit > now:
                    await self._unless_dry(db.postpone_manifest, name, digest, pushed_at + limit, was_due)
                    continue
                kept = await asyncio.to_thread(
                    db.manifest_kept, name, digest, now - limit, limit, self.options.keep_referrers, verdicts
                )
                if kept is None:
                    await self._unless_dry(db.forget_manifest, name, digest, pushed_at)  # gone already
                    continue
                if kept:
                    # Kept by a young push until it is old enough, or for good until what keeps it goes (an untag,
                    # the removal of its index or subject queues it again).
                    await self._unless_dry(db.postpone_manifest, name, digest, min(kept, NEVER), was_due)
                    continue
                removal = Removal(name, "manifest", digest, self._reason(name, limit))
                if self.options.dry_run or await self._delete_manifest(db, name, digest):
                    report.removals.append(removal)
                await self._unless_dry(db.forget_manifest, name, digest, pushed_at)
            if self.options.dry_run:
                return  # a dry run changes no row: one page (the children of what it would remove are not shown)
            # The deletions' events reach the index: the children and referrers they leave are queued, due now.
            await self.index.settled()

    def _reason(self, name: str, limit: float) -> str:
        rule = rule_for(list(self.options.retention), name)
        if rule is not None and rule.untagged_older_than == limit:
            return rule.describe()
        return "untagged (gc.delete_untagged)"

    async def _delete_manifest(self, db: Database, name: str, digest: str) -> bool:
        try:
            target = Digest.parse(digest)
            record = (await asyncio.to_thread(db.manifests_by_digest, name, [digest])).get(digest)
            subject = Digest.parse(record.subject) if record is not None and record.subject else None
            return await self.registry.manifests.delete_if_untagged(name, target, subject)
        except RegistryError as e:
            logger.info("gc: not removing manifest %s of %s: %s", digest, name, e)
            return False

    async def _unless_dry(self, function: Callable[..., object], *args: object) -> None:
        """A change to the queues, which a dry run leaves as they are."""
        if not self.options.dry_run:
            await asyncio.to_thread(function, *args)

    # 3. Blobs.

    async def _review_blobs(self, db: Database, report: GcReport) -> None:
        grace = self.options.grace
        aside: dict[Digest, tuple[float, int]] = {}  # set aside by this run: (queued since, size)
        reviewed = 0
        after = (-1.0, "")
        due_before = time.time() - grace
        looked_at = time.time()  # before the first blob's age is read
        while reviewed < MAX_REVIEWED:
            # Page by (since, blob): what this run sets aside stays queued until it is decided after the settle.
            due = await asyncio.to_thread(db.due_blobs, due_before, after, REVIEW_BATCH)
            if not due:
                break
            reviewed += len(due)
            after = (due[-1][1], due[-1][0])
            referenced = await asyncio.to_thread(db.referenced, [blob for blob, _ in due])
            report.blobs_in_use += len(referenced)
            for blob, since in due:
                if blob in referenced:
                    await self._unless_dry(partial(db.forget_blob, links=False), blob, since)
                    continue
                await self._candidate(db, blob, since, aside, report)
        if aside:
            await self._settle_and_decide(aside, report, looked_at)

    async def _candidate(
        self, db: Database, blob: str, since: float, aside: dict[Digest, tuple[float, int]], report: GcReport
    ) -> None:
        try:
            digest = Digest.parse(blob)
        except RegistryError:
            await self._unless_dry(db.forget_blob, blob, since)
            return
        quarantine = self.registry.blobs.quarantine
        try:
            info = await self.registry.backend.stat(paths.blob_data(digest))
        except PathNotFound:
            info = None
        grace = dt.timedelta(seconds=self.options.grace)
        if info is not None and _now() - info.modified <= grace:
            # Used lately (a push's check touches what it needs): looked at again once its grace has passed.
            report.blobs_kept_young += 1
            await self._unless_dry(db.postpone_blob, blob, info.modified.timestamp())
            return
        if self.options.dry_run:
            if info is not None:
                report.blobs_removed[digest] = info.size
            return
        if info is not None:
            try:
                moved = await quarantine.set_aside(digest, grace, _now())
            finally:
                self.registry.blobs.forget_digest(digest)
            if moved:
                aside[digest] = (since, info.size)
            return
        if await quarantine.holds(digest):  # set aside by an interrupted run
            aside[digest] = (since, 0)
            return
        await self._drop_links(db, digest, report)  # gone already: only links may be left
        await asyncio.to_thread(db.forget_blob, blob, since)

    async def _settle_and_decide(
        self, aside: dict[Digest, tuple[float, int]], report: GcReport, looked_at: float
    ) -> None:
        if self.options.settle:
            await asyncio.sleep(self.options.settle)
        quarantine = self.registry.blobs.quarantine
        try:
            # A push may have checked a blob between its age test and its move, and written its manifest since:
            # every write since (its record is written first; a write may take up to the index's settle time)
            # is read again from storage, here and now, rather than when the replica that made it gets to it.
            await self.index.reread_since(looked_at - self.index.settings.settle)
            reread = time.time()
            db = await self._trusted()
        except IndexUnavailable as e:
            logger.warning("gc: the database cannot be trusted any more (%s): restoring what was set aside", e)
            for digest in aside:
                if await quarantine.restore(digest):
                    report.blobs_restored.append(digest)
            raise
        referenced = await asyncio.to_thread(db.referenced, [str(d) for d in aside])
        for digest, (since, size) in sorted(aside.items(), key=lambda item: str(item[0])):
            if str(digest) in referenced:
                if await quarantine.restore(digest):
                    report.blobs_restored.append(digest)
                await asyncio.to_thread(db.forget_blob, str(digest), since)
                continue
            if await quarantine.purge(digest):
                self.registry.blobs.forget_digest(digest)
                report.blobs_removed[digest] = size
                await self._drop_links(db, digest, report)
                # Re-reading the writes queued what they released again (a deleted manifest's own data, say): done.
                await asyncio.to_thread(db.forget_blob, str(digest), reread)
                continue
            # Pushed again meanwhile (its push queued it anew, later than `since`): this review is done.
            await asyncio.to_thread(db.forget_blob, str(digest), since)

    async def _drop_links(self, db: Database, digest: Digest, report: GcReport) -> None:
        """The repositories' links to a blob whose data is gone, unless written lately or the data came back."""
        keep_after = _now() - dt.timedelta(seconds=max(self.options.grace, self.options.settle))
        for name in await asyncio.to_thread(db.blob_links, str(digest)):
            try:
                if (await self.registry.backend.stat(paths.layer_link(name, digest))).modified > keep_after:
                    continue
            except PathNotFound:
                continue
            if await self.registry.blobs.present(digest) is not None:
                return
            report.links_removed.append((name, digest))
            await self.registry.blobs.drop_link(name, digest)

    # 4. Upload sessions and interrupted writes.

    async def _purge_uploads(self, db: Database, report: GcReport, now: float) -> None:
        limit = self.options.purge_uploads_after
        swept = await asyncio.to_thread(db.get_meta, UPLOADS_SWEPT)
        if swept is None or now - float(swept) >= limit / 4:
            inventory = Inventory()
            for name in await self.registry.repositories.names(with_uploads=True):
                await read_uploads(self.registry, inventory, name)
            for contents in inventory.repositories.values():
                for upload_id, started in sorted(contents.uploads.items()):
                    if now - started.timestamp() > limit:
                        report.uploads_purged.append((contents.name, upload_id))
                        if not self.options.dry_run:
                            # Idle for that long; a marker kept fresh is a live completion's (UploadStore.cancel).
                            await self.registry.uploads.cancel(contents.name, upload_id, purging=True)
            if not self.options.dry_run:
                await asyncio.to_thread(db.set_meta, {UPLOADS_SWEPT: repr(now)})
        report.abandoned_writes_purged = await self.registry.backend.purge_abandoned_writes(
            limit, dry_run=self.options.dry_run
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
