"""Wiring this feature into the app (called by registry.app.create_app)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette

from registry import paths
from registry.index.local import LocalIndex
from registry.routing import WRITE_BLOCKERS_STATE
from registry.services import Service
from registry.settings import Settings, local_database_file
from registry.store.registry import Registry

if TYPE_CHECKING:
    # Only the type: prometheus-client must not be imported before `serve` sets its multiprocess directory.
    from registry.metrics import Metrics


def index_target(settings: Settings) -> Path | str:
    """`database.url` (a PostgreSQL URL, or an SQLite file), else `index_path`."""
    return settings.database.target() or index_path(settings)


def index_path(settings: Settings) -> Path:
    """`index.path`, else beside the data on the filesystem backend, else a file of this bucket's own on S3."""
    return local_database_file(settings, settings.index.path, paths.INDEX_DATABASE, "moorage-index")


def open_index(settings: Settings, registry: Registry, metrics: Metrics | None = None) -> LocalIndex:
    """The index over `registry`'s storage. Started, it serves queries; unstarted but following the store's events
    (what an admin command that changes repositories needs) it records changes, which every running server then
    applies."""
    return LocalIndex(registry, settings.index, index_target(settings), metrics)


def install(app: Starlette, settings: Settings, registry: Registry) -> Service | None:
    """Put the index on the app for queries (`app.state.index`), have it follow the store's events, and return the
    service that builds, heals and follows it; None when it is off."""
    app.state.index = None
    if not settings.index.enabled:
        return None
    index = open_index(settings, registry, app.state.metrics)
    index.follow(registry.events)
    app.state.index = index
    getattr(app.state, WRITE_BLOCKERS_STATE).append(index.refuses_writes)
    return index
