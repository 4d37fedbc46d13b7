"""Wiring this feature into the app (called by registry.app.create_app)."""

from __future__ import annotations

import logging
import math

from starlette.applications import Starlette

from registry.gc.collector import GcOptions
from registry.gc.immutable import ImmutableTags
from registry.gc.schedule import GcSchedule
from registry.services import Service
from registry.settings import Settings
from registry.store.registry import Registry

logger = logging.getLogger("moorage.gc")
# A client's existence check refreshes a blob older than this fraction of the grace period (see collector.py).
TOUCH_FRACTION = 0.5


def install(app: Starlette, settings: Settings, registry: Registry) -> Service | None:
    """Immutable tags on the tag store, GC's touch threshold on the blob store, and the GC schedule if any."""
    if settings.immutable_tags:
        registry.tags.guard = ImmutableTags(settings.immutable_tags)
    # With no grace period, ages protect nothing: never pay for a touch.
    grace = settings.gc.grace
    registry.blobs.touch_after = grace * TOUCH_FRACTION if grace > 0 else math.inf
    app.state.gc_schedule = None
    if settings.gc.interval is None:
        return None
    if settings.maintenance.read_only:
        # A read-only replica writes nothing, GC's deletes included; the writable replicas run the schedule.
        logger.info("gc: maintenance.read_only is on: this process does not run the gc.interval schedule")
        return None
    options = GcOptions.from_settings(settings.gc, settings.uploads, settings.retention, settings.immutable_tags)
    schedule = GcSchedule(registry, options, settings.gc.interval, app.state.metrics)
    app.state.gc_schedule = schedule
    return schedule
