"""Registry events (push, pull, delete, mount of manifests and blobs) in CNCF Distribution's notification format.

Handlers describe what happened with `Target` and call `notify`; whatever sink the app has (webhook notifications,
or none) takes the event. With no sink, `notify` returns at once: events cost nothing unless someone listens.
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from starlette.requests import Request

from registry.digests import Digest

Action = Literal["push", "pull", "delete", "mount"]
Kind = Literal["manifest", "blob"]
INSTANCE_ID = str(uuid.uuid4())
_HOSTNAME = socket.gethostname()


@dataclass(frozen=True, slots=True)
class Target:
    kind: Kind
    repository: str
    digest: str
    media_type: str = ""
    size: int | None = None
    tag: str = ""


def reference_tag(reference: str) -> str:
    """The tag a manifest reference names, or "" when it is a digest."""
    return "" if Digest.is_digest(reference) else reference


class EventSink(Protocol):
    def wants(self, kind: Kind, action: Action, media_type: str) -> bool:
        """Whether any listener takes this kind of event (so that building it is worth the time)."""

    def emit(self, event: dict[str, Any]) -> None:
        """Take an event; never blocks on delivery."""


def _timestamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_event(request: Request, action: Action, target: Target) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    resource = "manifests" if target.kind == "manifest" else "blobs"
    body: dict[str, Any] = {
        "mediaType": target.media_type,
        "digest": target.digest,
        "repository": target.repository,
        "url": f"{base}/v2/{target.repository}/{resource}/{target.digest}",
    }
    if target.size is not None:
        body["size"] = target.size
        body["length"] = target.size  # Distribution sends both
    if target.tag:
        body["tag"] = target.tag
    client = request.client
    server = request.scope.get("server") or ("", 0)
    return {
        "id": str(uuid.uuid4()),
        "timestamp": _timestamp(),
        "action": action,
        "target": body,
        "request": {
            "id": request.scope.get("request_id", ""),
            "addr": f"{client.host}:{client.port}" if client else "",
            "host": request.headers.get("host", ""),
            "method": request.method,
            "useragent": request.headers.get("user-agent", ""),
        },
        "actor": {"name": request.scope.get("user_name", "")},
        "source": {"addr": f"{_HOSTNAME}:{server[1]}", "instanceID": INSTANCE_ID},
    }


def notify(
    request: Request,
    action: Action,
    kind: Kind,
    repository: str,
    digest: str,
    media_type: str = "",
    size: int | None = None,
    reference: str = "",
) -> None:
    """Cheap when nobody listens (the GET-manifest hot path calls it): one attribute read."""
    sink: EventSink | None = request.app.state.events
    if sink is None or not sink.wants(kind, action, media_type):
        return
    target = Target(kind, repository, digest, media_type, size, reference_tag(reference) if reference else "")
    sink.emit(build_event(request, action, target))
