"""The registry's HTTP API (OCI distribution v1.1, Docker's catalog and search) over a Transport."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import httpx

from registry.client.bodies import IDENTITY, blob_body, read_whole
from registry.client.credentials import Credentials, lookup
from registry.client.errors import ClientError, RegistryResponseError
from registry.client.manifests import ACCEPT_MANIFESTS, Manifest, verify_digest
from registry.client.transport import Transport

PAGE_SIZE = 1000
MAX_PAGES = 10_000  # ten million names at PAGE_SIZE: a registry that goes on is looping, or hostile
SEARCH_LIMIT = 25
CHECKABLE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


def error_from_response(response: httpx.Response, subject: str) -> RegistryResponseError:
    """`manifest unknown: team/app:2.0` from the spec's error body, else from the status."""
    code: str | None = None
    detail = ""
    with contextlib.suppress(Exception):
        errors = response.json()["errors"]
        code = str(errors[0]["code"])
        detail = str(errors[0].get("message") or "")
    status = response.status_code
    if code is None:
        code = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NOT_FOUND", 429: "TOOMANYREQUESTS"}.get(status)
    text = code.lower().replace("_", " ") if code else f"HTTP {status} {response.reason_phrase}".strip()
    message = f"{text}: {subject}"
    if status == 401:
        message += " (authentication required: run `moorage login` or set MOORAGE_USERNAME/MOORAGE_PASSWORD)"
    elif code and detail and code not in ("MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN", "NOT_FOUND"):
        message += f" ({detail})"
    return RegistryResponseError(message, status=status, code=code)


def next_link(response: httpx.Response) -> str | None:
    link = response.headers.get("Link")
    if not link or 'rel="next"' not in link:
        return None
    return str(link.split(";", 1)[0].strip().strip("<>"))


