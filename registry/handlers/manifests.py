"""end-3 (GET/HEAD manifest), end-7 (PUT, with `?tag=` of end-7b) and end-9 (DELETE)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from registry import media_types
from registry.errors import ErrorCode, RegistryError
from registry.handlers.common import registry_of, repository_name, require_delete_enabled
from registry.store.manifests import too_large


async def get_manifest(request: Request) -> Response:
    name = repository_name(request)
    reference = request.path_params["reference"]
    manifests = registry_of(request).manifests
    manifest = await (manifests.get(name, reference) if request.method == "HEAD" else manifests.pull(name, reference))
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
    manifests = registry_of(request).manifests
    data = await _read_limited(request, manifests.max_bytes)
    extra_tags = tuple(request.query_params.getlist("tag"))
    result = await manifests.put(name, reference, data, request.headers.get("content-type", ""), extra_tags)
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
    return response


async def delete_manifest(request: Request) -> Response:
    name = repository_name(request)
    reference = request.path_params["reference"]
    require_delete_enabled(request)
    await registry_of(request).manifests.delete(name, reference)
    return Response(status_code=202, headers={"Content-Length": "0"})
