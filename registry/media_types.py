"""Manifest media types and Accept-header negotiation."""

from __future__ import annotations

from collections.abc import Iterable

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_NONDISTRIBUTABLE_PREFIX = "application/vnd.oci.image.layer.nondistributable."

IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = IMAGE_MANIFESTS | INDEXES


def strip_parameters(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_accept(header_values: Iterable[str]) -> set[str]:
    """Every media type named by every Accept header line (clients send several lines)."""
    accepted: set[str] = set()
    for value in header_values:
        for item in value.split(","):
            media_type = strip_parameters(item)
            if media_type:
                accepted.add(media_type)
    return accepted


def is_acceptable(media_type: str, accepted: set[str]) -> bool:
    """Follow Distribution: image manifests of Docker's schema 2 are always served; OCI types and manifest
    lists only to clients that name them (or send no Accept at all, or a wildcard)."""
    if not accepted or media_type in accepted or "*/*" in accepted:
        return True
    if media_type == DOCKER_MANIFEST:
        return True
    return media_type.split("/", 1)[0] + "/*" in accepted


def is_foreign_layer(media_type: str) -> bool:
    return media_type == DOCKER_FOREIGN_LAYER or media_type.startswith(OCI_NONDISTRIBUTABLE_PREFIX)
