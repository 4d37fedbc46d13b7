"""Which collection a run is: driven by the metadata database (registry/gc/reviews.py), or the full mark over
storage (registry/gc/collector.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from registry.gc.collector import GarbageCollector, GcOptions, GcReport
from registry.index.base import IndexUnavailable
from registry.index.database import FULL_GC_NEEDED
from registry.settings import Settings
from registry.store.registry import Registry

if TYPE_CHECKING:
    from registry.index.local import LocalIndex

logger = logging.getLogger("moorage.gc")
Collect = Callable[[], Awaitable[GcReport]]


def database_driven(settings: Settings) -> bool:
    """Whether `gc.mode` asks for the database-driven collection here. `auto` takes it only where every writer's
    events reach one database (PostgreSQL; SQLite beside the data on the filesystem backend): an S3 registry with
    an SQLite file per replica has queues that each know only their own replica's pushes."""
    mode = settings.gc.mode
    if not settings.index.enabled:
        if mode == "database":
            logger.warning("gc: gc.mode is database but the index is off (index.enabled): marking over storage")
        return False
    if mode != "auto":
        return mode == "database"
    target = settings.database.target()
    return isinstance(target, str) or settings.storage.backend == "filesystem"


def collector(registry: Registry, index: LocalIndex | None, options: GcOptions, database: bool) -> Collect:
    """What one run calls: the database-driven collection when `database` and there is an index, else the mark.
    Once after the database was created, upgraded or rebuilt from storage (its review queues never heard of what
    was released before: blobs of an imported registry, say), the database-driven mode marks over storage instead."""
    if not database or index is None:
        return GarbageCollector(registry, options).run
    from registry.gc.reviews import UPLOADS_SWEPT, ReviewCollector

    async def run() -> GcReport:
        db = index.gc_database()
        why = await asyncio.to_thread(db.get_meta, FULL_GC_NEEDED)
        if not why or options.dry_run:
            # A dry run stays cheap (the UI runs one in a request): it shows what the queues hold.
            if why:
                logger.info("gc: dry run from the review queues; the next collection marks over storage (%s)", why)
            return await ReviewCollector(registry, index, options).run()
        logger.info("gc: marking over storage this once (the database: %s)", why)
        started = time.time()
        report = await GarbageCollector(registry, options).run()
        # Unless the database was rebuilt again meanwhile (then the next collection marks again).
        await asyncio.to_thread(db.replace_meta, FULL_GC_NEEDED, why, "")
        await asyncio.to_thread(db.set_meta, {UPLOADS_SWEPT: repr(started)})  # the mark purged upload sessions too
        return report

    return run


SLOT_KEY = "gc_slot"


def slot_claim(index: LocalIndex) -> Callable[[int], Awaitable[bool]]:
    """The schedule's slots taken in the database (GC leases live beside what GC reads): none while the index cannot
    be trusted, when the database-driven run would refuse anyway."""

    async def claim(slot: int) -> bool:
        try:
            db = index.gc_database()
        except IndexUnavailable as e:
            logger.info("gc: not taking slot %d: %s", slot, e)
            return False
        return await asyncio.to_thread(db.advance, SLOT_KEY, slot)

    return claim
