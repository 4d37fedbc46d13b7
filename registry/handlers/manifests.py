"""end-3 (GET/HEAD manifest), end-7 (PUT, with `?tag=` of end-7b) and end-9 (DELETE)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from registry import media_types
from registry.digests import DEFAULT_ALGORITHM, Digest
from registry.errors import ErrorCode, RegistryError
from registry.events import notify
from registry.handlers.common import registry_of, repository_name, require_delete_enabled
from registry.metrics import Metrics
from registry.store.manifests import too_large

logger = logging.getLogger("moorage")


async def get_manifest(request: Request) -> Response:
    name = repository_name(request)
    reference = request.path_params["reference"]
    manifest = await registry_of(request).manifests.get(name, reference)
    accepted = media_types.parse_accept(request.headers.getlist("accept"))
    if not media_types.is_acceptable(manifest.media_type, accepted):
        raise RegistryError(
            ErrorCode.MANIFEST_UNKNOWN,
            detail={"name": name, "reference": reference, "mediaType": manifest.media_type, "accept": sorted(accepted)},
            message=f"manifest is a {manifest.media_type}, which the Accept header does not name",
        )
    headers = {
        "Docker-Content-Digest": str(manifest.digest),
        "ETag": f'"{manifest.digest}"',
        "Content-Length": str(len(manifest.data)),
    }
    if request.method == "HEAD":
        return Response(b"", headers=headers, media_type=manifest.media_type)
    index = registry_of(request).index
    if index is not None:
        index.count_pull(name)  # in memory; written in batches off the request
    notify(request, "pull", "manifest", name, str(manifest.digest), manifest.media_type, len(manifest.data), reference)
    return Response(manifest.data, headers=headers, media_type=manifest.media_type)


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(len(body), limit)
    return bytes(body)


async def put_manifest(request: Request) -> Response:
    name = repository_name(request)
    reference = request.path_params["reference"]
    registry = registry_of(request)
    manifests = registry.manifests
    data = await _read_limited(request, manifests.max_bytes)
    extra_tags = tuple(request.query_params.getlist("tag"))
    change = None
    if registry.index is not None:
        # What is about to change, so that the index re-reads those rows only (see registry/index/changes.py).
        digest = reference if Digest.is_digest(reference) else str(Digest.of(data, DEFAULT_ALGORITHM))
        tags = [*([] if Digest.is_digest(reference) else [reference]), *extra_tags]
        change = await registry.index.changing(name, tags=tags, manifests=[digest])
    result = await manifests.put(name, reference, data, request.headers.get("content-type", ""), extra_tags)
    await _index_after_write(request, name, change)
    digest = result.manifest.digest
    headers = [
        ("Location", f"/v2/{name}/manifests/{digest}"),
        ("Docker-Content-Digest", str(digest)),
        ("Content-Length", "0"),
    ]
    if result.parsed.subject is not None:
        headers.append(("OCI-Subject", str(result.parsed.subject.digest)))
    headers += [("OCI-Tag", tag) for tag in extra_tags]
    response = Response(status_code=201)
    response.raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers]
    notify(request, "push", "manifest", name, str(digest), result.manifest.media_type, len(data), reference)
    return response


async def delete_manifest(request: Request) -> Response:
    name = repository_name(request)
    reference = request.path_params["reference"]
    require_delete_enabled(request)
    registry = registry_of(request)
    change = None
    if registry.index is not None:
        by_digest = Digest.is_digest(reference)
        change = await registry.index.changing(
            name, tags=[] if by_digest else [reference], manifests=[reference] if by_digest else []
        )
    await registry.manifests.delete(name, reference)
    await _index_after_write(request, name, change)
    digest = reference if Digest.is_digest(reference) else ""
    notify(request, "delete", "manifest", name, digest, reference=reference)
    return Response(status_code=202, headers={"Content-Length": "0"})


async def _index_after_write(request: Request, name: str, change: str | None) -> None:
    """The write reached storage, so the request succeeded whatever the index does now. `refresh` never raises;
    should one fail anyway, the change record written before the write (`changing`) still has every process,
    this one included, re-read the repository at its next poll."""
    index = registry_of(request).index
    if index is None:
        return
    try:
        await index.refresh(name, change)
    except Exception:
        logger.exception(
            "index: updating %s after a manifest %s failed; its change record repairs it", name, request.method
        )
        metrics: Metrics | None = request.app.state.metrics
        if metrics is not None:
            metrics.index_refresh_failed()
