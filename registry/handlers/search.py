"""`docker search` (`/v1/_ping`, `/v1/search`) and Moorage's search and repository summaries under `/api/v1/`.

The docker CLI's side of the contract is in SPEC.md §2: it pings `/v1/_ping` (reading only two headers), then sends
`GET /v1/search?q=TERM&n=LIMIT` with `X-Docker-Token: true` and decodes `{query, num_results, results}`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from registry.errors import ErrorCode, RegistryError
from registry.handlers.common import (
    cached_origins,
    index_of,
    json_response,
    pull_filter,
    repository_name,
    single_query,
    whole_number,
)
from registry.handlers.listings import next_link
from registry.index.base import IndexUnavailable, ManifestRecord, MetadataIndex, SearchHit
from registry.index.query import parse_query
from registry.names import MAX_NAME_LENGTH, NAME_RE
from registry.routing import DOCKER_SEARCH, PUBLIC, SEARCH, ApiRoute, on_repository

DEFAULT_RESULTS = 25
MAX_RESULTS = 100
# The last version of the v1 protocol; the docker CLI only logs it.
V1_REGISTRY_VERSION = "0.6.0"


def routes() -> list[BaseRoute]:
    return [
        ApiRoute("/v1/_ping", ping, methods=["GET"], access=PUBLIC),
        ApiRoute("/v1/search", docker_search, methods=["GET"], access=DOCKER_SEARCH),
        ApiRoute("/api/v1/search", search, methods=["GET"], access=SEARCH),
        ApiRoute("/api/v1/repositories/{name:path}", repository, methods=["GET"], access=on_repository("pull")),
    ]


async def ping(request: Request) -> Response:
    headers = {"X-Docker-Registry-Version": V1_REGISTRY_VERSION, "X-Docker-Registry-Standalone": "true"}
    return json_response({"version": V1_REGISTRY_VERSION, "standalone": True}, headers=headers)


def result_count(request: Request) -> int:
    """`n`: 1 to 100, 25 when absent (what the docker CLI allows)."""
    raw = single_query(request, "n", ErrorCode.PAGINATION_NUMBER_INVALID)
    if raw is None or raw == "":
        return DEFAULT_RESULTS
    n = whole_number(raw) or 0
    if not 1 <= n <= MAX_RESULTS:
        raise RegistryError(
            ErrorCode.PAGINATION_NUMBER_INVALID,
            detail={"n": raw, "reason": f"n must be a whole number from 1 to {MAX_RESULTS}"},
        )
    return n


def usable_index(request: Request) -> MetadataIndex:
    index = index_of(request)
    if index is None:
        raise RegistryError(
            ErrorCode.NOT_FOUND, detail="search needs the metadata index, which is off on this registry (index.enabled)"
        )
    if not index.ready:
        raise _not_ready()
    return index


def _not_ready() -> RegistryError:
    return RegistryError(
        ErrorCode.UNAVAILABLE, detail="the metadata index is being built from storage", headers={"Retry-After": "5"}
    )


async def docker_search(request: Request) -> Response:
    q = single_query(request, "q", ErrorCode.REQUEST_INVALID) or ""
    n = result_count(request)
    query = parse_query(q)
    try:
        hits = await usable_index(request).search(query, None, n, pull_filter(request))
    except IndexUnavailable:
        raise _not_ready() from None
    results = [
        {
            "name": hit.repository,
            "description": hit.description or "",
            "star_count": 0,
            "is_official": False,
            "is_automated": False,
        }
        for hit in hits
    ]
    return json_response({"query": q, "num_results": len(results), "results": results})


async def search(request: Request) -> Response:
    q = single_query(request, "q", ErrorCode.REQUEST_INVALID) or ""
    n = result_count(request)
    last = single_query(request, "last", ErrorCode.PAGINATION_NUMBER_INVALID) or None
    if last is not None and (len(last) > MAX_NAME_LENGTH or not NAME_RE.match(last)):  # a page ends at a repository
        raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID, detail={"last": last[:256]}, message="invalid `last`")
    query = parse_query(q)
    try:
        hits = await usable_index(request).search(query, last, n + 1, pull_filter(request))
    except IndexUnavailable:
        raise _not_ready() from None
    headers = {}
    if len(hits) > n:
        hits = hits[:n]
        headers["Link"] = next_link(request.url.path, {"q": q, "n": n, "last": hits[-1].repository})
    origins = await cached_origins(request, [hit.repository for hit in hits])
    results = [_hit(hit, origins.get(hit.repository)) for hit in hits]
    return json_response({"query": q, "results": results}, headers=headers)


async def repository(request: Request) -> Response:
    name = repository_name(request)
    visible = pull_filter(request)
    try:
        summary = await usable_index(request).repository(name)
    except IndexUnavailable:
        raise _not_ready() from None
    if summary is None or (visible is not None and not visible(name)):
        raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": name})
    body = {
        "name": summary.name,
        "description": summary.description,
        "pushedAt": _time(summary.pushed_at),
        "pulls": summary.pulls,
        "manifests": summary.manifest_count,
        "tags": [{"tag": t.tag, **_manifest(t.manifest), "pushedAt": _time(t.pushed_at)} for t in summary.tags],
        "cachedFrom": (await cached_origins(request, [name])).get(name),
    }
    return json_response(body)


def _hit(hit: SearchHit, cached_from: str | None) -> dict[str, Any]:
    return {
        "name": hit.repository,
        "repository": hit.repository,  # the same: `name` as in docker search and the catalog, `repository` as said
        "description": hit.description,
        "tags": list(hit.tags),
        **_manifest(hit.manifest),
        "pushedAt": _time(hit.repository_pushed_at),
        "pulls": hit.pulls,
        "cachedFrom": cached_from,  # the upstream's name when this is a pull-through cache of it
    }


def _manifest(manifest: ManifestRecord | None) -> dict[str, Any]:
    if manifest is None:  # a repository without manifests (only blobs pushed, or every manifest deleted)
        return {"digest": None, "mediaType": None, "artifactType": None, "size": 0, "platforms": [], "created": None}
    return {
        "digest": manifest.digest,
        "mediaType": manifest.media_type,
        "artifactType": manifest.artifact_type,
        "size": manifest.size,
        "platforms": list(manifest.platforms),
        "created": manifest.created,
    }


def _time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
