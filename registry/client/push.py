"""Push an image (or a whole multi-platform index) from an ImageSource to a registry."""

from __future__ import annotations

from collections.abc import Iterable

from registry.client.api import RegistryClient
from registry.client.errors import ClientError
from registry.client.layouts import ImageSource
from registry.client.manifests import ContentDescriptor, Manifest
from registry.client.progress import Reporter
from registry.client.reference import Reference
from registry.client.tasks import run_limited
from registry.client.uploads import upload_blob

DEFAULT_CONCURRENCY = 4


async def _push_blobs(
    registry: RegistryClient,
    source: ImageSource,
    repository: str,
    blobs: Iterable[ContentDescriptor],
    reporter: Reporter,
    concurrency: int,
    chunk_size: int | None = None,
    mount_from: str | None = None,
) -> None:
    async def push_one(blob: ContentDescriptor) -> None:
        progress = reporter.blob(blob.digest, blob.size, "pushing")
        outcome = await upload_blob(
            registry,
            repository,
            blob,
            lambda offset: source.stream(blob.digest, offset),
            progress,
            chunk_size=chunk_size,
            mount_from=mount_from,
        )
        reporter.done(blob.digest, blob.size, outcome)

    unique = {blob.digest: blob for blob in blobs}
    for blob in unique.values():
        if not source.has_blob(blob.digest):
            raise ClientError(f"{source.description}: blob {blob.digest} is missing")
        if source.size(blob.digest) != blob.size:
            raise ClientError(
                f"{source.description}: blob {blob.digest} has {source.size(blob.digest)} bytes, "
                f"its descriptor says {blob.size}"
            )
    await run_limited(unique.values(), push_one, concurrency)


async def push_manifest_tree(
    registry: RegistryClient,
    source: ImageSource,
    root: ContentDescriptor,
    repository: str,
    reporter: Reporter,
    concurrency: int,
    chunk_size: int | None = None,
    mount_from: str | None = None,
) -> Manifest:
    """Blobs first, then child manifests by digest; the root manifest is returned, not yet put."""
    manifest = source.manifest(root)
    if manifest.is_index:
        children = [source.manifest(child) for child in manifest.children]
        blobs = [blob for child in children for blob in child.blobs]
        await _push_blobs(registry, source, repository, blobs, reporter, concurrency, chunk_size, mount_from)
        for child in children:
            if child.is_index:
                raise ClientError(f"{source.description}: nested indexes are not supported ({child.digest})")
            await registry.put_manifest(repository, child.digest, child)
    else:
        await _push_blobs(registry, source, repository, manifest.blobs, reporter, concurrency, chunk_size, mount_from)
    return manifest


async def push_image(
    source: ImageSource,
    root: ContentDescriptor,
    dest: Reference,
    registry: RegistryClient,
    reporter: Reporter,
    *,
    extra_tags: Iterable[str] = (),
    concurrency: int = DEFAULT_CONCURRENCY,
    chunk_size: int | None = None,
    mount_from: str | None = None,
) -> str:
    """Push `root` (an image manifest or an index) from `source` as `dest`, then tag it with `extra_tags` too.

    Returns the manifest digest. Extra tags are manifest PUTs only: no blob is sent twice. With `mount_from`, a
    blob the destination lacks is first mounted from that repository of the same registry (no bytes sent).
    """
    registry.allow(dest.repository, "pull,push")
    if mount_from:
        registry.allow(mount_from, "pull")
    manifest = await push_manifest_tree(
        registry, source, root, dest.repository, reporter, concurrency, chunk_size, mount_from
    )
    if dest.digest and dest.digest != manifest.digest:
        raise ClientError(f"{dest}: the image's digest is {manifest.digest}")
    digest = await registry.put_manifest(dest.repository, dest.digest or dest.reference, manifest)
    for tag in extra_tags:
        await registry.put_manifest(dest.repository, tag, manifest)
    return digest