class RegistryClient:
    """One registry: `async with RegistryClient.connect("localhost:5000") as registry: ...`."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.name = transport.registry

    @classmethod
    def connect(
        cls,
        registry: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool = False,
        ca_file: str | None = None,
        anonymous: bool = False,
        attempts: int | None = None,
    ) -> RegistryClient:
        if credentials is None and not anonymous:
            credentials = lookup(registry)
        kwargs: dict[str, Any] = {} if attempts is None else {"attempts": attempts}
        return cls(Transport(registry, credentials=credentials, insecure=insecure, ca_file=ca_file, **kwargs))

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.transport.aclose()

    def allow(self, repository: str, actions: str) -> None:
        """Ask for `repository:<name>:<actions>` in the next token (e.g. "pull,push")."""
        self.transport.add_scope(f"repository:{repository}:{actions}")

    async def ping(self) -> None:
        response = await self.transport.request("GET", "/v2/")
        if response.status_code != 200:
            raise error_from_response(response, self.name)

    # Manifests

    async def get_manifest(self, repository: str, reference: str) -> Manifest:
        subject = f"{repository}@{reference}" if ":" in reference else f"{repository}:{reference}"
        response = await self.transport.request(
            "GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT_MANIFESTS}
        )
        if response.status_code != 200:
            raise error_from_response(response, subject)
        data = response.content
        # By digest, the bytes must hash to it; by tag, to what the registry says the tag points at. A digest the
        # client cannot check is never taken: asked for, it is refused; said by the registry, the bytes' own is used.
        digest = reference if ":" in reference else response.headers.get("Docker-Content-Digest")
        if digest and (":" in reference or digest.partition(":")[0] in ("sha256", "sha512")):
            verify_digest(data, digest, f"manifest {subject}")
        else:
            digest = None
        return Manifest.parse(data, response.headers.get("Content-Type"), digest)

    async def manifest_digest(self, repository: str, reference: str) -> str:
        """The digest a tag points at (HEAD; falls back to GET when the registry sends no Docker-Content-Digest)."""
        if ":" in reference:
            return reference
        response = await self.transport.request(
            "HEAD", f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT_MANIFESTS}
        )
        said = str(response.headers.get("Docker-Content-Digest", ""))
        if response.status_code == 200 and CHECKABLE_DIGEST.fullmatch(said):  # what goes into URLs next: exact
            return said
        # Without one (or with one of an algorithm the client cannot check): the bytes' own digest.
        if response.status_code not in (200, 405):
            raise error_from_response(response, f"{repository}:{reference}")
        return (await self.get_manifest(repository, reference)).digest

    async def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> str:
        response = await self.transport.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Content-Type": manifest.media_type},
            content=manifest.data,
        )
        if response.status_code not in (200, 201, 202):
            raise error_from_response(response, f"manifest {repository}:{reference}")
        return response.headers.get("Docker-Content-Digest") or manifest.digest

    async def delete_manifest(self, repository: str, digest: str) -> None:
        response = await self.transport.request("DELETE", f"/v2/{repository}/manifests/{digest}")
        if response.status_code not in (200, 202, 204):
            raise error_from_response(response, f"{repository}@{digest}")

    # Blobs

    async def blob_exists(self, repository: str, digest: str) -> bool:
        response = await self.transport.request("HEAD", f"/v2/{repository}/blobs/{digest}")
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise error_from_response(response, f"blob {repository}@{digest}")

    @contextlib.asynccontextmanager
    async def open_blob(self, repository: str, digest: str, offset: int = 0) -> AsyncIterator[httpx.Response]:
        """A streaming response for the blob from `offset` (status 206 when the registry honoured the Range)."""
        headers = {**IDENTITY, "Range": f"bytes={offset}-"} if offset else IDENTITY
        response = await self.transport.request("GET", f"/v2/{repository}/blobs/{digest}", headers=headers, stream=True)
        try:
            if response.status_code not in (200, 206):
                raise error_from_response(await read_whole(response), f"blob {repository}@{digest}")
            yield response
        finally:
            await response.aclose()

    async def get_blob_bytes(self, repository: str, digest: str, size: int) -> bytes:
        """A small blob (a config) of `size` bytes in memory, verified; no more than that is read."""
        data = bytearray()
        async with self.open_blob(repository, digest) as response:
            async for chunk in blob_body(response):  # as sent: never decoded
                data += chunk
                if len(data) > size:
                    raise ClientError(f"blob {repository}@{digest}: more bytes than its size ({size})")
        verify_digest(bytes(data), digest, f"blob {repository}@{digest}")
        return bytes(data)

    # Listings

    async def tags(self, repository: str) -> list[str]:
        return await self._paged(f"/v2/{repository}/tags/list", "tags", repository)

    async def catalog(self) -> list[str]:
        return await self._paged("/v2/_catalog", "repositories", f"catalog of {self.name}")

    async def _paged(self, path: str, key: str, subject: str) -> list[str]:
        items: list[str] = []
        url: str | None = path
        params: dict[str, str] | None = {"n": str(PAGE_SIZE)}
        seen: set[str] = set()
        while url:
            response = await self.transport.request("GET", url, params=params)
            if response.status_code != 200:
                raise error_from_response(response, subject)
            try:
                items.extend(response.json().get(key) or [])
            except (ValueError, AttributeError) as e:
                raise ClientError(f"{subject}: unreadable answer from {self.name}") from e
            url, params = next_link(response), None
            if url is not None:
                # The next page on this registry only (the request carries its credentials), each page once.
                following, here = httpx.URL(self.transport.url(url)), httpx.URL(self.transport.base_url)
                if (
                    (following.scheme, following.host, following.port) != (here.scheme, here.host, here.port)
                    or str(following) in seen
                    or len(seen) >= MAX_PAGES
                ):
                    raise ClientError(f"{subject}: {self.name} sent a next-page link that loops or leaves it")
                seen.add(str(following))
        return items

    async def search(self, term: str, limit: int = SEARCH_LIMIT) -> list[dict[str, Any]]:
        """Repositories matching `term`: Moorage's `/api/v1/search`, else Docker's `/v1/search`."""
        self.transport.add_scope("registry:catalog:search")
        query = {"q": term, "n": str(limit)}
        response = await self.transport.request("GET", "/api/v1/search", params=query)
        if response.status_code in (404, 405, 501):
            response = await self.transport.request(
                "GET", "/v1/search", params=query, headers={"X-Docker-Token": "true"}
            )
        if response.status_code == 404:
            raise ClientError(f"{self.name} does not support search")
        if response.status_code != 200:
            raise error_from_response(response, f"search {term!r} on {self.name}")
        try:
            results = response.json().get("results") or []
        except (ValueError, AttributeError) as e:
            raise ClientError(f"search on {self.name}: unreadable answer") from e
        return [r for r in results if isinstance(r, dict) and "name" in r]
