"""Blob uploads by hand over HTTP (httpx), one request at a time, so that tests choose which server gets which request.

Upload Locations are relative (`/v2/<name>/blobs/uploads/<id>?_state=...`); `on(server, location)` makes one
absolute on any server, which is how a client behind a load balancer ends up sending PATCH and PUT to other replicas.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from .conftest import RunningServer

TIMEOUT = 60.0
OCTET_STREAM = {"Content-Type": "application/octet-stream"}


def random_bytes(size: int, seed: str) -> bytes:
    return random.Random(seed).randbytes(size)


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def on(server: RunningServer, location: str) -> str:
    """`location` (relative or absolute) as a URL on `server`."""
    parts = urlsplit(location)
    return urlunsplit(("http", server.host, parts.path, parts.query, ""))


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, urlencode(params)]))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def describe(response: httpx.Response) -> str:
    request = response.request
    return f"{request.method} {request.url} -> {response.status_code} {dict(response.headers)} {response.text[:2000]}"


def error_codes(response: httpx.Response) -> list[str]:
    """The `code`s of a spec error body (`{"errors": [{"code": ...}]}`); fails the test if it is not one."""
    try:
        body: Any = response.json()
    except ValueError:
        raise AssertionError(f"not a JSON error body: {describe(response)}") from None
    assert isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"], describe(response)
    for error in body["errors"]:
        assert isinstance(error, dict) and isinstance(error.get("code"), str), describe(response)
        assert isinstance(error.get("message"), str), describe(response)
    return [error["code"] for error in body["errors"]]


def client() -> httpx.Client:
    return httpx.Client(timeout=TIMEOUT, follow_redirects=False)


def start_upload(http: httpx.Client, server: RunningServer, repo: str, **params: str) -> str:
    """POST a new upload session on `server`; return its Location (relative, as the server sent it)."""
    url = f"{server.url}/v2/{repo}/blobs/uploads/"
    if params:
        url = with_query(url, **params)
    response = http.post(url, headers={"Content-Length": "0"})
    assert response.status_code == 202, describe(response)
    assert response.headers["range"] == "0-0", describe(response)
    location: str = response.headers["location"]
    return location


def patch_chunk(http: httpx.Client, server: RunningServer, location: str, data: bytes, offset: int) -> httpx.Response:
    """PATCH one chunk (with Content-Range) to `server`; the caller checks the answer."""
    headers = {**OCTET_STREAM, "Content-Range": f"{offset}-{offset + len(data) - 1}"}
    return http.patch(on(server, location), content=data, headers=headers)


def patch_ok(http: httpx.Client, server: RunningServer, location: str, data: bytes, offset: int) -> str:
    """PATCH a chunk that must be accepted; return the next Location."""
    response = patch_chunk(http, server, location, data, offset)
    assert response.status_code == 202, describe(response)
    assert response.headers["range"] == f"0-{offset + len(data) - 1}", describe(response)
    next_location: str = response.headers["location"]
    return next_location


def finish(http: httpx.Client, server: RunningServer, location: str, digest: str, data: bytes = b"") -> httpx.Response:
    """PUT `?digest=` (with an optional last chunk) to `server`; the caller checks the answer."""
    headers = {**OCTET_STREAM, "Content-Length": str(len(data))}
    return http.put(with_query(on(server, location), digest=digest), content=data, headers=headers)


def monolithic_upload(http: httpx.Client, server: RunningServer, repo: str, data: bytes) -> str:
    """POST `?digest=` with the whole blob; return the digest."""
    digest = digest_of(data)
    response = http.post(
        with_query(f"{server.url}/v2/{repo}/blobs/uploads/", digest=digest),
        content=data,
        headers={**OCTET_STREAM, "Content-Length": str(len(data))},
    )
    assert response.status_code == 201, describe(response)
    assert response.headers["docker-content-digest"] == digest, describe(response)
    return digest


def read_blob(http: httpx.Client, server: RunningServer, repo: str, digest: str) -> bytes:
    """GET a blob the way a client does: following a redirect to the store if the server answers with one."""
    response = http.get(f"{server.url}/v2/{repo}/blobs/{digest}", follow_redirects=True)
    assert response.status_code == 200, describe(response)
    return response.content
