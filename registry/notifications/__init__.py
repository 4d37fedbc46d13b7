"""Webhook notifications compatible with CNCF Distribution's: `notifications.endpoints[]`.

An optional feature that follows the store's events (registry/store/events.py; the core knows nothing of it).
Events are queued in a local SQLite file (batched, off the
request path), then POSTed to each endpoint as `{"events": [...]}` with
`Content-Type: application/vnd.docker.distribution.events.v1+json`, retried with backoff until it answers 2xx.
"""

from __future__ import annotations

from registry.notifications.notifier import Notifier
from registry.settings import Settings
from registry.store.registry import Registry

__all__ = ["Notifier", "follow"]


def follow(settings: Settings, registry: Registry, *, deliver: bool = True) -> Notifier:
    """A notifier following the store's events; the caller starts and closes it (with the app's lifespan, or
    around an admin command, which only queues: `deliver` off)."""
    url = settings.database.url
    shared = url if url is not None and url.startswith(("postgresql://", "postgres://")) else None
    notifier = Notifier(settings.notifications, deliver=deliver, database_url=shared)
    notifier.follow(registry.events)
    return notifier
