"""Webhook notifications compatible with CNCF Distribution's: `notifications.endpoints[]`.

An optional feature behind the seam of `setup(app, settings)`: the core only calls `registry.events.notify`, which
does nothing unless this module put a sink on the app. Events are queued in a local SQLite file (batched, off the
request path), then POSTed to each endpoint as `{"events": [...]}` with
`Content-Type: application/vnd.docker.distribution.events.v1+json`, retried with backoff until it answers 2xx.
"""

from __future__ import annotations

from starlette.applications import Starlette

from registry.notifications.notifier import Notifier
from registry.settings import Settings

__all__ = ["Notifier", "setup"]


def setup(app: Starlette, settings: Settings) -> Notifier:
    """Put a notifier on the app as its event sink; the caller starts and closes it with the app's lifespan."""
    notifier = Notifier(settings.notifications)
    app.state.events = notifier
    return notifier
