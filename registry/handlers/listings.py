"""end-8a/8b (tags list) and the catalog (`/v2/_catalog`, Docker's; outside the OCI spec).

The catalog reads the metadata index when it is on and built, so it never walks the bucket; until then (and with
the index off) it walks storage as Distribution does. Tags are listed from storage: one list call however large the
registry, and what a client just pushed through any replica is there at once.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response

from registry.errors import ErrorCode, RegistryError
from registry.handlers.common import (
    index_of,
    json_response,
    paginate,
    parse_page_size,
    pull_filter,
    registry_of,
    repository_name,
    single_query,
)
from registry.index.base import IndexUnavailable


def next_link(path: str, query: dict[str, str | int]) -> str:
    return f'<{quote(path)}?{urlencode(query)}>; rel="next"'


async def list_tags(request: Request) -> Response:
    name = repository_name(request)
    registry = registry_of(request)
    tags = await registry.tags.all(name)
    if not tags and not await registry.repositories.exists(name):
        raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": name})
    page, headers = paginate(tags, request, request.url.path)
    return json_response({"name": name, "tags": page}, headers=headers)


async def catalog(request: Request) -> Response:
    visible = pull_filter(request)
    index = index_of(request)
    if index is not None and index.ready:
        n = parse_page_size(request)
        last = single_query(request, "last", ErrorCode.PAGINATION_NUMBER_INVALID)
        try:
            names = [] if n == 0 else await index.catalog(last, n and n + 1, visible)
        except IndexUnavailable:
            pass
        else:
            headers = {}
            if n is not None and len(names) > n:
                names = names[:n]
                headers["Link"] = next_link(request.url.path, {"n": n, "last": names[-1]})
            return json_response({"repositories": names}, headers=headers)
    names = await registry_of(request).repositories.names()
    if visible is not None:
        names = [name for name in names if visible(name)]
    page, headers = paginate(names, request, request.url.path)
    return json_response({"repositories": page}, headers=headers)
