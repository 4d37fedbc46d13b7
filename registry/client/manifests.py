"""Descriptors, manifests and indexes as the client sees them: what a manifest references, and platform choice."""

from __future__ import annotations

import hashlib
import json
import platform as host_platform
from dataclasses import dataclass
from typing import Any

from registry.client.errors import ClientError, DigestMismatch
from registry.media_types import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    IMAGE_MANIFESTS,
    INDEXES,
    OCI_INDEX,
    OCI_MANIFEST,
)

ACCEPT_MANIFESTS = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])
REF_NAME = "org.opencontainers.image.ref.name"
_MACHINE_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm"}


@dataclass(frozen=True)
class ContentDescriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    artifact_type: str | None = None

    @classmethod
    def from_json(cls, obj: Any) -> ContentDescriptor:
        try:
            return cls(
                media_type=str(obj.get("mediaType", "")),
                digest=str(obj["digest"]),
                size=int(obj["size"]),
                platform=obj.get("platform"),
                annotations=obj.get("annotations"),
                artifact_type=obj.get("artifactType"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ClientError(f"invalid descriptor: {obj!r:.200}") from e

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            out["platform"] = dict(self.platform)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out


@dataclass(frozen=True)
class Manifest:
    """A manifest's exact bytes, its media type and digest, parsed."""

    data: bytes
    media_type: str
    digest: str
    document: dict[str, Any]

    @classmethod
    def parse(cls, data: bytes, media_type: str | None = None, digest: str | None = None) -> Manifest:
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ClientError(f"invalid manifest: not JSON ({e})") from e
        if not isinstance(document, dict):
            raise ClientError("invalid manifest: not a JSON object")
        media_type = (media_type or "").split(";")[0].strip() or str(document.get("mediaType") or "")
        if media_type not in INDEXES | IMAGE_MANIFESTS:
            media_type = OCI_INDEX if "manifests" in document else OCI_MANIFEST
        return cls(data, media_type, digest or sha256_of(data), document)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEXES

    @property
    def descriptor(self) -> ContentDescriptor:
        return ContentDescriptor(self.media_type, self.digest, len(self.data))

    @property
    def children(self) -> list[ContentDescriptor]:
        """Manifests of an index (platform order kept)."""
        return [ContentDescriptor.from_json(m) for m in self.document.get("manifests", [])] if self.is_index else []

    @property
    def config(self) -> ContentDescriptor | None:
        config = self.document.get("config")
        return ContentDescriptor.from_json(config) if config and not self.is_index else None

    @property
    def layers(self) -> list[ContentDescriptor]:
        return (
            [ContentDescriptor.from_json(layer) for layer in self.document.get("layers", [])]
            if not self.is_index
            else []
        )

    @property
    def blobs(self) -> list[ContentDescriptor]:
        """Config first, then layers (an index has none: its children are manifests)."""
        config = self.config
        return ([config] if config else []) + self.layers


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify_digest(data: bytes, digest: str, what: str) -> None:
    algorithm, _, expected = digest.partition(":")
    if algorithm not in ("sha256", "sha512"):
        raise ClientError(f"unsupported digest algorithm in {digest}")
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise DigestMismatch(f"digest mismatch: {what}: expected {digest}, got {algorithm}:{actual}")


def parse_platform(text: str) -> dict[str, str]:
    """`os/arch[/variant]` -> {"os": ..., "architecture": ..., "variant": ...}."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ClientError(f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/arm64")
    out = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        out["variant"] = parts[2]
    return out


def format_platform(platform: dict[str, str] | None) -> str:
    if not platform:
        return "unknown"
    text = f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"
    return f"{text}/{platform['variant']}" if platform.get("variant") else text


def host_platform_spec() -> dict[str, str]:
    machine = host_platform.machine().lower()
    return {"os": "linux", "architecture": _MACHINE_ARCH.get(machine, machine)}


def select_platform(index: Manifest, wanted: dict[str, str]) -> ContentDescriptor:
    """The index entry for `wanted` (a variant is compared only when asked for)."""
    for child in index.children:
        platform = child.platform or {}
        if platform.get("os") != wanted["os"] or platform.get("architecture") != wanted["architecture"]:
            continue
        if "variant" in wanted and platform.get("variant") != wanted["variant"]:
            continue
        return child
    available = ", ".join(format_platform(c.platform) for c in index.children) or "none"
    raise ClientError(f"no image for platform {format_platform(wanted)} (available: {available})")
