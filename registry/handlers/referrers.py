"""end-12a/12b: the referrers API, with the `artifactType` filter and the tag-schema fallback included."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from registry import media_types
from registry.errors import ErrorCode, RegistryError
from registry.handlers.common import json_response, path_digest, registry_of, repository_name, single_query
from registry.store.referrers import descriptors_in_index, fallback_tag, referrer_descriptor
from storage_backends import PathNotFound


async def list_referrers(request: Request) -> Response:
    name = repository_name(request)
    subject = path_digest(request)
    registry = registry_of(request)
    found: dict[str, dict[str, Any]] = {}
    for digest in await registry.referrers.digests(name, subject):
        try:
            manifest = await registry.manifests.load(name, digest)
        except PathNotFound:
            continue
        descriptor = referrer_descriptor(digest, manifest.data)
        if descriptor is not None:
            found[str(digest)] = descriptor
    try:
        fallback = await registry.manifests.get(name, fallback_tag(subject))
    except RegistryError:
        fallback = None
    if fallback is not None and fallback.media_type in media_types.INDEXES:
        for descriptor in descriptors_in_index(fallback.data):
            found.setdefault(str(descriptor.get("digest")), descriptor)
    manifests = sorted(found.values(), key=lambda d: str(d.get("digest")))
    headers = {}
    artifact_type = single_query(request, "artifactType", ErrorCode.REQUEST_INVALID)
    if artifact_type:
        manifests = [d for d in manifests if d.get("artifactType") == artifact_type]
        headers["OCI-Filters-Applied"] = "artifactType"
    body = {"schemaVersion": 2, "mediaType": media_types.OCI_INDEX, "manifests": manifests}
    return json_response(body, headers=headers, media_type=media_types.OCI_INDEX)
