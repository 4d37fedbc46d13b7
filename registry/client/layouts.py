"""Image sources on disk: an OCI image layout directory, an OCI archive (`.tar`), or a `docker save` tarball.

All three become an `ImageSource`: the root descriptors (index.json's entries) and every blob by digest, read in
chunks from its file (a tar member is a byte range of the archive: no extraction, constant memory).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tarfile
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.client.errors import ClientError
from registry.client.manifests import REF_NAME, ContentDescriptor, Manifest
from registry.media_types import OCI_MANIFEST

CHUNK = 1024 * 1024
MAX_DOCUMENT = 16 * 1024 * 1024
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
_COMPRESSION_MAGIC = {b"\x1f\x8b": "+gzip", b"\x28\xb5\x2f\xfd": "+zstd"}


@dataclass(frozen=True)
class _Extent:
    """A blob's bytes: `size` bytes of `path` from `offset`."""

    path: Path
    offset: int
    size: int


class ImageSource:
    """Blobs by digest plus the root descriptors of an image layout (or what a docker-save tarball holds)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.roots: list[ContentDescriptor] = []
        self._extents: dict[str, _Extent] = {}
        self._memory: dict[str, bytes] = {}

    def _locate(self, digest: str) -> _Extent:
        raise ClientError(f"{self.description}: blob {digest} is missing")

    def has_blob(self, digest: str) -> bool:
        try:
            self.size(digest)
        except ClientError:
            return False
        return True

    def size(self, digest: str) -> int:
        if digest in self._memory:
            return len(self._memory[digest])
        return self._locate(digest).size

    def read_bytes(self, digest: str) -> bytes:
        """A small blob (manifest, config) in memory."""
        if digest in self._memory:
            return self._memory[digest]
        extent = self._locate(digest)
        if extent.size > MAX_DOCUMENT:
            raise ClientError(f"{self.description}: {digest} is too large for a manifest or config")
        with extent.path.open("rb") as f:
            f.seek(extent.offset)
            return f.read(extent.size)

    def manifest(self, descriptor: ContentDescriptor) -> Manifest:
        return Manifest.parse(self.read_bytes(descriptor.digest), descriptor.media_type, descriptor.digest)

    async def stream(self, digest: str, offset: int = 0) -> AsyncGenerator[bytes, None]:
        """The blob from `offset`, read in a worker thread chunk by chunk."""
        if digest in self._memory:
            yield self._memory[digest][offset:]
            return
        extent = self._locate(digest)
        f = await asyncio.to_thread(extent.path.open, "rb")
        try:
            await asyncio.to_thread(f.seek, extent.offset + offset)
            left = extent.size - offset
            while left > 0:
                chunk = await asyncio.to_thread(f.read, min(CHUNK, left))
                if not chunk:
                    raise ClientError(f"{self.description}: blob {digest} is truncated")
                left -= len(chunk)
                yield chunk
        finally:
            f.close()

    def choose_root(self, tag: str | None) -> ContentDescriptor:
        """The one image to push: the only root, else the one whose ref name is `tag`."""
        if len(self.roots) == 1:
            return self.roots[0]
        if not self.roots:
            raise ClientError(f"{self.description} holds no image")
        names = [(r.annotations or {}).get(REF_NAME, "") for r in self.roots]
        matches = [r for r, name in zip(self.roots, names, strict=True) if tag and _ref_matches(name, tag)]
        if len(matches) == 1:
            return matches[0]
        listed = ", ".join(name or r.digest for r, name in zip(self.roots, names, strict=True))
        raise ClientError(f"{self.description} holds {len(self.roots)} images ({listed}); name one as SRC:TAG")


def _ref_matches(name: str, tag: str) -> bool:
    return name == tag or name.endswith(f":{tag}")


class LayoutDirectory(ImageSource):
    def __init__(self, path: Path) -> None:
        super().__init__(f"OCI layout {path}")
        self.path = path
        self.roots = _read_index(self.description, (path / "index.json").read_bytes())

    def _locate(self, digest: str) -> _Extent:
        algorithm, _, hexdigest = digest.partition(":")
        if not hexdigest or "/" in digest or ".." in digest:
            raise ClientError(f"{self.description}: invalid digest {digest!r}")
        path = self.path / "blobs" / algorithm / hexdigest
        try:
            return _Extent(path, 0, path.stat().st_size)
        except FileNotFoundError:
            return super()._locate(digest)


class TarSource(ImageSource):
    """An uncompressed tar: every member is located once; blobs are byte ranges of the archive."""

    def __init__(self, path: Path, description: str, members: dict[str, tarfile.TarInfo]) -> None:
        super().__init__(description)
        self.path = path
        self.members = members

    def member_extent(self, name: str) -> _Extent:
        member = self.members.get(_member_name(name))
        if member is None:
            raise ClientError(f"{self.description}: {name} is missing")
        return _Extent(self.path, member.offset_data, member.size)

    def member_bytes(self, name: str) -> bytes:
        extent = self.member_extent(name)
        with self.path.open("rb") as f:
            f.seek(extent.offset)
            return f.read(extent.size)

    def _locate(self, digest: str) -> _Extent:
        if digest in self._extents:
            return self._extents[digest]
        algorithm, _, hexdigest = digest.partition(":")
        if f"blobs/{algorithm}/{hexdigest}" in self.members:
            return self.member_extent(f"blobs/{algorithm}/{hexdigest}")
        return super()._locate(digest)

    def hash_member(self, name: str) -> tuple[str, int, bytes]:
        """sha256 digest, size and first bytes of a member, read in chunks."""
        extent = self.member_extent(name)
        h = hashlib.sha256()
        head = b""
        with self.path.open("rb") as f:
            f.seek(extent.offset)
            left = extent.size
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise ClientError(f"{self.description}: {name} is truncated")
                head = head or chunk[:8]
                h.update(chunk)
                left -= len(chunk)
        digest = "sha256:" + h.hexdigest()
        self._extents[digest] = extent
        return digest, extent.size, head


def _read_index(description: str, data: bytes) -> list[ContentDescriptor]:
    try:
        index = json.loads(data)
        return [ContentDescriptor.from_json(entry) for entry in index.get("manifests", [])]
    except (ValueError, AttributeError) as e:
        raise ClientError(f"{description}: invalid index.json") from e


def _docker_save(source: TarSource) -> None:
    """Describe each image of `manifest.json` as an OCI manifest over the tarball's config and layer files."""
    try:
        entries: Any = json.loads(source.member_bytes("manifest.json"))
        assert isinstance(entries, list)
    except (ValueError, AssertionError) as e:
        raise ClientError(f"{source.description}: invalid manifest.json") from e
    for entry in entries:
        config_digest, config_size, _ = source.hash_member(entry["Config"])
        layers = []
        for layer_name in entry.get("Layers", []):
            digest, size, head = source.hash_member(layer_name)
            suffix = next((s for magic, s in _COMPRESSION_MAGIC.items() if head.startswith(magic)), "")
            layers.append({"mediaType": LAYER_TAR + suffix, "digest": digest, "size": size})
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": layers,
        }
        data = json.dumps(manifest, indent=2).encode()
        parsed = Manifest.parse(data, OCI_MANIFEST)
        source._memory[parsed.digest] = data
        tags = entry.get("RepoTags") or [None]
        for tag in tags:
            annotations = {REF_NAME: tag} if tag else None
            source.roots.append(ContentDescriptor(OCI_MANIFEST, parsed.digest, len(data), annotations=annotations))


