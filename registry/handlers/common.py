"""What every handler needs: the registry from app state, validated path parts, pagination, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.index.base import MetadataIndex
from registry.names import validate_name
from registry.routing import LISTING_SCOPE_KEY, Rights
from registry.store.registry import Registry
from registry.store.upload_state import UploadStateSigner
from storage_backends import StorageFull, StorageUnavailable

logger = logging.getLogger("moorage")
API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
JSON_TYPE = "application/json; charset=utf-8"
MAX_PAGE_SIZE = 10_000
DRAIN_SECONDS = 10.0
RETRY_AFTER_SECONDS = "5"


def registry_of(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def cached_origins(request: Request, names: list[str]) -> dict[str, str]:
    """The upstream each of `names` is a pull-through cache of (registry/proxy), for those that are."""
    read_through = registry_of(request).read_through
    return {} if read_through is None or not names else await read_through.origins(names)


def index_of(request: Request) -> MetadataIndex | None:
    """The metadata index for queries (catalog, search, mount discovery); None when it is off."""
    index: MetadataIndex | None = getattr(request.app.state, "index", None)
    return index


def signer_of(request: Request) -> UploadStateSigner:
    signer: UploadStateSigner = request.app.state.upload_signer
    return signer


def pull_filter(request: Request) -> Callable[[str], bool] | None:
    """Which repositories the caller may see (catalog, search); None when every repository is visible."""
    access: Rights | None = request.scope.get(LISTING_SCOPE_KEY)
    if access is None:
        return None
    return lambda repository: access.allows(repository, "pull")


def repository_name(request: Request) -> str:
    return validate_name(request.path_params["name"])


def single_query(request: Request, key: str, code: ErrorCode, status: int | None = None) -> str | None:
    """A query parameter that may appear once: a repeated one is ambiguous and refused, never guessed."""
    values = request.query_params.getlist(key)
    if len(values) > 1:
        raise RegistryError(code, detail={"parameter": key, "reason": "given more than once"}, status=status)
    return values[0] if values else None


def path_digest(request: Request, key: str = "digest") -> Digest:
    return Digest.parse(request.path_params[key])


def require_delete_enabled(request: Request) -> None:
    if not registry_of(request).delete_enabled:
        raise RegistryError(
            ErrorCode.UNSUPPORTED,
            detail="deletes are disabled on this registry (storage.delete)",
            message="the operation is unsupported",
        )


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None, media_type: str = JSON_TYPE
) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, headers=headers, media_type=media_type)


def parse_page_size(request: Request) -> int | None:
    raw = single_query(request, "n", ErrorCode.PAGINATION_NUMBER_INVALID)
    if raw is None or raw == "":
        return None
    n = whole_number(raw)
    if n is None:
        raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID, detail={"n": raw[:64]})
    return min(n, MAX_PAGE_SIZE)


def whole_number(raw: str) -> int | None:
    """ASCII digits as a number, None for anything else: int() also takes signs, spaces, `_` and other scripts'
    digits (a fullwidth one was taken as 1)."""
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else None


def paginate(items: list[str], request: Request, path: str) -> tuple[list[str], dict[str, str]]:
    """Apply `n` and `last` (exclusive) to sorted items; a Link header when more follow."""
    n = parse_page_size(request)
    last = single_query(request, "last", ErrorCode.PAGINATION_NUMBER_INVALID)
    if last:
        items = [item for item in items if item > last]
    if n is None:
        return items, {}
    page = items[:n]
    headers = {}
    if n and len(items) > n:
        query = urlencode({"n": n, "last": page[-1]})
        headers["Link"] = f'<{quote(path)}?{query}>; rel="next"'
    return page, headers


def error_response(request: Request, error: RegistryError) -> Response:
    headers = dict(error.headers)
    if request.method == "HEAD":
        return Response(status_code=error.status, headers=headers)
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def drain_unread_body(request: Request) -> None:
    """Read and drop what the client is still sending before answering early on a `Connection: close` request.

    uvicorn closes such a connection as soon as the response is sent; a client still writing its body (skopeo
    sends PATCHes that way) then sees a reset instead of our error (RFC 9112 9.6). Bounded in time.
    """
    if "close" not in request.headers.get("connection", "").lower() or request.method in ("GET", "HEAD"):
        return
    if getattr(request, "_stream_consumed", True):  # Starlette's flag: the last body message has arrived
        return
    with contextlib.suppress(ClientDisconnect, RuntimeError, TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in request.stream():
                pass


async def registry_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    await drain_unread_body(request)
    return error_response(request, exc)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        error = RegistryError(
            ErrorCode.UNSUPPORTED,
            detail={"method": request.method, "path": request.url.path},
            message="method not allowed on this endpoint",
        )
    elif exc.status_code == 404:
        error = RegistryError(ErrorCode.NOT_FOUND, detail={"path": request.url.path})
    else:
        error = RegistryError(ErrorCode.UNKNOWN, detail=exc.detail, status=exc.status_code)
    return error_response(request, error)


async def storage_unavailable_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StorageUnavailable)
    logger.warning("storage unavailable: %s", exc)
    await drain_unread_body(request)
    # The reason (bucket gone, access denied, ...) is written for clients; the message, with endpoints and paths,
    # stays in the log.
    detail = f"the storage backend is unavailable: {exc.reason}"
    return error_response(
        request, RegistryError(ErrorCode.UNAVAILABLE, detail=detail, headers={"Retry-After": RETRY_AFTER_SECONDS})
    )


async def storage_full_handler(request: Request, exc: Exception) -> Response:
    # No Retry-After: space comes back when an operator (or GC) frees it, not after a delay we could name.
    logger.error("storage full: %s", exc)
    await drain_unread_body(request)
    error = RegistryError(ErrorCode.INSUFFICIENT_STORAGE, detail="the storage backend has no space left")
    return error_response(request, error)


async def client_disconnect_handler(request: Request, exc: Exception) -> Response:
    # Whatever the request was writing has been discarded; nobody is left to read an answer.
    logger.info("client went away during %s %s", request.method, request.url.path)
    return Response(status_code=400)


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(request, RegistryError(ErrorCode.UNKNOWN, detail="internal error; see the server log"))


EXCEPTION_HANDLERS = {
    RegistryError: registry_error_handler,
    HTTPException: http_exception_handler,
    StorageUnavailable: storage_unavailable_handler,
    StorageFull: storage_full_handler,
    ClientDisconnect: client_disconnect_handler,
    Exception: unexpected_error_handler,
}
