"""Registry to registry: mount across repositories of one registry, stream blobs between two (constant memory)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from registry.client.api import RegistryClient
from registry.client.bodies import blob_body
from registry.client.errors import ClientError
from registry.client.manifests import ContentDescriptor
from registry.client.progress import Reporter
from registry.client.reference import Reference
from registry.client.tasks import run_limited
from registry.client.uploads import upload_blob

DEFAULT_CONCURRENCY = 4


async def remote_stream(
    registry: RegistryClient, repository: str, digest: str, offset: int
) -> AsyncGenerator[bytes, None]:
    """A blob's bytes from another registry, from `offset` (a Range request when resuming)."""
    async with registry.open_blob(repository, digest, offset) as response:
        if offset and response.status_code != 206:
            raise ClientError(f"blob {repository}@{digest}: the source registry cannot resume (no Range support)")
        async for chunk in blob_body(response):
            yield chunk


async def copy_image(
    src: Reference,
    dst: Reference,
    src_registry: RegistryClient,
    dst_registry: RegistryClient,
    reporter: Reporter,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    chunk_size: int | None = None,
) -> str:
    """Copy `src` (an image or a whole index, byte for byte) to `dst`; returns the manifest digest."""
    same_registry = src_registry is dst_registry
    src_registry.allow(src.repository, "pull")
    dst_registry.allow(dst.repository, "pull,push")
    top = await src_registry.get_manifest(src.repository, src.reference)
    images = (
        [await src_registry.get_manifest(src.repository, c.digest) for c in top.children] if top.is_index else [top]
    )
    if any(image.is_index for image in images):
        raise ClientError(f"{src}: nested indexes are not supported")
    mount_from = src.repository if same_registry and src.repository != dst.repository else None

    async def one(blob: ContentDescriptor) -> None:
        progress = reporter.blob(blob.digest, blob.size, "copying")
        outcome = await upload_blob(
            dst_registry,
            dst.repository,
            blob,
            lambda offset: remote_stream(src_registry, src.repository, blob.digest, offset),
            progress,
            mount_from=mount_from,
            chunk_size=chunk_size,
        )
        reporter.done(blob.digest, blob.size, outcome)

    blobs = {blob.digest: blob for image in images for blob in image.blobs}
    await run_limited(blobs.values(), one, concurrency)
    if top.is_index:
        for image in images:
            await dst_registry.put_manifest(dst.repository, image.digest, image)
    if dst.digest and dst.digest != top.digest:
        raise ClientError(f"{dst}: the image's digest is {top.digest}")
    return await dst_registry.put_manifest(dst.repository, dst.digest or dst.reference, top)
