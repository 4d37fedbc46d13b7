"""The requests a moorage server logged, whichever access-log format it writes.

Three formats are understood: uvicorn's text access log (`"GET /v2/<name>/blobs/<digest> HTTP/1.1" 200`), and
moorage's access log (logger `moorage.access`, with `method`, `route`, `repository` and `status` fields) as JSON
lines or as text with `key=value` fields. Tests ask about the kind of resource (blob, upload, manifest, ...) and
the repository, which every format carries, never about details only one of them has.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from .conftest import RunningServer

Resource = Literal["base", "blob", "upload", "manifest", "tags", "catalog", "referrers", "other"]
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_TEXT_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3})')
_PATH = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>blobs/uploads|blobs|manifests|tags|referrers)(?:/|$)")
_KINDS: dict[str, Resource] = {
    "blobs/uploads": "upload",
    "blobs": "blob",
    "manifests": "manifest",
    "tags": "tags",
    "referrers": "referrers",
}


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    resource: Resource
    repository: str
    status: int


def _classify(path: str) -> tuple[Resource, str]:
    """The resource and repository of a request path (`/v2/...`) or a route template (`/v2/{name:path}/...`)."""
    if path in ("/v2/", "/v2"):
        return "base", ""
    if path == "/v2/_catalog":
        return "catalog", ""
    match = _PATH.match(path)
    if not match:
        return "other", ""
    return _KINDS[match["kind"]], match["name"]


def logged_requests(server: RunningServer) -> list[LoggedRequest]:
    found: list[LoggedRequest] = []
    for line in server.log().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict) or "method" not in entry or "status" not in entry:
                continue
            resource, _ = _classify(str(entry.get("route") or entry.get("path") or ""))
            found.append(LoggedRequest(entry["method"], resource, str(entry.get("repository") or ""), entry["status"]))
        elif "moorage.access" in line:
            fields = {k: json.loads(v) if v.startswith('"') else v for k, v in _FIELD.findall(line)}
            if "method" in fields and fields.get("status", "").isdigit():
                resource, _ = _classify(fields.get("route") or fields.get("path") or "")
                found.append(
                    LoggedRequest(fields["method"], resource, fields.get("repository", ""), int(fields["status"]))
                )
        elif match := _TEXT_LINE.search(line):
            resource, repository = _classify(unquote(urlsplit(match["target"]).path))
            found.append(LoggedRequest(match["method"], resource, repository, int(match["status"])))
    return found


def statuses(server: RunningServer, method: str, resource: Resource, repository: str) -> list[int]:
    """The statuses the server answered to `method` requests on `resource`s of `repository`, in order."""
    return [
        r.status
        for r in logged_requests(server)
        if r.method == method and r.resource == resource and r.repository == repository
    ]


def access_log(server: RunningServer) -> list[dict[str, object]]:
    """The fields of each line of moorage's JSON access log (its output is not a terminal, so JSON lines)."""
    entries = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry["logger"] == "moorage.access":
                entries.append(entry)
    return entries


def access_log_once(server: RunningServer, done: Callable[[dict[str, object]], bool]) -> list[dict[str, object]]:
    """The access log once an entry satisfying `done` is in it.

    The server writes a request's access line just after sending its response, so a client that has already
    exited may be a moment ahead of the log: wait (boundedly) for the line that marks the end of what we look at.
    """
    deadline = time.monotonic() + 10
    while True:
        entries = access_log(server)
        if any(done(entry) for entry in entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.02)
