"""end-8a/8b (tags list) and the catalog (`/v2/_catalog`, Docker's; outside the OCI spec)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from registry.errors import ErrorCode, RegistryError
from registry.handlers.common import json_response, paginate, pull_filter, registry_of, repository_name


async def list_tags(request: Request) -> Response:
    name = repository_name(request)
    registry = registry_of(request)
    tags = await registry.tags.all(name)
    if not tags and not await registry.repositories.exists(name):
        raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": name})
    page, headers = paginate(tags, request, request.url.path)
    return json_response({"name": name, "tags": page}, headers=headers)


async def catalog(request: Request) -> Response:
    names = await registry_of(request).repositories.names()
    visible = pull_filter(request)
    if visible is not None:
        names = [name for name in names if visible(name)]
    page, headers = paginate(names, request, request.url.path)
    return json_response({"repositories": page}, headers=headers)
