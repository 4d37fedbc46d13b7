"""Wiring the UI into the app (called by registry.app.create_app): its routes, its templates, its state."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.templating import Jinja2Templates

from registry.settings import Settings
from registry.store.registry import Registry
from registry.ui import pages
from registry.ui.pages import UI_STATE, UiState

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


def install(app: Starlette, settings: Settings, registry: Registry) -> None:
    """Add the UI's routes (before the API's catch-alls matter: none of them starts with /ui) and its state."""
    setattr(app.state, UI_STATE, None)
    if not settings.ui.enabled:
        return
    setattr(app.state, UI_STATE, UiState(settings, registry, templates()))
    app.router.routes.extend(pages.routes())


def start(app: Starlette, shared_secret: bytes) -> None:
    """Once the registry's shared secret is known (in the app's lifespan)."""
    state: UiState | None = getattr(app.state, UI_STATE, None)
    if state is not None:
        state.sessions.use_secret(shared_secret)
        state.auth = getattr(app.state, "auth", None)
