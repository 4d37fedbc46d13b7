"""What the image page shows of one manifest: an index's platforms, or an image's layers, config and history, and
the artifacts that refer to it. Read through the store (no pull is counted) and the index (layer sharing)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.index.base import IndexUnavailable, MetadataIndex, Visible
from registry.store.manifest_format import ParsedManifest, read_stored_manifest
from registry.store.registry import Registry
from storage_backends import StorageError

MAX_CONFIG_BYTES = 1 << 20
MAX_REFERRERS = 100
CONFIG_TYPES = frozenset({"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"})


@dataclass(frozen=True, slots=True)
class Layer:
    digest: str
    size: int
    media_type: str
    shared_with: int | None
    """How many other repositories reference this blob (None: the index cannot say now)."""


@dataclass(frozen=True, slots=True)
class Step:
    created: str
    created_by: str
    comment: str
    size: int | None
    """The size of the layer the step made; None for a step that made none (`empty_layer`)."""


@dataclass(frozen=True, slots=True)
class Child:
    digest: str
    media_type: str
    size: int
    platform: str


@dataclass(frozen=True, slots=True)
class Referrer:
    digest: str
    artifact_type: str
    media_type: str
    size: int


@dataclass(slots=True)
class ImageView:
    digest: str
    media_type: str
    manifest_size: int
    is_index: bool
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    config_digest: str | None = None
    config_media_type: str | None = None
    platform: str = ""
    created: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    user: str = ""
    history: list[Step] = field(default_factory=list)
    referrers: list[Referrer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def total_size(self) -> int:
        if self.is_index:
            return self.manifest_size + sum(c.size for c in self.children)
        return self.manifest_size + sum(layer.size for layer in self.layers) + self._config_size

    _config_size: int = 0


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _platform(value: Any) -> str:
    if not isinstance(value, dict):
        return ""
    parts = [value.get("os"), value.get("architecture"), value.get("variant")]
    return "/".join(p for p in parts if isinstance(p, str) and p)


async def image_view(
    registry: Registry, index: MetadataIndex | None, name: str, reference: str, visible: Visible | None
) -> ImageView:
    """The page's facts of `name`@`reference` (a digest); MANIFEST_UNKNOWN when the repository has no such one."""
    try:
        digest = Digest.parse(reference)
    except RegistryError:
        raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"name": name, "reference": reference}) from None
    manifest = await registry.manifests.get(name, str(digest))
    problems: list[str] = []
    parsed = read_stored_manifest(manifest.data, manifest.media_type, problems)
    if parsed is None:
        view = ImageView(str(manifest.digest), manifest.media_type, len(manifest.data), False)
        view.problems = problems or ["not a manifest this page can read"]
        return view
    view = ImageView(
        str(manifest.digest),
        manifest.media_type,
        len(manifest.data),
        parsed.is_index,
        artifact_type=_artifact_type(parsed),
        annotations=dict(parsed.annotations),
        problems=problems,
    )
    if parsed.is_index:
        view.children = [
            Child(str(c.digest), c.media_type, c.size, _platform(c.raw.get("platform"))) for c in parsed.children
        ]
    else:
        await _image(registry, index, name, parsed, view, visible)
    view.referrers = await _referrers(registry, name, manifest.digest)
    return view


async def _image(
    registry: Registry,
    index: MetadataIndex | None,
    name: str,
    parsed: ParsedManifest,
    view: ImageView,
    visible: Visible | None,
) -> None:
    shared: dict[str, int] = {}
    if index is not None and index.ready:
        try:
            # Counted among the repositories the viewer may pull: a count must not reveal private ones either.
            shared = await index.sharing(name, [str(layer.digest) for layer in parsed.layers], visible)
        except IndexUnavailable:
            shared = {}
    view.layers = [Layer(str(d.digest), d.size, d.media_type, shared.get(str(d.digest))) for d in parsed.layers]
    config = parsed.config
    if config is None:
        return
    view.config_digest = str(config.digest)
    view.config_media_type = config.media_type
    view._config_size = config.size
    if config.media_type not in CONFIG_TYPES:
        return
    if config.size > MAX_CONFIG_BYTES:
        view.problems.append(f"the config is {config.size} bytes: larger than this page reads")
        return
    try:
        # Only a config the repository holds: a cached manifest names whatever config its upstream wrote, which
        # this repository has only once pulled (an upstream must not have another repository's config shown).
        if not await registry.blobs.is_linked(name, config.digest):
            view.problems.append("the config is not in this repository yet (a cached image's comes with its pull)")
            return
        body = json.loads(await registry.blobs.read_all(config.digest))
    except (RegistryError, StorageError, ValueError, UnicodeDecodeError):
        view.problems.append("the config blob could not be read")
        return
    if not isinstance(body, dict):
        view.problems.append("the config is not a JSON object")
        return
    _read_config(body, view)


def _artifact_type(parsed: ParsedManifest) -> str | None:
    """What the manifest is when it is not a plain image or index (a signature, an SBOM, a Helm chart...)."""
    found = parsed.referrer_artifact_type()
    return None if found is None or found in CONFIG_TYPES else found


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _read_config(body: dict[str, Any], view: ImageView) -> None:
    view.platform = _platform(body)
    view.created = _text(body.get("created"))
    found = body.get("config")
    runtime: dict[str, Any] = found if isinstance(found, dict) else {}
    view.entrypoint = _strings(runtime.get("Entrypoint"))
    view.cmd = _strings(runtime.get("Cmd"))
    view.env = _strings(runtime.get("Env"))
    ports = runtime.get("ExposedPorts")
    view.ports = sorted(k for k in ports if isinstance(k, str)) if isinstance(ports, dict) else []
    view.labels = _string_map(runtime.get("Labels"))
    view.workdir = _text(runtime.get("WorkingDir"))
    view.user = _text(runtime.get("User"))
    history = body.get("history")
    layers = iter(view.layers)
    for entry in history if isinstance(history, list) else []:
        if not isinstance(entry, dict):
            continue
        empty = entry.get("empty_layer") is True
        layer = None if empty else next(layers, None)
        view.history.append(
            Step(
                created=_text(entry.get("created")),
                created_by=_text(entry.get("created_by")),
                comment=_text(entry.get("comment")),
                size=layer.size if layer is not None else (None if empty else 0),
            )
        )


async def _referrers(registry: Registry, name: str, subject: Digest) -> list[Referrer]:
    found: list[Referrer] = []
    try:
        digests = await registry.referrers.digests(name, subject)
    except (RegistryError, StorageError):
        return found
    for digest in digests[:MAX_REFERRERS]:
        try:
            manifest = await registry.manifests.get(name, str(digest))
        except (RegistryError, StorageError):
            continue  # deleted since the listing
        parsed = read_stored_manifest(manifest.data, manifest.media_type)
        artifact_type = (parsed.referrer_artifact_type() if parsed is not None else None) or ""
        found.append(Referrer(str(digest), artifact_type, manifest.media_type, len(manifest.data)))
    return found
