"""Wiring the UI into the app (called by registry.app.create_app): its routes, its templates, its state."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.templating import Jinja2Templates

from registry.services import Service
from registry.settings import Settings
from registry.store.registry import Registry
from registry.ui import admin_pages, identity_pages, pages
from registry.ui.pages import UI_STATE, UiState
from registry.ui.sessions import SessionPruner

TEMPLATES = Path(__file__).with_name("templates")


def templates() -> Jinja2Templates:
    # Autoescape on for every template: a repository description or label with markup renders as text.
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(pages.template_filters())
    return Jinja2Templates(env=environment)


def install(app: Starlette, settings: Settings, registry: Registry) -> Service | None:
    """Add the UI's routes (none of the API's paths starts with /ui) and its state; returns the service that prunes
    expired sign-in sessions."""
    setattr(app.state, UI_STATE, None)
    if not settings.ui.enabled:
        return None
    state = UiState(settings, registry, templates())
    setattr(app.state, UI_STATE, state)
    app.router.routes.extend(pages.routes())
    app.router.routes.extend(identity_pages.routes())
    app.router.routes.extend(admin_pages.routes())
    return SessionPruner(state.sessions) if settings.auth is not None else None


def start(app: Starlette, shared_secret: bytes) -> None:
    """Once the registry's shared secret is known (in the app's lifespan)."""
    state: UiState | None = getattr(app.state, UI_STATE, None)
    if state is not None:
        state.sessions.use_secret(shared_secret)
        state.auth = getattr(app.state, "auth", None)
