"""The store's events (registry/store/events.py) in CNCF Distribution's notification format.

    {"id", "timestamp", "action": push|pull|mount|delete,
     "target": {"mediaType", "digest", "size", "length", "repository", "url", "tag"?, "fromRepository"?},
     "request": {"id", "addr", "host", "method", "useragent"}, "actor": {"name"}, "source": {"addr", "instanceID"}}

Tag deletions carry `target.repository` and `target.tag` only, repository deletions `target.repository` only
(Distribution 3's forms). Events that no request caused (GC, retention, admin commands) have an empty `request` and
the system actor's name (`actor.name`: "moorage:gc", ...).
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from typing import Any, Literal

from registry.store.events import BLOB_EVENTS, Event, EventType

Action = Literal["push", "pull", "delete", "mount"]
INSTANCE_ID = str(uuid.uuid4())
_HOSTNAME = socket.gethostname()
BLOB_MEDIA_TYPE = "application/octet-stream"  # what Distribution reports: a blob's own type is in its manifest

ACTIONS: dict[EventType, Action] = {
    EventType.BLOB_PUSHED: "push",
    EventType.BLOB_MOUNTED: "mount",
    EventType.BLOB_DELETED: "delete",
    EventType.BLOB_PULLED: "pull",
    EventType.MANIFEST_PUSHED: "push",
    EventType.MANIFEST_PULLED: "pull",
    EventType.MANIFEST_DELETED: "delete",
    EventType.TAG_DELETED: "delete",
    EventType.REPOSITORY_DELETED: "delete",
}
"""The events webhooks carry (a tag set is part of its manifest's push)."""


def media_type_of(event: Event) -> str:
    return BLOB_MEDIA_TYPE if event.type in BLOB_EVENTS else event.media_type


def _timestamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _target(event: Event) -> dict[str, Any]:
    if event.type is EventType.REPOSITORY_DELETED:
        return {"repository": event.repository}
    if event.type is EventType.TAG_DELETED:
        return {"repository": event.repository, "tag": event.tag}
    origin, port = event.origin, event.origin.server_port
    base = origin.base_url.rstrip("/") or f"http://{_HOSTNAME}" + (f":{port}" if port else "")
    resource = "blobs" if event.type in BLOB_EVENTS else "manifests"
    target: dict[str, Any] = {
        "mediaType": media_type_of(event),
        "digest": event.digest,
        "repository": event.repository,
        "url": f"{base}/v2/{event.repository}/{resource}/{event.digest}",
    }
    if event.size is not None:
        target["size"] = event.size
        target["length"] = event.size  # Distribution sends both
    if event.tag:
        target["tag"] = event.tag
    if event.source:
        target["fromRepository"] = event.source
    return target


def envelope_event(event: Event) -> dict[str, Any]:
    """One event of a webhook envelope."""
    origin = event.origin
    port = origin.server_port
    return {
        "id": str(uuid.uuid4()),
        "timestamp": _timestamp(event.timestamp),
        "action": ACTIONS[event.type],
        "target": _target(event),
        "request": {
            "id": origin.request_id,
            "addr": origin.address,
            "host": origin.host,
            "method": origin.method,
            "useragent": origin.user_agent,
        },
        "actor": {"name": origin.actor},
        "source": {"addr": f"{_HOSTNAME}:{port}" if port else _HOSTNAME, "instanceID": INSTANCE_ID},
    }
