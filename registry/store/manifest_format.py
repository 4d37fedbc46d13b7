"""Parsing and validating manifests: OCI image manifest and index, Docker schema 2 manifest and list."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from registry import media_types
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError

GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "application/octet-stream", "text/plain"})


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    has_media_type_field: bool
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    children: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str]

    @property
    def is_index(self) -> bool:
        return self.media_type in media_types.INDEXES

    def referrer_artifact_type(self) -> str | None:
        """What the referrers API reports: artifactType, else the config's media type (never for an index)."""
        if self.artifact_type:
            return self.artifact_type
        return self.config.media_type if self.config else None


def invalid(reason: str) -> RegistryError:
    return RegistryError(ErrorCode.MANIFEST_INVALID, detail={"reason": reason})


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise invalid(f"{where}: a descriptor must be an object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise invalid(f"{where}.mediaType: required string")
    raw_digest = value.get("digest")
    if not isinstance(raw_digest, str):
        raise invalid(f"{where}.digest: required string")
    try:
        digest = Digest.parse(raw_digest)
    except RegistryError:
        raise invalid(f"{where}.digest: invalid digest {raw_digest!r}") from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise invalid(f"{where}.size: required non-negative integer")
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise invalid(f"{where}.urls: must be a list of strings")
    annotations = value.get("annotations")
    if annotations is not None and not _is_string_map(annotations):
        raise invalid(f"{where}.annotations: must map strings to strings")
    return Descriptor(media_type, digest, size, tuple(urls), value)


def _is_string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _descriptors(body: dict[str, Any], key: str, required: bool) -> tuple[Descriptor, ...]:
    value = body.get(key)
    if value is None:
        if required:
            raise invalid(f"{key}: required list")
        return ()
    if not isinstance(value, list):
        raise invalid(f"{key}: must be a list")
    return tuple(_descriptor(item, f"{key}[{i}]") for i, item in enumerate(value))


def _media_type(body: dict[str, Any], content_type: str) -> str:
    field_value = body.get("mediaType")
    if field_value is not None and not isinstance(field_value, str):
        raise invalid("mediaType: must be a string")
    header = media_types.strip_parameters(content_type)
    if header in GENERIC_CONTENT_TYPES:
        header = ""
    if field_value and header and field_value != header:
        raise invalid(f"mediaType {field_value!r} does not match Content-Type {header!r}")
    chosen = field_value or header or (media_types.OCI_INDEX if "manifests" in body else media_types.OCI_MANIFEST)
    if chosen in (media_types.DOCKER_SCHEMA1, media_types.DOCKER_SCHEMA1_SIGNED):
        raise invalid("Docker schema 1 manifests are not supported; push schema 2 or OCI")
    if chosen not in media_types.MANIFEST_TYPES:
        raise invalid(f"unsupported manifest media type {chosen!r}")
    return chosen


def parse_manifest(data: bytes, content_type: str = "") -> ParsedManifest:
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise invalid(f"not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise invalid("a manifest must be a JSON object")
    if body.get("schemaVersion") != 2:
        raise invalid("schemaVersion must be 2")
    media_type = _media_type(body, content_type)
    artifact_type = body.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise invalid("artifactType: must be a string")
    annotations = body.get("annotations") or {}
    if not _is_string_map(annotations):
        raise invalid("annotations: must map strings to strings")
    subject = _descriptor(body["subject"], "subject") if body.get("subject") is not None else None
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    children: tuple[Descriptor, ...] = ()
    if media_type in media_types.INDEXES:
        if "config" in body or "layers" in body:
            raise invalid("an index has manifests, not config or layers")
        children = _descriptors(body, "manifests", required=True)
    else:
        if "manifests" in body:
            raise invalid("an image manifest has config and layers, not manifests")
        config = _descriptor(body.get("config"), "config")
        layers = _descriptors(body, "layers", required=media_type == media_types.DOCKER_MANIFEST)
    return ParsedManifest(
        media_type=media_type,
        has_media_type_field=isinstance(body.get("mediaType"), str),
        config=config,
        layers=layers,
        children=children,
        subject=subject,
        artifact_type=artifact_type,
        annotations=dict(annotations),
    )
