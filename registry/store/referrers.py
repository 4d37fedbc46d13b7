"""Referrers: which manifests name a given digest as their `subject`, kept as one link per referrer."""

from __future__ import annotations

from typing import Any

from registry import paths
from registry.digests import Digest
from registry.errors import RegistryError
from registry.store.manifest_format import decode_stored_json, read_stored_manifest
from storage_backends import StorageBackend


class ReferrerStore:
    def __init__(self, backend: StorageBackend) -> None:
        self.backend = backend

    async def add(self, name: str, subject: Digest, referrer: Digest) -> None:
        await self.backend.put_content(paths.referrer_link(name, subject, referrer), str(referrer).encode())

    async def remove(self, name: str, subject: Digest, referrer: Digest) -> None:
        await self.backend.delete(paths.referrer_link(name, subject, referrer).rsplit("/", 1)[0])

    async def digests(self, name: str, subject: Digest) -> list[Digest]:
        """The referrers' digests, read off the link paths (`.../<alg>/<hex>/link`): no read per link."""
        found = []
        async for info in self.backend.walk(paths.referrers_dir(name, subject)):
            parts = info.path.split("/")
            if parts[-1] != "link" or len(parts) < 3:
                continue
            try:
                found.append(Digest.parse(f"{parts[-3]}:{parts[-2]}"))
            except RegistryError:
                continue
        return found


def referrer_descriptor(digest: Digest, data: bytes) -> dict[str, Any] | None:
    """The index entry the referrers API returns for one referring manifest."""
    parsed = read_stored_manifest(data)
    if parsed is None:
        return None
    descriptor: dict[str, Any] = {"mediaType": parsed.media_type, "digest": str(digest), "size": len(data)}
    artifact_type = parsed.referrer_artifact_type()
    if artifact_type:
        descriptor["artifactType"] = artifact_type
    if parsed.annotations:
        descriptor["annotations"] = parsed.annotations
    return descriptor


def fallback_tag(subject: Digest) -> str:
    """The referrers tag schema of clients for registries without the API: `<alg>-<hex>`, at most 128 chars."""
    return f"{subject.algorithm}-{subject.hex}"[:128]


def descriptors_in_index(data: bytes) -> list[dict[str, Any]]:
    body = decode_stored_json(data)
    manifests = body.get("manifests") if isinstance(body, dict) else None
    return [m for m in manifests if isinstance(m, dict)] if isinstance(manifests, list) else []
