"""`moorage mirror`: bring images into a Moorage pull-through cache ahead of time (before going offline, say).

Each image is read through the cache the way a client pulls it: the manifest (and, for an index, each platform's
manifest), then every blob, drained and checked against its digest. The cache keeps what passed through it.
"""

from __future__ import annotations

import hashlib

from registry.client.api import RegistryClient
from registry.client.bodies import blob_body
from registry.client.errors import ClientError
from registry.client.manifests import ContentDescriptor, Manifest, select_platform
from registry.client.progress import Reporter
from registry.client.reference import Reference
from registry.client.tasks import run_limited

DEFAULT_CONCURRENCY = 4


async def warm_image(
    ref: Reference,
    registry: RegistryClient,
    reporter: Reporter,
    *,
    platform: dict[str, str] | None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> tuple[Manifest, int]:
    """Read `ref` through the cache: every platform of an index, or only `platform`; the top manifest and the
    bytes of the blobs read."""
    registry.allow(ref.repository, "pull")
    top = await registry.get_manifest(ref.repository, ref.reference)
    children = top.children if top.is_index else []
    if top.is_index and platform is not None:
        children = [select_platform(top, platform)]
    images = [await registry.get_manifest(ref.repository, child.digest) for child in children] or [top]
    if any(image.is_index for image in images):
        raise ClientError(f"{ref}: nested indexes are not supported")
    blobs = {blob.digest: blob for image in images for blob in image.blobs}
    total = 0

    async def one(blob: ContentDescriptor) -> None:
        nonlocal total
        progress = reporter.blob(blob.digest, blob.size, "mirroring")
        algorithm, _, expected = blob.digest.partition(":")
        if algorithm not in ("sha256", "sha512"):
            raise ClientError(f"blob {blob.digest}: unsupported digest algorithm")
        hasher = hashlib.new(algorithm)
        read = 0
        async with registry.open_blob(ref.repository, blob.digest) as response:
            async for chunk in blob_body(response):
                read += len(chunk)
                if read > blob.size:  # never the blob: no need to read (or hash) on
                    raise ClientError(f"blob {ref.repository}@{blob.digest}: more bytes than its size ({blob.size})")
                hasher.update(chunk)
                progress.advance(len(chunk))
        if read != blob.size or hasher.hexdigest() != expected:
            raise ClientError(f"blob {ref.repository}@{blob.digest}: the bytes read do not match the digest")
        total += blob.size
        reporter.done(blob.digest, blob.size, "mirrored")

    await run_limited(blobs.values(), one, concurrency)
    return top, total
