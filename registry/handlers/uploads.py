"""Blob uploads: end-4a/4b/4c (POST), end-11 (mount), end-5 (PATCH), end-6 (PUT), end-13 (GET), end-14 (DELETE)."""

from __future__ import annotations

import re
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from registry.digests import DEFAULT_ALGORITHM, Digest, new_hasher
from registry.errors import ErrorCode, RegistryError
from registry.events import Action, notify
from registry.handlers.common import registry_of, repository_name, signer_of
from registry.names import validate_name
from registry.store.blobs import BlobInfo
from registry.store.uploads import UploadStatus, range_header

_CONTENT_RANGE_RE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


def blob_created(request: Request, name: str, info: BlobInfo, action: Action = "push") -> Response:
    notify(request, action, "blob", name, str(info.digest), "application/octet-stream", info.size)
    return Response(
        status_code=201,
        headers={
            "Location": f"/v2/{name}/blobs/{info.digest}",
            "Docker-Content-Digest": str(info.digest),
            "Content-Length": "0",
        },
    )


def upload_accepted(request: Request, status: UploadStatus, algorithm: str, code: int = 202) -> Response:
    state = signer_of(request).sign(status.name, status.upload_id, algorithm)
    headers = {
        "Location": f"/v2/{status.name}/blobs/uploads/{status.upload_id}?_state={quote(state)}",
        "Range": range_header(status.offset),
        "Docker-Upload-UUID": status.upload_id,
    }
    if code != 204:  # RFC 9110: no Content-Length on a 204
        headers["Content-Length"] = "0"
    return Response(status_code=code, headers=headers)


def has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() != "0"
    return "transfer-encoding" in request.headers


def content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise RegistryError(ErrorCode.SIZE_INVALID, detail={"content-length": raw})
    return value


def query_digest(request: Request) -> Digest:
    raw = request.query_params.get("digest")
    if not raw:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID, detail="the digest query parameter is required", message="digest missing"
        )
    return Digest.parse(raw)


def session_algorithm(request: Request, name: str) -> str:
    """The digest algorithm the session was opened with, from the signed `_state`, if the client kept it."""
    token = request.query_params.get("_state")
    if not token:
        return DEFAULT_ALGORITHM
    return signer_of(request).verify(token, name, request.path_params["upload_id"])


async def start_upload(request: Request) -> Response:
    name = repository_name(request)
    registry = registry_of(request)
    params = request.query_params
    mount = params.get("mount")
    if mount:
        digest = Digest.parse(mount)
        source = params.get("from")
        if source:
            info = await registry.blobs.mount(name, validate_name(source), digest)
            if info is not None:
                return blob_created(request, name, info, "mount")
    algorithm = params.get("digest-algorithm") or DEFAULT_ALGORITHM
    new_hasher(algorithm)
    digest_param = params.get("digest")
    if digest_param:
        digest = Digest.parse(digest_param)
        status = await registry.uploads.start(name, digest.algorithm)
        await registry.uploads.append(
            name, status.upload_id, request.stream(), length=content_length(request), algorithm=digest.algorithm
        )
        return blob_created(request, name, await registry.uploads.complete(name, status.upload_id, digest))
    status = await registry.uploads.start(name, algorithm)
    return upload_accepted(request, status, algorithm)


def parse_content_range(request: Request) -> tuple[int | None, int | None]:
    raw = request.headers.get("content-range")
    if raw is None:
        return None, None
    match = _CONTENT_RANGE_RE.match(raw.strip())
    if not match:
        raise RegistryError(
            ErrorCode.RANGE_INVALID,
            detail={"content-range": raw},
            message="invalid Content-Range; expected <start>-<end>",
        )
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise RegistryError(
            ErrorCode.RANGE_INVALID, detail={"content-range": raw}, message="invalid Content-Range: end before start"
        )
    length = end - start + 1
    declared = content_length(request)
    if declared is not None and declared != length:
        raise RegistryError(
            ErrorCode.SIZE_INVALID,
            detail={"content-range": raw, "content-length": declared},
            message="Content-Length does not match Content-Range",
        )
    return start, length


async def patch_upload(request: Request) -> Response:
    name = repository_name(request)
    upload_id = request.path_params["upload_id"]
    algorithm = session_algorithm(request, name)
    start, length = parse_content_range(request)
    if length is None:
        length = content_length(request)
    status = await registry_of(request).uploads.append(name, upload_id, request.stream(), start, length, algorithm)
    return upload_accepted(request, status, algorithm)


async def finish_upload(request: Request) -> Response:
    name = repository_name(request)
    upload_id = request.path_params["upload_id"]
    algorithm = session_algorithm(request, name)
    digest = query_digest(request)
    uploads = registry_of(request).uploads
    if has_body(request):
        start, length = parse_content_range(request)
        if length is None:
            length = content_length(request)
        await uploads.append(name, upload_id, request.stream(), start, length, algorithm)
    return blob_created(request, name, await uploads.complete(name, upload_id, digest))


async def upload_status(request: Request) -> Response:
    name = repository_name(request)
    upload_id = request.path_params["upload_id"]
    algorithm = session_algorithm(request, name)
    status = await registry_of(request).uploads.status(name, upload_id)
    return upload_accepted(request, status, algorithm, code=204)


async def cancel_upload(request: Request) -> Response:
    name = repository_name(request)
    upload_id = request.path_params["upload_id"]
    session_algorithm(request, name)
    await registry_of(request).uploads.delete(name, upload_id)
    return Response(status_code=204)
