"""The `gc.interval` schedule: every replica (and worker process) wakes at each slot; one runs GC.

Time is cut into slots of `gc.interval` seconds. At the start of a slot each process tries to take it: with the
database-driven collection, by moving the database's slot counter up to it (one transaction: one winner); else by
creating that slot's lease object in storage exclusively (`put_content(exclusive=True)`, a conditional PUT on S3).
Exactly one succeeds and runs GC; nobody needs to expire or take over a lease, so a replica that dies mid-run blocks
nothing beyond its own slot. Old lease objects are removed by the next winner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

from registry import paths
from registry.gc.collector import GcReport
from registry.gc.modes import Collect
from registry.index.base import IndexUnavailable
from registry.metrics import Metrics
from registry.store.registry import Registry
from storage_backends import PathNotFound, StorageError

logger = logging.getLogger("moorage.gc")
LEASES_KEPT = 16


Claim = Callable[[int], Awaitable[bool]]
"""Take slot N for this process: True for exactly one of the processes asking."""


class GcSchedule:
    def __init__(
        self,
        registry: Registry,
        collect: Collect,
        interval: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        claim: Claim | None = None,
    ) -> None:
        """`claim`: how a slot is taken (default: an exclusive lease object in storage)."""
        self.registry = registry
        self.collect = collect
        self.claim = claim or self._claim_in_storage
        self.interval = interval
        self.metrics = metrics
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run_forever(), name="gc-schedule")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run_forever(self) -> None:
        while True:
            now = self.clock()
            slot = int(now // self.interval) + 1
            await asyncio.sleep(slot * self.interval - now)
            try:
                await self.run_slot(slot)
            except asyncio.CancelledError:
                raise
            except IndexUnavailable as e:
                logger.warning("gc: skipping this slot's database-driven run: %s", e)
                if self.metrics is not None:
                    self.metrics.gc_failed()
            except Exception:
                logger.exception("gc: scheduled run failed")
                if self.metrics is not None:
                    self.metrics.gc_failed()

    async def run_slot(self, slot: int) -> GcReport | None:
        """Run GC if this process wins the slot's lease; None when another one has it."""
        if not await self.claim(slot):
            return None
        report = await self.collect()
        logger.info(
            "gc: removed %d blobs (%d bytes), %d manifests, %d upload sessions in %.1f s",
            len(report.blobs_removed),
            report.bytes_reclaimed,
            len(report.manifests_removed),
            len(report.uploads_purged),
            report.seconds,
        )
        if self.metrics is not None:
            self.metrics.gc_finished(
                len(report.blobs_removed),
                report.bytes_reclaimed,
                len(report.manifests_removed),
                len(report.uploads_purged),
            )
        return report

    async def _claim_in_storage(self, slot: int) -> bool:
        lease = json.dumps({"owner": self.owner, "slot": slot, "started": self.clock()}).encode()
        if not await self.registry.backend.put_content(paths.gc_lease(slot), lease, exclusive=True):
            return False
        await self._drop_old_leases(slot)
        return True

    async def _drop_old_leases(self, slot: int) -> None:
        try:
            leases = await self.registry.backend.list(paths.GC_LEASES)
        except PathNotFound:
            return
        for entry in leases:
            number = paths.parse_gc_lease(entry.path)
            if number is not None and number < slot - LEASES_KEPT:
                with contextlib.suppress(StorageError):
                    await self.registry.backend.delete(entry.path)
