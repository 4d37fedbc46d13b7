"""A small in-memory registry on a raw asyncio server, for what real registries will not do on demand: drop the
connection in the middle of a layer upload, serve a corrupted blob, demand a bearer token, answer a search.

It speaks just enough HTTP/1.1 (Content-Length bodies, keep-alive) for the moorage client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import ssl
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
           400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 416: "Range Not Satisfiable"}  # fmt: skip


def error(status: int, code: str, message: str) -> Response:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
    return Response(status, {"Content-Type": "application/json"}, body)


class FakeRegistry:
    """`drop_patch_after`: the first PATCH is cut (connection closed, no answer) after that many body bytes, and
    the bytes received so far are kept, as a registry that stores partial chunks would. `corrupt` flips a byte
    of every blob served. `users`: {name: password} turns on the bearer-token flow via `/token`."""

    def __init__(
        self,
        *,
        drop_patch_after: int | None = None,
        drop_blob_get_after: int | None = None,
        corrupt: bool = False,
        legacy_search: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.uploads: dict[str, bytearray] = {}
        self.drop_patch_after = drop_patch_after
        self.drop_blob_get_after = drop_blob_get_after
        self.corrupt = corrupt
        self.legacy_search = legacy_search
        self.users = users
        self.tokens: set[str] = set()
        self.token_scopes: list[list[str]] = []
        self.dropped = 0
        self.log: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.address = "127.0.0.1"
        self.scheme = "http"

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    async def start(self, address: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> FakeRegistry:
        self.address = address
        self.scheme = "https" if tls else "http"
        self.server = await asyncio.start_server(self._connection, address, 0, ssl=tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, _, value = line.partition(":")
                        headers[key.strip().lower()] = value.strip()
                url = urlsplit(target)
                request = Request(method, url.path, parse_qs(url.query), headers)
                length = int(headers.get("content-length", "0"))
                self.log.append(
                    f"{method} {url.path} {headers.get('content-range') or headers.get('range', '')}".strip()
                )
                if method == "PATCH" and self.drop_patch_after is not None and length > self.drop_patch_after:
                    # Keep the first bytes, then cut the connection without an answer.
                    partial = await reader.readexactly(self.drop_patch_after)
                    self.uploads[url.path.rsplit("/", 1)[1]].extend(partial)
                    self.drop_patch_after = None
                    self.dropped += 1
                    writer.transport.abort()
                    return
                request.body = await reader.readexactly(length) if length else b""
                response = self.handle(request)
                cut = self.drop_blob_get_after
                if method == "GET" and "/blobs/sha256:" in url.path and cut is not None and len(response.body) > cut:
                    # Send the headers and the first bytes of the blob, then cut the connection.
                    self.drop_blob_get_after = None
                    self.dropped += 1
                    header_lines = "".join(f"{k}: {v}\r\n" for k, v in response.headers.items())
                    length_line = f"Content-Length: {len(response.body)}\r\n"
                    writer.write(f"HTTP/1.1 200 OK\r\n{header_lines}{length_line}\r\n".encode() + response.body[:cut])
                    await writer.drain()
                    writer.transport.abort()
                    return
                if method == "HEAD":
                    response.headers.setdefault("Content-Length", str(len(response.body)))
                    response.body = b""
                else:
                    response.headers["Content-Length"] = str(len(response.body))
                status_line = f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Status')}\r\n"
                header_lines = "".join(f"{k}: {v}\r\n" for k, v in response.headers.items())
                writer.write((status_line + header_lines + "\r\n").encode() + response.body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def _authorized(self, request: Request) -> Response | None:
        if self.users is None:
            return None
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer ") and auth[7:] in self.tokens:
            return None
        response = error(401, "UNAUTHORIZED", "authentication required")
        scope = ""
        parts = request.path.split("/")
        if "blobs" in parts or "manifests" in parts or "tags" in parts:
            end = min(i for i, p in enumerate(parts) if p in ("blobs", "manifests", "tags"))
            scope = f',scope="repository:{"/".join(parts[2:end])}:pull"'
        realm = f"{self.scheme}://{self.host}/token"
        response.headers["WWW-Authenticate"] = f'Bearer realm="{realm}",service="fake"{scope}'
        return response

    def _token(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        user, _, password = (
            base64.b64decode(auth[6:]).decode().partition(":") if auth.startswith("Basic ") else ("", "", "")
        )
        if self.users is None or self.users.get(user) != password:
            return error(401, "UNAUTHORIZED", "bad credentials")
        token = uuid.uuid4().hex
        self.tokens.add(token)
        self.token_scopes.append(request.query.get("scope", []))
        return Response(200, {"Content-Type": "application/json"}, json.dumps({"token": token}).encode())

    def handle(self, request: Request) -> Response:
        path = request.path
        if path == "/token":
            return self._token(request)
        denied = self._authorized(request)
        if denied is not None:
            return denied
        if path == "/v2/":
            return Response(200, {"Content-Type": "application/json"}, b"{}")
        if path == ("/v1/search" if self.legacy_search else "/api/v1/search"):
            term = request.query.get("q", [""])[0]
            names = sorted({name for name, _ in self.manifests if term in name})
            results = [{"name": n, "description": f"about {n}"} for n in names]
            return Response(200, {"Content-Type": "application/json"}, json.dumps({"results": results}).encode())
        parts = path.split("/")
        if path.endswith("/tags/list"):
            name = path[len("/v2/") : -len("/tags/list")]
            tags = sorted(ref for repo, ref in self.manifests if repo == name and ":" not in ref)
            if not tags:
                return error(404, "NAME_UNKNOWN", name)
            return Response(
                200, {"Content-Type": "application/json"}, json.dumps({"name": name, "tags": tags}).encode()
            )
        if "uploads" in parts:
            index = parts.index("uploads")
            name = "/".join(parts[2 : index - 1])
            session = parts[index + 1] if len(parts) > index + 1 else ""
            return self._upload(request, name, session)
        for kind in ("blobs", "manifests"):
            if kind in parts:
                index = parts.index(kind)
                name, reference = "/".join(parts[2:index]), "/".join(parts[index + 1 :])
                return self._blob(request, reference) if kind == "blobs" else self._manifest(request, name, reference)
        return error(404, "NOT_FOUND", path)

    def _upload(self, request: Request, name: str, session: str) -> Response:
        if request.method == "POST":
            session = uuid.uuid4().hex
            self.uploads[session] = bytearray()
            return Response(202, {"Location": f"/v2/{name}/blobs/uploads/{session}", "Range": "0-0"})
        if session not in self.uploads:
            return error(404, "BLOB_UPLOAD_UNKNOWN", session)
        data = self.uploads[session]
        location = {"Location": f"/v2/{name}/blobs/uploads/{session}"}
        if request.method == "GET":
            return Response(204, {**location, **({"Range": f"0-{len(data) - 1}"} if data else {})})
        if request.method == "PATCH":
            start = int(request.headers.get("content-range", "0-0").split("-")[0])
            if start != len(data):
                return error(416, "BLOB_UPLOAD_INVALID", f"expected offset {len(data)}, got {start}")
            data.extend(request.body)
            return Response(202, {**location, "Range": f"0-{len(data) - 1}"})
        if request.method == "PUT":
            data.extend(request.body)
            digest = request.query["digest"][0]
            if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
                return error(400, "DIGEST_INVALID", digest)
            self.blobs[digest] = bytes(data)
            del self.uploads[session]
            return Response(201, {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})
        return error(400, "UNSUPPORTED", request.method)

    def _blob(self, request: Request, digest: str) -> Response:
        data = self.blobs.get(digest)
        if data is None:
            return error(404, "BLOB_UNKNOWN", digest)
        if self.corrupt and request.method == "GET":
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        requested = request.headers.get("range", "")
        if requested.startswith("bytes=") and requested.endswith("-"):
            start = int(requested[len("bytes=") : -1])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return Response(206, headers, data[start:])
        return Response(200, headers, data)

    def _manifest(self, request: Request, name: str, reference: str) -> Response:
        if request.method == "PUT":
            media_type = request.headers.get("content-type", MANIFEST_TYPES[0])
            digest = "sha256:" + hashlib.sha256(request.body).hexdigest()
            self.manifests[(name, reference)] = self.manifests[(name, digest)] = (media_type, request.body)
            return Response(201, {"Docker-Content-Digest": digest, "Location": f"/v2/{name}/manifests/{digest}"})
        found = self.manifests.get((name, reference))
        if found is None:
            return error(404, "MANIFEST_UNKNOWN", f"{name}:{reference}")
        media_type, body = found
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        return Response(200, {"Content-Type": media_type, "Docker-Content-Digest": digest}, body)
