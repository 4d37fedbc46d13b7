"""Blob uploads: end-4a/4b/4c (POST), end-11 (mount), end-5 (PATCH), end-6 (PUT), end-13 (GET), end-14 (DELETE)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from registry.digests import DEFAULT_ALGORITHM, Digest, new_hasher
from registry.errors import ErrorCode, RegistryError
from registry.handlers.common import index_of, registry_of, repository_name, signer_of, single_query, whole_number
from registry.index.base import IndexUnavailable
from registry.names import validate_name
from registry.routing import Need, RepositoryAccess, allowed, granted, unrestricted
from registry.store.blobs import BlobInfo
from registry.store.registry import Registry
from registry.store.uploads import UploadStatus, range_header

_CONTENT_RANGE_RE = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?\Z")
_START_KEY = "moorage.upload_start"
# A mount without `from` looks at no more repositories than this (each costs a storage read or two).
MOUNT_DISCOVERY_LIMIT = 64


def blob_created(name: str, info: BlobInfo) -> Response:
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
    value = whole_number(raw)
    if value is None:
        raise RegistryError(ErrorCode.SIZE_INVALID, detail={"content-length": raw[:64]})
    return value


def query_digest(request: Request) -> Digest:
    raw = single_query(request, "digest", ErrorCode.DIGEST_INVALID)
    if not raw:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID, detail="the digest query parameter is required", message="digest missing"
        )
    return Digest.parse(raw)


async def session_algorithm(request: Request, name: str) -> str:
    """The digest algorithm the session was opened with, from the signed `_state` of the Location we gave out.

    Required, as Distribution requires it: it binds the session id to its repository and algorithm. A session
    that does not exist is BLOB_UPLOAD_UNKNOWN whatever the state says."""
    upload_id = request.path_params["upload_id"]
    token = single_query(request, "_state", ErrorCode.BLOB_UPLOAD_INVALID)
    try:
        if not token:
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_INVALID,
                detail={"uuid": upload_id, "reason": "the _state query parameter is missing"},
                message="use the Location the registry returned, with its _state",
            )
        return signer_of(request).verify(token, name, upload_id)
    except RegistryError:
        await registry_of(request).uploads.status(name, upload_id)
        raise


@dataclass(frozen=True, slots=True)
class StartUpload:
    """A POST to the uploads endpoint, parsed once: the access check and the handler read this same object."""

    name: str
    mount: Digest | None
    source: str | None  # `from`; None asks the registry to find a repository the caller may pull
    digest: Digest | None
    algorithm: str

    @classmethod
    def of(cls, request: Request) -> StartUpload:
        parsed: StartUpload | None = request.scope.get(_START_KEY)
        if parsed is None:
            parsed = request.scope[_START_KEY] = cls._parse(request)
        return parsed

    @classmethod
    def _parse(cls, request: Request) -> StartUpload:
        name = repository_name(request)
        invalid = ErrorCode.BLOB_UPLOAD_INVALID
        mount = single_query(request, "mount", invalid)
        source = single_query(request, "from", invalid)
        digest = single_query(request, "digest", ErrorCode.DIGEST_INVALID)
        algorithm = single_query(request, "digest-algorithm", invalid) or DEFAULT_ALGORITHM
        new_hasher(algorithm)
        return cls(
            name=name,
            mount=Digest.parse(mount) if mount else None,
            source=validate_name(source) if mount and source else None,
            digest=Digest.parse(digest) if digest else None,
            algorithm=algorithm,
        )


def start_access(request: Request) -> Need:
    """push on the repository; pull on a mount's source is asked, not required (without it: a plain upload)."""
    start = StartUpload.of(request)
    optional = (RepositoryAccess(start.source, "pull"),) if start.source else ()
    return Need("repository", (RepositoryAccess(start.name, "push"),), optional)


async def start_upload(request: Request) -> Response:
    start = StartUpload.of(request)
    name = start.name
    registry = registry_of(request)
    if start.mount is not None:
        info = await _mount(request, registry, start, start.mount)
        if info is not None:
            return blob_created(name, info)
    if start.digest is not None:
        status = await registry.uploads.start(name, start.digest.algorithm)
        await registry.uploads.append(
            name, status.upload_id, request.stream(), length=content_length(request), algorithm=start.digest.algorithm
        )
        return blob_created(name, await registry.uploads.complete(name, status.upload_id, start.digest))
    status = await registry.uploads.start(name, start.algorithm)
    return upload_accepted(request, status, start.algorithm)


async def _mount(request: Request, registry: Registry, start: StartUpload, digest: Digest) -> BlobInfo | None:
    """Link the blob from a repository the caller may pull; None (a plain upload follows) when there is none.

    Without `from` (the spec lets a registry find the blob itself) only repositories the caller may pull are
    looked at: the target, then, without auth, the registry's copy, else a bounded list of pullable ones."""
    name, source = start.name, start.source
    if source is not None:
        return await registry.blobs.mount(name, source, digest) if granted(request, source, "pull") else None
    if unrestricted(request):
        return await registry.blobs.mount_any(name, digest)
    candidates = [name] if allowed(request, name, "pull") else []
    index = index_of(request)
    if index is not None and index.ready:
        try:
            pullable = await index.catalog(None, MOUNT_DISCOVERY_LIMIT, lambda repo: allowed(request, repo, "pull"))
        except IndexUnavailable:
            pullable = []
        candidates += [repository for repository in pullable if repository != name]
    for candidate in candidates:
        info = await registry.blobs.mount(name, candidate, digest)
        if info is not None:
            return info
    return None


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
    algorithm = await session_algorithm(request, name)
    start, length = parse_content_range(request)
    if length is None:
        length = content_length(request)
    status = await registry_of(request).uploads.append(name, upload_id, request.stream(), start, length, algorithm)
    return upload_accepted(request, status, algorithm)


async def finish_upload(request: Request) -> Response:
    name = repository_name(request)
    upload_id = request.path_params["upload_id"]
    algorithm = await session_algorithm(request, name)
    digest = query_digest(request)
    uploads = registry_of(request).uploads
    if has_body(request):
        start, length = parse_content_range(request)
        if length is None:
            length = content_length(request)
        await uploads.append(name, upload_id, request.stream(), start, length, algorithm)
    return blob_created(name, await uploads.complete(name, upload_id, digest))


async def upload_status(request: Request) -> Response:
    name = repository_name(request)
    upload_id = request.path_params["upload_id"]
    algorithm = await session_algorithm(request, name)
    status = await registry_of(request).uploads.status(name, upload_id)
    return upload_accepted(request, status, algorithm, code=204)


async def cancel_upload(request: Request) -> Response:
    name = repository_name(request)
    upload_id = request.path_params["upload_id"]
    await session_algorithm(request, name)
    await registry_of(request).uploads.delete(name, upload_id)
    return Response(status_code=204)
