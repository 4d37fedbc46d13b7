"""Blob upload: cross-repository mount, then a chunked upload that resumes from the server's `Range` when the
connection drops (or the registry fails) mid-blob, then the closing PUT with the digest."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import httpx

from registry.client.api import RegistryClient, error_from_response
from registry.client.errors import ClientError, ConnectionFailed, RegistryResponseError
from registry.client.manifests import ContentDescriptor
from registry.client.progress import BlobProgress, NoProgress
from registry.client.transport import backoff_delay

BlobStream = Callable[[int], AsyncGenerator[bytes, None]]
"""The blob's bytes from an offset: called again from the resume offset after a failure."""

MAX_RESUMES = 8


def _range_end(response: httpx.Response) -> int:
    """The next offset the server expects from `Range: 0-<last>`. No header, and `0-0`, mean nothing received:
    Distribution sends `0-0` for an empty session, so a one-byte session cannot be told apart (nor matters)."""
    value = response.headers.get("Range", "")
    _, _, last = value.partition("-")
    return int(last) + 1 if last.strip().isdigit() and int(last) > 0 else 0


async def _measured(stream: AsyncIterator[bytes], length: int, progress: BlobProgress) -> AsyncGenerator[bytes, None]:
    """The first `length` bytes of `stream`, reported to `progress` as they go."""
    async for chunk in stream:
        if len(chunk) >= length:
            progress.advance(length)
            yield chunk[:length]
            return
        length -= len(chunk)
        progress.advance(len(chunk))
        yield chunk


class BlobUpload:
    """One blob into one repository."""

    def __init__(
        self,
        registry: RegistryClient,
        repository: str,
        descriptor: ContentDescriptor,
        source: BlobStream,
        chunk_size: int | None = None,
    ) -> None:
        """`chunk_size`: bytes per PATCH (None: the whole blob in one streamed PATCH, the fast path). Smaller chunks
        lose less to a dropped connection on registries that keep only whole chunks."""
        self.chunk_size = chunk_size
        self.progress: BlobProgress = NoProgress()
        self.registry = registry
        self.transport = registry.transport
        self.repository = repository
        self.descriptor = descriptor
        self.source = source
        self.subject = f"blob {repository}@{descriptor.digest}"

    async def start(self, mount_from: str | None = None) -> str | None:
        """POST a new session; None when the registry mounted the blob from `mount_from` instead."""
        params = {"mount": self.descriptor.digest, "from": mount_from} if mount_from else None
        response = await self.transport.request(
            "POST", f"/v2/{self.repository}/blobs/uploads/", params=params, headers={"Content-Length": "0"}
        )
        if response.status_code == 201 and mount_from:
            return None
        if response.status_code != 202 or "Location" not in response.headers:
            raise error_from_response(response, self.subject)
        return response.headers["Location"]

    async def run(self, progress: BlobProgress, mount_from: str | None = None) -> str:
        """Upload (or mount); returns "mounted" or "pushed"."""
        location = await self.start(mount_from)
        if location is None:
            return "mounted"
        self.progress = progress
        offset = 0
        resumes = 0
        size = self.descriptor.size
        while offset < size:
            end = size if not self.chunk_size else min(size, offset + self.chunk_size)
            try:
                location = await self._patch(location, offset, end)
                offset = end
            except (ConnectionFailed, RegistryResponseError) as e:
                retriable = isinstance(e, ConnectionFailed) or e.status >= 500 or e.status == 416
                if not retriable or resumes >= MAX_RESUMES:
                    await self._cancel(location)
                    raise
                await asyncio.sleep(backoff_delay(resumes, self.transport.backoff))
                resumes += 1
                location, offset = await self._resume_point(location)
            progress.restart(offset)
        await self._finish(location)
        return "pushed"

    async def _patch(self, location: str, offset: int, end: int) -> str:
        """Send bytes [offset, end) of the blob."""
        source = self.source(offset)
        stream = _measured(source, end - offset, self.progress)
        try:
            response = await self.transport.request(
                "PATCH",
                location,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{end - 1}",
                    "Content-Length": str(end - offset),
                },
                body=lambda: stream,
                retry=False,
            )
        finally:
            await stream.aclose()
            await source.aclose()
        if response.status_code not in (202, 204):
            raise error_from_response(response, self.subject)
        return str(response.headers.get("Location", location))

    async def _cancel(self, location: str) -> None:
        """Best effort: tell the registry to drop the session now rather than when it expires."""
        with contextlib.suppress(ClientError):
            await self.transport.request("DELETE", location, retry=False)

    async def _resume_point(self, location: str) -> tuple[str, int]:
        """Where the server's session stands; a session the server lost starts over."""
        response = await self.transport.request("GET", location)
        if response.status_code in (200, 204):
            return response.headers.get("Location", location), _range_end(response)
        if response.status_code == 404:
            new_location = await self.start()
            assert new_location is not None
            return new_location, 0
        raise error_from_response(response, self.subject)

    async def _finish(self, location: str) -> None:
        url = httpx.URL(self.transport.url(location)).copy_merge_params({"digest": self.descriptor.digest})
        response = await self.transport.request("PUT", str(url), headers={"Content-Length": "0"})
        if response.status_code in (201, 204):
            return
        if response.status_code == 404 and await self.registry.blob_exists(self.repository, self.descriptor.digest):
            return  # an earlier attempt of this PUT committed it; its answer was lost
        raise error_from_response(response, self.subject)


async def upload_blob(
    registry: RegistryClient,
    repository: str,
    descriptor: ContentDescriptor,
    source: BlobStream,
    progress: BlobProgress,
    *,
    mount_from: str | None = None,
    chunk_size: int | None = None,
) -> str:
    """Upload unless the repository has the blob; returns "exists", "mounted" or "pushed"."""
    if await registry.blob_exists(repository, descriptor.digest):
        return "exists"
    if descriptor.size < 0:
        raise ClientError(f"invalid size {descriptor.size} for {descriptor.digest}")
    return await BlobUpload(registry, repository, descriptor, source, chunk_size).run(progress, mount_from)
