"""The UI's CSS and JavaScript, shipped in the package and served from memory with a content ETag."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from starlette.responses import Response

from registry.errors import ErrorCode, RegistryError

_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}


@functools.cache
def _files() -> dict[str, tuple[bytes, str, str]]:
    found: dict[str, tuple[bytes, str, str]] = {}
    for entry in resources.files("registry.ui").joinpath("static").iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in _TYPES:
            data = entry.read_bytes()
            found[entry.name] = (data, _TYPES[suffix], '"' + hashlib.sha256(data).hexdigest()[:32] + '"')
    return found


def static_file(name: str, if_none_match: str | None) -> Response:
    found = _files().get(name)
    if found is None:
        raise RegistryError(ErrorCode.NOT_FOUND, detail={"file": name[:100]})
    data, media_type, etag = found
    headers = {"ETag": etag, "Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110's weak comparison over the header's list (`*` matches any)."""
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False
