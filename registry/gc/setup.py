"""Wiring this feature into the app (called by registry.app.create_app)."""

from __future__ import annotations

from starlette.applications import Starlette

from registry.services import Service
from registry.settings import Settings
from registry.store.registry import Registry


def install(app: Starlette, settings: Settings, registry: Registry) -> Service | None:
    """Add routes state, middleware or a background service; return the service to start with the app, if any."""
    return None
