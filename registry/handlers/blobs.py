"""end-2 (GET/HEAD blob, with Range) and end-10 (DELETE blob)."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from registry.errors import ErrorCode, RegistryError
from registry.handlers.common import path_digest, registry_of, repository_name, require_delete_enabled
from registry.store.blobs import blob_unknown
from registry.zero_copy import ZeroCopyResponse, zero_copy_offered
from storage_backends import PathNotFound

_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)\Z")
BLOB_MEDIA_TYPE = "application/octet-stream"  # what Distribution reports: a blob's own type is in its manifest


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One satisfiable byte range (start, end inclusive); None to send the whole blob. RFC 9110 14.2."""
    if not header:
        return None
    match = _RANGE_RE.match(header.strip().replace(" ", ""))
    if not match or match.group(1) == match.group(2) == "":
        return None  # multiple or malformed ranges: ignoring Range is always allowed
    first, last = match.groups()
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise unsatisfiable(size)
        return max(size - suffix, 0), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise unsatisfiable(size)
    return start, min(int(last), size - 1) if last else size - 1


def unsatisfiable(size: int) -> RegistryError:
    return RegistryError(
        ErrorCode.RANGE_INVALID,
        detail={"size": size},
        message="requested range not satisfiable",
        headers={"Content-Range": f"bytes */{size}"},
    )


async def get_blob(request: Request) -> Response:
    name = repository_name(request)
    digest = path_digest(request)
    registry = registry_of(request)
    # A HEAD usually precedes a manifest PUT that relies on the blob: it refreshes an old blob's age for GC.
    blobs = registry.blobs
    url = None
    if request.method == "HEAD":
        info = await blobs.head(name, digest)
    else:
        url = await blobs.redirect_url(digest)
        info = await blobs.pull(name, digest, from_storage=url is not None)
        if info.spooled:  # not in storage yet: streamed here as an upstream sends it
            url = None
    headers = {
        "Docker-Content-Digest": str(digest),
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
    }
    if request.method == "HEAD":
        headers["Content-Length"] = str(info.size)
        return Response(status_code=200, headers=headers, media_type="application/octet-stream")
    if url is not None:
        return RedirectResponse(url, status_code=307, headers={"Docker-Content-Digest": str(digest)})
    byte_range = parse_range(request.headers.get("range"), info.size)
    if byte_range is None:
        start, count, status = 0, info.size, 200
    else:
        start, end = byte_range
        count, status = end - start + 1, 206
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    if not info.spooled and zero_copy_offered(request.scope):
        try:
            file = await registry.blobs.open_file(digest)
        except PathNotFound:  # gone since the stat above (GC in another process): as if it had never been there
            registry.blobs.forget(name, digest)
            raise blob_unknown(digest) from None
        if file is not None:
            return ZeroCopyResponse(file, start, count, status, headers, BLOB_MEDIA_TYPE)
    headers["Content-Length"] = str(count)
    body = registry.blobs.read(digest, start, count if byte_range else None, spooled=info.spooled)
    return StreamingResponse(body, status_code=status, headers=headers, media_type=BLOB_MEDIA_TYPE)


async def delete_blob(request: Request) -> Response:
    name = repository_name(request)
    digest = path_digest(request)
    require_delete_enabled(request)
    await registry_of(request).blobs.unlink(name, digest)
    return Response(status_code=202, headers={"Docker-Content-Digest": str(digest), "Content-Length": "0"})