def _member_name(name: str) -> str:
    return os.path.normpath(name).lstrip("/")


def _open_tar(path: Path) -> ImageSource:
    try:
        with tarfile.open(path, mode="r:") as tar:
            entries = tar.getmembers()
    except tarfile.ReadError as e:
        raise ClientError(f"{path}: not an uncompressed tar archive ({e})") from e
    members = {_member_name(m.name): m for m in entries if m.isfile()}
    # docker save links repeated layers to their first copy.
    for m in entries:
        if m.issym() or m.islnk():
            base = os.path.dirname(_member_name(m.name)) if m.issym() else ""
            target = members.get(_member_name(os.path.join(base, m.linkname)))
            if target is not None:
                members[_member_name(m.name)] = target
    if "index.json" in members and "oci-layout" in members:
        source = TarSource(path, f"OCI archive {path}", members)
        source.roots = _read_index(source.description, source.member_bytes("index.json"))
        return source
    if "manifest.json" in members:
        source = TarSource(path, f"docker archive {path}", members)
        _docker_save(source)
        return source
    raise ClientError(f"{path}: neither an OCI archive nor a docker-save tarball")


def open_source(text: str) -> tuple[ImageSource, str | None]:
    """An image source from a path; `PATH:TAG` names one image of a layout that holds several."""
    path, tag = Path(text), None
    if not path.exists() and ":" in text:
        head, _, tag = text.rpartition(":")
        path = Path(head)
    if path.is_dir():
        if not (path / "index.json").is_file():
            raise ClientError(f"{path}: not an OCI image layout (no index.json)")
        return LayoutDirectory(path), tag
    if path.is_file():
        return _open_tar(path), tag
    raise ClientError(f"{text}: no such file or directory")
