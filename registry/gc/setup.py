"""Wiring this feature into the app (called by registry.app.create_app)."""

from __future__ import annotations

import logging

from starlette.applications import Starlette

from registry.gc.collector import GcOptions
from registry.gc.modes import collector, database_driven, slot_claim
from registry.gc.schedule import GcSchedule
from registry.services import Service
from registry.settings import Settings
from registry.store.registry import Registry

logger = logging.getLogger("moorage.gc")


def install(app: Starlette, settings: Settings, registry: Registry) -> Service | None:
    """The GC schedule, if any (the store applies immutable tags and GC's touch rule itself)."""
    app.state.gc_schedule = None
    if settings.gc.interval is None:
        return None
    if settings.maintenance.read_only:
        # A read-only replica writes nothing, GC's deletes included; the writable replicas run the schedule.
        logger.info("gc: maintenance.read_only is on: this process does not run the gc.interval schedule")
        return None
    options = GcOptions.of(settings)
    database = database_driven(settings) and app.state.index is not None
    collect = collector(registry, app.state.index, options, database)
    claim = slot_claim(app.state.index) if database else None
    schedule = GcSchedule(registry, collect, settings.gc.interval, app.state.metrics, claim=claim)
    app.state.gc_schedule = schedule
    return schedule
