"""The metadata index of one process: an SQLite file (shared by the processes of one host) kept in line with storage.

Storage stays the source of truth. On start the index is built from storage when it is missing, corrupt, of an older
schema, of another storage (the epoch file differs) or too old to catch up from the change records; otherwise the
change records since its position are replayed, which also repairs a crash between a storage write and the index
write. Then every `poll_interval` it reads the change records others wrote (see changes.py) and writes pull counts.

It follows the store's events (registry/store/events.py): before a write, the change is recorded in storage (a
trace every replica reads, even if this process dies mid-write); after it, the rows the events name are re-read
from storage off the request path (events that arrive meanwhile are applied together), and a second record says
the change is done. Queries first wait (briefly) for the changes this process made, so a client reads its own
writes at once; the other processes of the host, which share the file, see them as soon as they are applied
(milliseconds), other replicas at their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from registry import paths
from registry.database import DATABASE_ERRORS, redacted
from registry.index.base import (
    BrowseOrder,
    BrowsePage,
    IndexUnavailable,
    ManifestRecord,
    RepositoryBytes,
    RepositoryRow,
    RepositorySummary,
    SearchHit,
    SearchQuery,
    UsageSummary,
    Visible,
    decode_cursor,
    encode_cursor,
)
from registry.index.changes import Change, ChangeLog, merged, position_at, time_of
from registry.index.database import FULL_GC_NEEDED, Database, SchemaNewer
from registry.index.scan import read_facts, read_repository
from registry.index.settings import IndexSettings
from registry.store.events import BLOB_EVENTS, Event, EventBus, EventType, Planned
from registry.store.registry import Registry
from storage_backends import PathNotFound, StorageError

if TYPE_CHECKING:
    # Only the type: prometheus-client must not be imported before `serve` sets its multiprocess directory.
    from registry.metrics import Metrics

logger = logging.getLogger("moorage")
T = TypeVar("T")
PRUNE_EVERY_SECONDS = 60.0
RETRY_SECONDS = 5.0
CATALOG_BATCH = 500
SEARCH_BATCH = 200
START_WAIT_SECONDS = 3.0
BUILD_LEASE = "builder"
BUILD_LEASE_SECONDS = 30.0
BUILD_WAIT_SECONDS = 0.5
OWN_WRITES_WAIT_SECONDS = 2.0
IMPORT_BATCH = 256
IMPORT_CHECKPOINT = "import_through"  # the last repository of the last batch an import finished
ANNOUNCED_LIMIT = 10_000
SETTLED_WAIT_SECONDS = 60.0  # how long GC waits for this process's own writes to reach the index
FOLLOW_LAG_SECONDS = 15.0  # how far behind the change records (past their settle time) GC may still trust the index
FOLLOWED = (
    EventType.BLOB_PUSHED,
    EventType.BLOB_MOUNTED,
    EventType.BLOB_DELETED,
    EventType.MANIFEST_PUSHED,
    EventType.MANIFEST_DELETED,
    EventType.TAG_SET,
    EventType.TAG_DELETED,
    EventType.REPOSITORY_DELETED,
    EventType.MANIFEST_PULLED,
)


class LocalIndex:
    def __init__(
        self, registry: Registry, settings: IndexSettings, target: Path | str, metrics: Metrics | None = None
    ) -> None:
        """`target`: the SQLite file, or a PostgreSQL URL (registry/database.py)."""
        self.registry = registry
        self.settings = settings
        self.target = target
        self.where = str(target) if isinstance(target, Path) else redacted(target)
        self.metrics = metrics
        self.skipped = 0  # objects indexed in part since this started (`moorage index rebuild` reports it)
        self.changes = ChangeLog(registry.backend, settings.settle, settings.changes_retention)
        self._db: Database | None = None
        self._ready = False
        self._became_ready = asyncio.Event()
        self._position = ""
        self._pulls: Counter[tuple[str, str]] = Counter()  # (repository, tag or "" by digest)
        self._locks: dict[str, asyncio.Lock] = {}
        self._failed: set[str] = set()  # refreshes that failed here: the poll loop retries them
        self._queued: dict[str, Change] = {}  # what the store's events named, not yet applied
        self._announced: dict[int, str] = {}  # a write in progress (Planned.serial) -> the record announcing it
        self._finished: list[tuple[str, str]] = []  # (repository, record) of writes done, once their events apply
        self._listed: set[str] = set()  # repositories known to have their row (blob events need no update then)
        self._pushed: list[tuple[str, str]] = []  # (blob, repository) pushed or mounted, not yet queued for review
        # Why the database server cannot be reached, while it cannot (writes wait until it first answers).
        self._unreachable: str | None = None
        if not isinstance(target, Path):
            self._unreachable = "the metadata database cannot be reached yet (connecting)"
        self._applier: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pruned_at = 0.0
        self._reconciled_at = time.monotonic()  # a start catches up or rebuilds: the first check is due later
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @property
    def ready(self) -> bool:
        return self._ready

    async def wait_ready(self, seconds: float) -> bool:
        """Wait (at most `seconds`) until the index is ready; whether it is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._became_ready.wait(), seconds)
        return self._ready

    @property
    def behind(self) -> frozenset[str]:
        """Repositories whose last refresh failed here (the poll loop retries them)."""
        return frozenset(self._failed)

    # Service.

    async def start(self) -> None:
        """Open the file and start building or catching up; wait for that a little (a small registry is then
        ready for its first request), not longer: until the index is ready the catalog walks storage. A database
        that cannot be reached does not stop the start: the index keeps trying, and `/readyz` says it is not ready."""
        if isinstance(self.target, Path):
            await self.open()
        # A database server is opened by the index's own task: one that cannot be reached delays nothing.
        self._task = asyncio.create_task(self._run(), name="metadata index")
        waiter = asyncio.create_task(self._became_ready.wait())
        await asyncio.wait({self._task, waiter}, timeout=START_WAIT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    async def open(self) -> None:
        """Open (or create, or replace when corrupt) the file, without following storage: for admin commands."""
        if self._db is None:
            target = self.target
            if isinstance(target, Path):
                self._db = await asyncio.to_thread(Database.open, target)
            else:
                self._db = await asyncio.to_thread(Database.connect, target)
                self._database_answered()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._applier is not None:
            with contextlib.suppress(Exception):
                await self._applier  # the records of what this process changed are written before it goes
        self._ready = False
        if self._db is not None:
            with contextlib.suppress(*DATABASE_ERRORS):
                await self._flush_pulls()
            await asyncio.to_thread(self._db.close)
            self._db = None

    async def _run(self) -> None:
        while True:
            while not self._ready:
                try:
                    await self.open()
                    await self.catch_up()
                    self._database_answered()
                except Exception as e:
                    await self._database_failed(e)
                    logger.exception("index: could not build the metadata index; retrying in %gs", RETRY_SECONDS)
                    await self._reopen_if_corrupt()
                    await asyncio.sleep(RETRY_SECONDS)
            while self._ready:
                await asyncio.sleep(self.settings.poll_interval)
                try:
                    await self.poll()
                    self._database_answered()
                except (StorageError, OSError, *DATABASE_ERRORS) as e:
                    await self._database_failed(e)
                    logger.warning("index: following storage failed (%s); trying again", e)
                except Exception:
                    logger.exception("index: following storage failed")
                    await self._reopen_if_corrupt()

    async def _reopen_if_corrupt(self) -> None:
        """A file that went bad is replaced by a new one, built from storage (queries fall back meanwhile)."""
        db = self._db
        if db is None:
            return  # not open yet (a database that cannot be reached): the next round opens it
        if await asyncio.to_thread(db.healthy):
            return
        logger.error("index: %s is corrupt: building a new one", self.where)
        self._ready = False
        self._db = None
        await asyncio.to_thread(db.close)
        await self.open()

    async def catch_up(self) -> None:
        """Rebuild when the index cannot be trusted, else replay the change records since its position. Processes
        sharing the file take turns: one builds, the others wait for it and then replay."""
        db = self._database()
        epoch = await self._storage_epoch()
        while True:
            position = await asyncio.to_thread(db.get_meta, "position")
            stored_epoch = await asyncio.to_thread(db.get_meta, "epoch")
            too_old = position is None or time_of(position) < time.time() - self.settings.changes_retention
            if stored_epoch == epoch and not too_old:
                assert position is not None
                self._position = position
                await self.poll()
                break
            if await asyncio.to_thread(db.claim, BUILD_LEASE, self._owner, BUILD_LEASE_SECONDS):
                why = "new" if stored_epoch is None else "of other storage" if stored_epoch != epoch else "too old"
                logger.info("index: building the metadata index from storage (the index is %s)", why)
                await self.rebuild(epoch)
                break
            await asyncio.sleep(BUILD_WAIT_SECONDS)  # another process builds this file: wait for it
        self._ready = True
        self._became_ready.set()

    async def rebuild(
        self,
        epoch: str | None = None,
        *,
        reread: bool = False,
        resume: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Read every repository from storage into the index; returns how many there are. With `reread`, manifests
        already indexed are read again too (their content cannot change, but how it is indexed may have). With
        `resume`, the repositories an interrupted run recorded as done are skipped (`moorage database import`).
        `progress(done, total)` is called as repositories are indexed."""
        db = self._database()
        epoch = epoch or await self._storage_epoch()
        # Changes made while this runs are in the records after this position; they are replayed afterwards.
        position = position_at(time.time() - self.settings.settle)
        started = time.monotonic()
        names = sorted(await self.registry.repositories.names())
        done_through = (await asyncio.to_thread(db.get_meta, IMPORT_CHECKPOINT)) if resume else None
        todo = [name for name in names if not done_through or name > done_through]
        limit = asyncio.Semaphore(self.settings.rebuild_concurrency)
        done = len(names) - len(todo)
        if progress is not None:
            progress(done, len(names))

        async def one(name: str) -> None:
            nonlocal done
            async with limit:
                await self._refresh(name, fresh=reread)
            done += 1
            if progress is not None:
                progress(done, len(names))

        renewing = asyncio.create_task(self._hold_build_lease())
        try:
            # In sorted batches, each recorded once done: an interrupted import resumes after the last one.
            for start in range(0, len(todo), IMPORT_BATCH):
                batch = todo[start : start + IMPORT_BATCH]
                await asyncio.gather(*(one(name) for name in batch))
                if resume:
                    await asyncio.to_thread(db.set_meta, {IMPORT_CHECKPOINT: batch[-1]})
        finally:
            renewing.cancel()
            await asyncio.to_thread(db.release, BUILD_LEASE, self._owner)
        # Not listed: gone, unless pushed since the listing (then storage has it): storage decides each one.
        await asyncio.gather(*(one(name) for name in await asyncio.to_thread(db.names) - set(names)))
        await asyncio.to_thread(
            db.set_meta,
            # Built from storage: GC's review queues never heard of what was released before, so the next
            # collection marks over storage (registry/gc/modes.py).
            {"epoch": epoch, "position": position, IMPORT_CHECKPOINT: "", FULL_GC_NEEDED: "rebuilt from storage"},
        )
        self._position = position
        logger.info("index: %d repositories indexed in %.1fs", len(names), time.monotonic() - started)
        return len(names)

    async def _hold_build_lease(self) -> None:
        db = self._database()
        while True:
            await asyncio.to_thread(db.claim, BUILD_LEASE, self._owner, BUILD_LEASE_SECONDS)
            await asyncio.sleep(BUILD_LEASE_SECONDS / 3)

    async def poll(self) -> None:
        """Apply the changes other processes recorded, retry failed refreshes, write pull counts, prune records."""
        db = self._database()
        changes, position = await self.changes.read(self._position)
        retry, self._failed = self._failed, set()
        pending = merged([*changes, *(Change(name, whole=True) for name in retry)])
        self._listed -= pending.keys()  # changed elsewhere: the next blob event here looks again
        for name in sorted(pending):
            try:
                await self._apply(pending[name])
            except Exception:  # _apply catches what it can foresee; one repository never stops the others
                logger.exception("index: could not apply the changes of %s; retrying at the next poll", name)
                self._failed.add(name)
        if position != self._position:
            await asyncio.to_thread(db.set_meta, {"position": position})
            self._position = position
        await self._flush_pulls()
        if time.monotonic() - self._pruned_at > PRUNE_EVERY_SECONDS:
            self._pruned_at = time.monotonic()
            await self.changes.prune()
        if time.monotonic() - self._reconciled_at > self.settings.reconcile_interval:
            self._reconciled_at = time.monotonic()
            await self.reconcile()

    async def reconcile(self) -> list[str]:
        """Re-read the repositories storage and the index disagree on (present in one only): what another tool
        wrote or removed without the change records Moorage's writes leave. Returns their names."""
        db = self._database()
        in_storage = await self.registry.repositories.names()
        in_index = await asyncio.to_thread(db.names)
        differing = sorted(set(in_storage) ^ in_index)
        for name in differing:
            await self._refresh(name)
        if differing:
            logger.info("index: %d repositories re-read from storage: %s", len(differing), ", ".join(differing[:10]))
        return differing

    async def _storage_epoch(self) -> str:
        """The identity of this storage's index generation (a fresh bucket or directory gets a new one)."""
        try:
            return (await self.registry.backend.get_content(paths.INDEX_EPOCH)).decode()
        except PathNotFound:
            await self.registry.backend.put_content(paths.INDEX_EPOCH, uuid.uuid4().hex.encode(), exclusive=True)
            return (await self.registry.backend.get_content(paths.INDEX_EPOCH)).decode()

    def _database(self) -> Database:
        if self._db is None:
            raise IndexUnavailable("the metadata index is closed")
        return self._db

    # Writes (MetadataIndex).

    def follow(self, events: EventBus) -> None:
        """Record, before each write of the store, what it is about to change; apply what it changed after."""
        events.on_prepare(self._prepare, self._finish)
        events.subscribe(self._on_event, FOLLOWED)

    async def _prepare(self, planned: Planned) -> None:
        change = Change(planned.repository, set(planned.tags), set(planned.manifests), planned.whole)
        key = await self.changes.append(change)
        self.changes.announced(key, change)
        if len(self._announced) >= ANNOUNCED_LIMIT:  # writes that failed never finish: their records are read back
            del self._announced[next(iter(self._announced))]
        self._announced[planned.serial] = key

    def _finish(self, planned: Planned, completed: bool) -> None:
        """Completed, its events queued: once they are applied, the write's record need not be read back.
        Abandoned part-way: what it names is re-read from storage now (its events may be missing), and its record
        is still read back once settled (storage may answer late for what the write began)."""
        key = self._announced.pop(planned.serial, None)
        if key is None:
            return
        if completed:
            self._finished.append((planned.repository, key))
        else:
            self._queue(Change(planned.repository, set(planned.tags), set(planned.manifests), planned.whole))
        self._wake_applier()

    def _on_event(self, event: Event) -> None:
        name = event.repository
        if event.type is EventType.MANIFEST_PULLED:
            self._pulls[(name, event.tag or "")] += 1  # in memory; written in batches off the request
            return
        if event.type in (EventType.BLOB_PUSHED, EventType.BLOB_MOUNTED) and event.digest:
            self._pushed.append((event.digest, name))  # for GC's review, unless a manifest comes to reference it
            self._wake_applier()
        if event.type in BLOB_EVENTS:
            # A repository may start (or end) with blobs alone: its row, not its tags or manifests, may change.
            if event.type is not EventType.BLOB_DELETED and name in self._listed:
                return
            change = Change(name)
        else:
            whole = event.type is EventType.REPOSITORY_DELETED
            tags, manifests = {event.tag} if event.tag else set(), {event.digest} if event.digest else set()
            change = Change(name, tags, manifests, whole)
        self._queue(change)
        self._wake_applier()

    def _queue(self, change: Change) -> None:
        if change.repository in self._queued:
            self._queued[change.repository].merge(change)
        else:
            self._queued[change.repository] = change

    def _wake_applier(self) -> None:
        if self._applier is None or self._applier.done():
            self._applier = asyncio.get_running_loop().create_task(self._apply_queued(), name="index: apply")

    async def _apply_queued(self) -> None:
        """Apply what the events named, then tell every other process it is done (one record per repository)."""
        await asyncio.sleep(0)  # the events of the write that woke this are all queued by now
        while self._queued or self._pushed:
            await self._review_pushed()
            batch, self._queued = self._queued, {}
            shared = self._task is None and (
                not isinstance(self.target, Path) or await asyncio.to_thread(self.target.exists)
            )
            if self._db is None and shared:
                # An admin command beside servers (of this host's file, or of the database): update what they read,
                # so that they answer right away. A server opens its database in its own task.
                with contextlib.suppress(Exception):
                    await self.open()
            for name in sorted(batch):
                try:
                    applied = await self._apply(batch[name])
                except Exception:  # _apply catches what it can foresee; the poll loop retries the repository
                    logger.exception("index: could not apply the changes of %s; retrying at the next poll", name)
                    self._failed.add(name)
                    applied = False
                if not applied and self._db is not None and self.metrics is not None:
                    self.metrics.index_refresh_failed()
                if applied and not batch[name].whole:
                    self._listed.add(name)
                else:
                    self._listed.discard(name)
                try:
                    done = await self.changes.append(batch[name])
                except (StorageError, OSError) as e:
                    logger.warning(
                        "index: could not record the change of %s (%s); others see it within %gs",
                        name,
                        e,
                        self.settings.settle,
                    )
                    continue
                if applied:
                    self.changes.applied(done)
        # Every event emitted before a write finished has been applied by now (no await since the last batch).
        finished, self._finished = self._finished, []
        for name, key in finished:
            if name not in self._failed:
                self.changes.applied(key)

    async def _review_pushed(self) -> None:
        pushed, self._pushed = self._pushed, []
        if not pushed or self._db is None:
            return
        try:
            await asyncio.to_thread(self._db.review_pushed, pushed)
        except DATABASE_ERRORS as e:
            # Unqueued, such a blob is left to `moorage gc --full` if no manifest comes to reference it.
            logger.warning("index: could not queue %d pushed blobs for GC's review: %s", len(pushed), e)

    def refuses_writes(self) -> str | None:
        """Why pushes and deletes must wait (a database server that cannot be reached: the writes would reach
        storage but not the index every replica reads), or None."""
        return self._unreachable

    async def _database_failed(self, error: BaseException) -> None:
        """After a failure: refuse writes if the database server cannot be reached (a failed statement on a server
        that answers, a deadlock say, is not an outage: the ping decides)."""
        if isinstance(self.target, Path):
            return
        if isinstance(error, SchemaNewer):
            self._unreachable = f"the metadata database cannot be used: {error}"
            return
        if not isinstance(error, DATABASE_ERRORS):
            return
        db = self._db
        if db is not None and await asyncio.to_thread(db.answers):
            return
        if self._unreachable is None:
            logger.error("index: the database %s cannot be reached: refusing writes until it can", self.where)
        self._unreachable = f"the metadata database cannot be reached ({error.__class__.__name__})"

    def _database_answered(self) -> None:
        if self._unreachable is not None:
            logger.info("index: the database %s answers: taking writes", self.where)
            self._unreachable = None

    def gc_database(self) -> Database:
        """The database GC's reviews read, provided the index is in line with storage (ready, following the change
        records, behind on nothing); raises IndexUnavailable saying why not."""
        if not self._ready or self._db is None:
            raise IndexUnavailable("the metadata index is not ready")
        if self._failed:
            raise IndexUnavailable(f"the metadata index is behind on {len(self._failed)} repositories")
        lag = time.time() - time_of(self._position) - self.settings.settle
        if lag > max(FOLLOW_LAG_SECONDS, 5 * self.settings.poll_interval):
            raise IndexUnavailable(f"the metadata index has not followed the change records for {lag:.0f} s")
        return self._db

    async def settled(self) -> None:
        """Wait until what this process changed is in the index (GC's own deletions, before it looks again)."""
        deadline = time.monotonic() + SETTLED_WAIT_SECONDS
        while (applier := self._applier) is not None and not applier.done():
            if time.monotonic() > deadline:
                raise IndexUnavailable("the index is still applying this process's writes")
            await asyncio.wait({applier}, timeout=max(0.0, deadline - time.monotonic()))

    async def reread_since(self, since: float) -> None:
        """Bring the index in line with storage, now, for every change recorded since `since` by any process or
        replica (each write records itself before it writes): GC's second look before it deletes for good, which
        must not wait for other replicas to apply their writes. Raises IndexUnavailable when a repository could not
        be read."""
        await self.settled()
        changes = await self.changes.recorded_since(since)
        for name, change in sorted(merged(changes).items()):
            if not await self._apply(change):
                raise IndexUnavailable(f"could not read {name} from storage again")

    async def _own_writes(self) -> None:
        """Wait (a little) until what this process changed is in the index."""
        applier = self._applier
        if applier is not None and not applier.done():
            await asyncio.wait({applier}, timeout=OWN_WRITES_WAIT_SECONDS)

    async def _apply(self, change: Change) -> bool:
        """Bring what `change` names in line with storage: only its rows, unless it names the whole repository."""
        if change.whole:
            return await self._refresh(change.repository)
        name = change.repository

        async def rows(db: Database) -> None:
            async def lookup(digests: list[str]) -> dict[str, ManifestRecord]:
                return await asyncio.to_thread(db.manifests_by_digest, name, digests)

            # Tags that named a changed manifest may have gone with it (a DELETE by digest untags).
            tags = {*change.tags, *await asyncio.to_thread(db.tags_pointing_at, name, sorted(change.manifests))}

            async def parents(digests: list[str]) -> list[str]:
                return await asyncio.to_thread(db.indexes_listing, name, digests)

            facts = await read_facts(self.registry, name, tags, change.manifests, lookup, parents, self._skipped)
            left = await asyncio.to_thread(db.apply, name, facts.tags, facts.manifests)
            # Nothing indexable left: a repository with blobs only stays listed, a deleted one goes.
            if not left and not await self.registry.repositories.exists(name):
                await asyncio.to_thread(db.replace, name, None)

        return await self._locked(name, rows)

    async def _refresh(self, name: str, fresh: bool = False) -> bool:
        """Re-read `name` from storage into the index; False (and a retry at the next poll) when that failed."""

        async def whole(db: Database) -> None:
            known = {} if fresh else await asyncio.to_thread(db.known_manifests, name)
            snapshot = await read_repository(self.registry, name, known, self._skipped)
            await asyncio.to_thread(db.replace, name, snapshot)

        return await self._locked(name, whole)

    async def _locked(self, name: str, update: Callable[[Database], Awaitable[None]]) -> bool:
        """Run one update of `name`'s rows under its lock; False (and a retry at the next poll) when it failed."""
        db = self._db
        if db is None:
            return False  # not started: an admin command's index only records changes for the servers
        lock = self._locks.setdefault(name, asyncio.Lock())
        try:
            async with lock:
                await update(db)
        except (StorageError, OSError, *DATABASE_ERRORS) as e:
            await self._database_failed(e)
            logger.warning("index: could not read %s from storage (%s); retrying later", name, e)
            self._failed.add(name)
            return False
        except Exception:
            # Content cannot cause this (the scan reads it leniently, the database clamps it): a bug, which must
            # neither stop a rebuild nor fail the request that changed the repository.
            logger.exception("index: could not index %s; retrying later", name)
            self._failed.add(name)
            return False
        return True

    def _skipped(self, kind: str, what: str, problems: list[str]) -> None:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        logger.warning("index: %s read in part: %s", what, shown)
        self.skipped += 1
        if self.metrics is not None:
            self.metrics.index_object_skipped(kind)

    async def _flush_pulls(self) -> None:
        if self._pulls:
            await self._own_writes()  # a pull of a repository just pushed counts once its row is in
        if self._pulls and self._db is not None:
            counts, self._pulls = self._pulls, Counter()
            await asyncio.to_thread(self._db.add_pulls, counts)

    # Queries (MetadataIndex).

    async def _queryable(self) -> Database:
        await self._own_writes()
        if not self._ready or self._db is None:
            raise IndexUnavailable("the metadata index is being built")
        return self._db

    @staticmethod
    async def _read(function: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(function, *args)
        except DATABASE_ERRORS as e:
            raise IndexUnavailable(f"the metadata index failed: {e}") from e

    async def catalog(self, last: str | None, limit: int | None, visible: Visible | None) -> list[str]:
        db = await self._queryable()
        if limit is None:
            limit = 2**62
        found: list[str] = []
        while len(found) < limit:
            batch_size = min(limit - len(found), CATALOG_BATCH) if visible is None else CATALOG_BATCH
            batch = await self._read(db.catalog, last, batch_size)
            found += batch if visible is None else [name for name in batch if visible(name)]
            if len(batch) < batch_size:
                break
            last = batch[-1]
        return found[:limit]

    async def search(
        self, query: SearchQuery, last: str | None, limit: int, visible: Visible | None
    ) -> list[SearchHit]:
        db = await self._queryable()
        after = (await self._read(db.rank_of, last, query.terms), last) if last else None
        batch_size = limit if visible is None else max(limit, SEARCH_BATCH)
        found: list[str] = []
        while len(found) < limit:
            batch = await self._read(db.ranked, query, after, batch_size)
            found += [name for _, name in batch if visible is None or visible(name)]
            if len(batch) < batch_size:
                break
            after = batch[-1]
        return await self._read(self._hits, db, query, found[:limit])

    @staticmethod
    def _hits(db: Database, query: SearchQuery, names: list[str]) -> list[SearchHit]:
        return db.hits(query, names)

    async def repository(self, name: str) -> RepositorySummary | None:
        db = await self._queryable()
        return await self._read(db.summary, name)

    async def browse(
        self, query: SearchQuery, order: BrowseOrder, after: str | None, limit: int, visible: Visible | None
    ) -> BrowsePage:
        db = await self._queryable()
        position = decode_cursor(after, order)
        batch_size = limit + 1 if visible is None else max(limit + 1, SEARCH_BATCH)
        found: list[tuple[Any, RepositoryRow]] = []
        while len(found) <= limit:
            batch = await self._read(db.listed, query, order, position, batch_size)
            found += [item for item in batch if visible is None or visible(item[1].name)]
            if len(batch) < batch_size:
                break
            position = (batch[-1][0], batch[-1][1].name)
        more = len(found) > limit
        found = found[:limit]
        cursor = encode_cursor(found[-1][0], found[-1][1].name) if more and found else None
        return BrowsePage(tuple(row for _, row in found), cursor)

    async def usage(self, visible: Visible | None, largest: int) -> UsageSummary:
        db = await self._queryable()
        sizes = await self._read(db.logical_sizes)
        if visible is not None:
            sizes = [(name, size) for name, size in sizes if visible(name)]
            physical = await self._read(db.physical_size_of, [name for name, _ in sizes])
        else:
            physical = await self._read(db.physical_size)
        top = heapq.nsmallest(largest, sizes, key=lambda item: (-item[1], item[0]))
        rows = []
        for name, size in top:
            manifests, blobs, tags = await self._read(db.counts, name)
            rows.append(RepositoryBytes(name, size, manifests, blobs, tags))
        return UsageSummary(len(sizes), sum(size for _, size in sizes), physical, tuple(rows))

    async def counted(self, name: str, blobs: list[str]) -> tuple[int, set[str]]:
        """Repository `name`'s logical bytes (each blob its manifests reference, once) and which of `blobs` are
        among those (quotas count the others on top)."""
        db = await self._queryable()
        return await self._read(db.counted, name, blobs)

    async def sharing(self, name: str, blobs: list[str], visible: Visible | None) -> dict[str, int]:
        db = await self._queryable()
        if visible is None:
            return await self._read(db.sharing, name, blobs)
        sharers = await self._read(db.sharers, name, blobs)
        return {blob: sum(1 for other in sharers.get(blob, ()) if visible(other)) for blob in blobs}
