"""Pull an image into an OCI layout directory or a docker-archive tarball, verifying every blob while it streams.

Everything is written under a temporary directory beside DEST and renamed into place at the end: a failure (a
digest mismatch included) leaves no DEST behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

import httpx

from registry.client.api import RegistryClient
from registry.client.archives import write_docker_archive
from registry.client.bodies import blob_body
from registry.client.errors import ClientError, ConnectionFailed, DigestMismatch
from registry.client.manifests import REF_NAME, ContentDescriptor, Manifest, select_platform
from registry.client.progress import BlobProgress, Reporter
from registry.client.reference import Reference
from registry.client.tasks import run_limited
from registry.client.transport import backoff_delay, describe_transport_error

DEFAULT_CONCURRENCY = 4
MAX_RESUMES = 5
OCI_LAYOUT = b'{"imageLayoutVersion": "1.0.0"}'
FORMATS = ("oci", "docker-archive")


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


class LayoutWriter:
    """An OCI layout being written in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True)
        (root / "oci-layout").write_bytes(OCI_LAYOUT)

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm not in ("sha256", "sha512") or not hexdigest.isalnum():
            raise ClientError(f"invalid digest {digest!r}")
        directory = self.root / "blobs" / algorithm
        directory.mkdir(exist_ok=True)
        return directory / hexdigest

    def write_bytes(self, digest: str, data: bytes) -> None:
        self.blob_path(digest).write_bytes(data)

    def write_index(self, entries: list[ContentDescriptor]) -> None:
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [entry.to_json() for entry in entries],
        }
        (self.root / "index.json").write_bytes(canonical_json(index))


# One thread hop per MiB: httpx's own reads are small, and a hop per read cost more than the copy.
READ_CHUNK = 1024 * 1024


def _write_and_hash(f: BinaryIO, h: hashlib._Hash, chunk: bytes) -> None:
    h.update(chunk)
    f.write(chunk)


async def download_blob(
    registry: RegistryClient, repository: str, blob: ContentDescriptor, path: Path, progress: BlobProgress
) -> None:
    """Stream a blob to `path`, hashing as it goes; resume with a Range request after a dropped connection."""
    algorithm, _, expected = blob.digest.partition(":")
    partial = path.with_name(path.name + ".partial")
    h = hashlib.new(algorithm)
    written = 0
    resumes = 0
    pending: list[bytes] = []  # received, not yet written: up to READ_CHUNK
    with partial.open("wb") as f:

        async def flush() -> None:
            if pending:
                data = b"".join(pending)
                pending.clear()
                await asyncio.to_thread(_write_and_hash, f, h, data)
                progress.advance(len(data))

        while True:
            try:
                async with registry.open_blob(repository, blob.digest, written) as response:
                    if written and response.status_code != 206:
                        f.seek(0)
                        f.truncate()
                        h, written = hashlib.new(algorithm), 0
                        progress.restart(0)
                    buffered = 0
                    async for chunk in blob_body(response):
                        written += len(chunk)
                        if written > blob.size:
                            break
                        pending.append(chunk)
                        buffered += len(chunk)
                        if buffered >= READ_CHUNK:
                            await flush()
                            buffered = 0
                await flush()
                break
            except (httpx.TransportError, ConnectionFailed) as e:
                await flush()  # what arrived before the drop is a valid prefix: resume after it
                if resumes >= MAX_RESUMES:
                    message = describe_transport_error(e) if isinstance(e, httpx.TransportError) else str(e)
                    raise ConnectionFailed(f"blob {repository}@{blob.digest}: {message}") from e
                await asyncio.sleep(backoff_delay(resumes, registry.transport.backoff))
                resumes += 1
    actual = h.hexdigest()
    if written != blob.size or actual != expected:
        partial.unlink(missing_ok=True)
        got = f"{written} bytes" if written != blob.size else f"{algorithm}:{actual}"
        raise DigestMismatch(f"digest mismatch: blob {repository}@{blob.digest} (size {blob.size}): got {got}")
    partial.rename(path)


async def _download_all(
    registry: RegistryClient,
    repository: str,
    blobs: list[ContentDescriptor],
    layout: LayoutWriter,
    reporter: Reporter,
    concurrency: int,
) -> None:
    async def one(blob: ContentDescriptor) -> None:
        progress = reporter.blob(blob.digest, blob.size, "pulling")
        await download_blob(registry, repository, blob, layout.blob_path(blob.digest), progress)
        reporter.done(blob.digest, blob.size, "pulled")

    unique = {blob.digest: blob for blob in blobs}
    await run_limited(unique.values(), one, concurrency)


def _check_dest(dest: Path) -> Path:
    """DEST's parent directory; DEST itself must not exist yet."""
    if dest.exists() or dest.is_symlink():
        raise ClientError(f"{dest} already exists")
    parent = dest.absolute().parent
    if not parent.is_dir():
        raise ClientError(f"{parent}: no such directory")
    return parent


async def resolve(
    registry: RegistryClient, ref: Reference, platform: dict[str, str] | None
) -> tuple[Manifest, list[Manifest]]:
    """The manifest to write at the top (an index, or the chosen platform's image) and every image manifest."""
    top = await registry.get_manifest(ref.repository, ref.reference)
    if not top.is_index:
        return top, [top]
    if platform is not None:
        chosen = await registry.get_manifest(ref.repository, select_platform(top, platform).digest)
        images = [chosen]
    else:
        images = [await registry.get_manifest(ref.repository, child.digest) for child in top.children]
    if any(image.is_index for image in images):
        # Its children would not be fetched: the layout would name manifests it does not hold (as cp and mirror).
        raise ClientError(f"{ref}: nested indexes are not supported")
    return (images[0], images) if platform is not None else (top, images)


async def pull_image(
    ref: Reference,
    dest: Path,
    registry: RegistryClient,
    reporter: Reporter,
    *,
    platform: dict[str, str] | None = None,
    fmt: str = "oci",
    concurrency: int = DEFAULT_CONCURRENCY,
) -> Manifest:
    """Pull `ref` into `dest`; returns the manifest written at the top of the layout."""
    if fmt not in FORMATS:
        raise ClientError(f"unknown format {fmt!r} (expected one of: {', '.join(FORMATS)})")
    parent = _check_dest(dest)
    registry.allow(ref.repository, "pull")
    top, images = await resolve(registry, ref, platform)
    if fmt == "docker-archive" and top.is_index:
        raise ClientError(f"{ref} is a multi-platform image: choose one with --platform for --format docker-archive")
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent))
    try:
        layout = LayoutWriter(work / "layout")
        for manifest in [top, *images]:
            layout.write_bytes(manifest.digest, manifest.data)
        blobs = [blob for image in images for blob in image.blobs]
        await _download_all(registry, ref.repository, blobs, layout, reporter, concurrency)
        entry = top.descriptor
        name = ref.tag or (None if ref.digest else "latest")
        if name and fmt == "docker-archive":
            # The archive is an OCI archive too, and podman loads it as one, naming the image after this
            # annotation: the whole reference, not the bare tag (which podman would load as `localhost/<tag>`).
            name = f"{ref.repository_name}:{name}"
        if name:
            entry = ContentDescriptor(entry.media_type, entry.digest, entry.size, annotations={REF_NAME: name})
        layout.write_index([entry])
        if fmt == "oci":
            os.rename(layout.root, dest)
        else:
            archive = work / "image.tar"
            repo_tag = f"{ref.repository_name}:{ref.tag}" if ref.tag else None
            await asyncio.to_thread(write_docker_archive, layout.root, top, repo_tag, archive)
            os.rename(archive, dest)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    return top
