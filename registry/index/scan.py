"""Reading what the index holds about one repository from storage, the source of truth.

A repository costs a listing of its tags and of its revisions, a stat and a read per tag, a stat per revision (push
times are the links' modification times) and, for manifests the index does not know yet (content under a digest
never changes), a read of the manifest and of its image config. Indexes are read every time: what their records say
(size, platforms, labels) comes from their children as the repository holds them then.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from registry import paths
from registry.digests import Digest
from registry.errors import RegistryError
from registry.index.base import ManifestRecord, RepositorySnapshot, TagRecord
from registry.media_types import INDEXES
from registry.names import TAG_RE
from registry.store.manifest_format import (
    Descriptor,
    ParsedManifest,
    References,
    decode_stored_json,
    read_stored_manifest,
    references_of,
)
from registry.store.registry import Registry
from storage_backends import PathNotFound, StorageError

CONFIG_TYPES = frozenset({"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"})
MAX_CONFIG_BYTES = 4 * 1024 * 1024
READS_AT_ONCE = 16
CREATED_ANNOTATION = "org.opencontainers.image.created"

Skipped = Callable[[str, str, list[str]], None]
"""Told of each object read only in part: its kind (`manifest` or `config`), which one it is, and why."""
Lookup = Callable[[list[str]], Awaitable[Mapping[str, ManifestRecord]]]
"""The records the index holds for some digests of the repository (content under a digest never changes)."""
Parents = Callable[[list[str]], Awaitable[list[str]]]
"""The indexes of the repository the index holds as listing some of these digests among their manifests."""
MAX_NESTING = 8
"""How many levels of indexes above a changed manifest are re-read (an index of indexes is one level more)."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What storage now says of some tags and manifests of one repository: a record, or None when gone."""

    tags: dict[str, TagRecord | None]
    manifests: dict[str, ManifestRecord | None]


def _ignore(kind: str, what: str, problems: list[str]) -> None:
    pass


@dataclass(frozen=True, slots=True)
class _Loaded:
    digest: str
    media_type: str
    size: int
    parsed: ParsedManifest | None
    config: dict[str, Any] | None
    references: References
    """Every digest GC's lenient reading finds: what the index counts as referenced, so that GC driven by the index
    keeps exactly what a mark over storage keeps."""


async def read_repository(
    registry: Registry, name: str, known: Mapping[str, ManifestRecord], skipped: Skipped = _ignore
) -> RepositorySnapshot | None:
    """`name` as storage holds it, or None when it is not a repository (any more). Manifests in `known` are reused.

    Content never makes this fail: what cannot be read of a manifest or its config is left out of its record (and
    `skipped` is told), a manifest that cannot be read at all is recorded by its digest, type and size. Only
    storage failing does (the caller retries), so that no transient error leaves a record short for good.
    Indexes are read again even when known: their records depend on which of their children the repository holds.
    """
    limit = asyncio.Semaphore(READS_AT_ONCE)
    tag_names, revision_digests = await asyncio.gather(registry.tags.all(name), _revision_digests(registry, name))
    if not tag_names and not revision_digests and not await registry.repositories.exists(name):
        return None
    read_tags, pushed = await asyncio.gather(
        asyncio.gather(*(_read_tag(registry, name, tag, limit) for tag in tag_names)),
        asyncio.gather(*(_pushed_at(registry, name, digest, limit) for digest in revision_digests)),
    )
    revisions = {str(d): at for d, at in zip(revision_digests, pushed, strict=True) if at is not None}
    # An index's record is made of its children's as they are now: only images' records are reused.
    unknown = [digest for digest in revisions if digest not in known or known[digest].media_type in INDEXES]
    cached = bool(unknown) and await _is_cached(registry, name)
    loading = (_load(registry, name, d, limit, skipped, cached) for d in unknown)
    loaded = [found for found in await asyncio.gather(*loading) if found]
    records = {d: dataclasses.replace(known[d], pushed_at=at) for d, at in revisions.items() if d in known}
    _add_records(name, loaded, revisions, records, records, skipped)
    tags = tuple(tag for tag in read_tags if tag is not None and tag.digest in records)
    return RepositorySnapshot(name, tags, tuple(records[d] for d in sorted(records)))


async def read_facts(
    registry: Registry,
    name: str,
    tags: Iterable[str],
    digests: Iterable[str],
    lookup: Lookup,
    parents: Parents,
    skipped: Skipped = _ignore,
) -> Facts:
    """The named tags and manifests as storage holds them now, for an index that updates only those rows: a
    stat and a read per tag, a stat per manifest, and a read of the manifests (and their configs) it does not know.
    A tag is left out (None) unless its manifest is indexable, as in `read_repository`.

    An index's record is made of its children's (size, platforms, labels), so the indexes listing a named manifest
    (and those above them) are read again too: the rows then equal what `read_repository` makes of storage.
    """
    limit = asyncio.Semaphore(READS_AT_ONCE)
    named = set(digests)
    tag_names = sorted(tag for tag in set(tags) if TAG_RE.match(tag))  # a refused PUT's record may name others
    read_tags = await asyncio.gather(*(_read_tag(registry, name, tag, limit) for tag in tag_names))
    wanted = {*named, *(tag.digest for tag in read_tags if tag is not None)}
    above = await _indexes_above(named, wanted, parents)
    parsed_digests = []
    for digest in sorted(wanted | above):
        with contextlib.suppress(RegistryError):
            parsed_digests.append(Digest.parse(digest))
    pushed = await asyncio.gather(*(_pushed_at(registry, name, d, limit) for d in parsed_digests))
    revisions = {str(d): at for d, at in zip(parsed_digests, pushed, strict=True) if at is not None}
    known = await lookup([digest for digest in revisions if digest not in above])
    unknown = [digest for digest in revisions if digest not in known]
    cached = bool(unknown) and await _is_cached(registry, name)
    loading = (_load(registry, name, d, limit, skipped, cached) for d in unknown)
    loaded = [found for found in await asyncio.gather(*loading) if found]
    # Children this read does not cover, as the index holds them; those it covers count as storage has them now.
    children = {str(c.digest) for item in loaded if item.parsed is not None for c in item.parsed.children}
    outside = sorted(children - wanted - above)
    others = dict(await lookup(outside)) if outside else {}
    records = {d: dataclasses.replace(known[d], pushed_at=at) for d, at in revisions.items() if d in known}
    others.update(records)
    _add_records(name, loaded, revisions, records, others, skipped)
    return Facts(
        tags={
            tag: record if record is not None and record.digest in records else None
            for tag, record in zip(tag_names, read_tags, strict=True)
        },
        manifests={digest: records.get(digest) for digest in sorted(wanted | above)},
    )


async def _indexes_above(named: set[str], wanted: set[str], parents: Parents) -> set[str]:
    """The indexes the index holds as listing a manifest of `named`, and those listing them, up to MAX_NESTING."""
    above: set[str] = set()
    level = sorted(named)
    for _ in range(MAX_NESTING):
        if not level:
            break
        found = set(await parents(level)) - wanted - above
        above |= found
        level = sorted(found)
    return above


def _add_records(
    name: str,
    loaded: list[_Loaded],
    revisions: Mapping[str, float],
    records: dict[str, ManifestRecord],
    others: dict[str, ManifestRecord],
    skipped: Skipped,
) -> None:
    """Records of `loaded` into `records` (and `others`, where an index finds its children), each child before the
    indexes that list it, so that an index's record is the same whatever order its manifests were read in."""
    for item in _children_first(loaded):
        try:
            records[item.digest] = _record(item, revisions[item.digest], others)
        except Exception as e:  # a case the record's code did not foresee: the manifest stays listed
            skipped("manifest", f"manifest {item.digest} of {name}", [f"not indexed in full: {e!r}"])
            records[item.digest] = _bare_record(item, revisions[item.digest])
        others[item.digest] = records[item.digest]


def _children_first(loaded: list[_Loaded]) -> list[_Loaded]:
    """`loaded` ordered so that a manifest comes after those of `loaded` it lists (images before indexes, an index
    before the indexes listing it); by digest otherwise. Content addressing rules out cycles; were there one, its
    members would come last in digest order."""
    pending = {item.digest: item for item in loaded}
    ordered: list[_Loaded] = []
    while pending:
        ready = [
            item
            for digest, item in sorted(pending.items())
            if item.parsed is None
            or not any(str(c.digest) in pending and str(c.digest) != digest for c in item.parsed.children)
        ]
        if not ready:
            ready = [pending[digest] for digest in sorted(pending)]
        for item in ready:
            del pending[item.digest]
        ordered += ready
    return ordered


async def _revision_digests(registry: Registry, name: str) -> list[Digest]:
    """One listing per digest algorithm (one in practice): the revision directories' names are the digests."""
    found: list[Digest] = []
    try:
        algorithms = await registry.backend.list(paths.manifest_revisions_dir(name))
    except PathNotFound:
        return found
    for algorithm in algorithms:
        if not algorithm.is_dir:
            continue
        try:
            entries = await registry.backend.list(algorithm.path)
        except PathNotFound:
            continue
        for entry in entries:
            with contextlib.suppress(RegistryError):
                found.append(Digest.parse(f"{_base(algorithm.path)}:{_base(entry.path)}"))
    return found


def _base(path: str) -> str:
    return path.rsplit("/", 1)[1]


async def _pushed_at(registry: Registry, name: str, digest: Digest, limit: asyncio.Semaphore) -> float | None:
    """When the revision link was written; None when there is no link (a revision directory left half deleted)."""
    async with limit:
        try:
            info = await registry.backend.stat(paths.manifest_revision_link(name, digest))
        except PathNotFound:
            return None
    return info.modified.timestamp()


async def _read_tag(registry: Registry, name: str, tag: str, limit: asyncio.Semaphore) -> TagRecord | None:
    link = paths.tag_current_link(name, tag)
    async with limit:
        try:
            info, raw = await asyncio.gather(registry.backend.stat(link), registry.backend.get_content(link))
            digest = Digest.parse(raw.decode("ascii").strip())
        except (PathNotFound, UnicodeDecodeError, RegistryError):
            return None
    return TagRecord(tag, str(digest), info.modified.timestamp())


async def _is_cached(registry: Registry, name: str) -> bool:
    """Whether `name` is a cache of an upstream (registry/proxy), whose manifests name what their upstream wrote."""
    return registry.read_through is not None and await registry.read_through.is_cache(name)


async def _load(
    registry: Registry, name: str, digest: str, limit: asyncio.Semaphore, skipped: Skipped, cached: bool = False
) -> _Loaded | None:
    """The manifest and its image config. `cached`: the config only when the repository holds it (a cached
    manifest was never checked against the repository, as a push is: it could name another repository's config)."""
    async with limit:
        try:
            stored = await registry.manifests.load(name, Digest.parse(digest))
        except (PathNotFound, RegistryError):
            return None  # a revision link without its data: not pullable, so not indexed
    what = f"manifest {digest} of {name}"
    try:
        problems: list[str] = []
        parsed = read_stored_manifest(stored.data, stored.media_type, problems)
        if problems:
            skipped("manifest", what, problems)
        config = None
        if parsed is not None and parsed.config is not None and _is_image_config(parsed.config):
            held = not cached or await registry.blobs.is_linked(name, parsed.config.digest)
            if held:
                config = await _read_config(registry, parsed.config.digest, f"config of {what}", limit, skipped)
    except (StorageError, OSError):
        raise
    except Exception as e:  # a case the lenient reader did not foresee: indexed by name and size
        skipped("manifest", what, [f"not readable: {e!r}"])
        parsed, config = None, None
    return _Loaded(digest, stored.media_type, len(stored.data), parsed, config, references_of(stored.data))


async def _read_config(
    registry: Registry, digest: Digest, what: str, limit: asyncio.Semaphore, skipped: Skipped
) -> dict[str, Any] | None:
    """The image config, when it is a JSON object of at most MAX_CONFIG_BYTES (its descriptor's size may lie)."""
    data = bytearray()
    async with limit:
        try:
            async for chunk in registry.blobs.read(digest, 0, MAX_CONFIG_BYTES + 1):
                data += chunk
        except PathNotFound:
            return None
    if len(data) > MAX_CONFIG_BYTES:
        skipped("config", what, [f"larger than {MAX_CONFIG_BYTES} bytes"])
        return None
    problems: list[str] = []
    body = decode_stored_json(bytes(data), problems)
    if isinstance(body, dict):
        problems += _config_problems(body)
    elif body is not None:
        problems.append("not a JSON object")
    if problems:
        skipped("config", what, problems)
    return body if isinstance(body, dict) else None


def _config_problems(config: dict[str, Any]) -> list[str]:
    """What of an image config the index reads but cannot use (it leaves those out of the record)."""
    problems = [
        f"{key}: not a string"
        for key in ("architecture", "os", "variant", "created")
        if config.get(key) is not None and not isinstance(config[key], str)
    ]
    runtime = config.get("config")
    labels = runtime.get("Labels") if isinstance(runtime, dict) else None
    if runtime is not None and not isinstance(runtime, dict):
        problems.append("config: not an object")
    elif labels is not None and len(_string_map(labels)) != (len(labels) if isinstance(labels, dict) else -1):
        problems.append("config.Labels: not a map of strings to strings")
    return problems


def _is_image_config(descriptor: Descriptor) -> bool:
    return descriptor.media_type in CONFIG_TYPES and descriptor.size <= MAX_CONFIG_BYTES


def _bare_record(item: _Loaded, pushed_at: float) -> ManifestRecord:
    return ManifestRecord(
        item.digest,
        item.media_type,
        None,
        item.size,
        (),
        None,
        {},
        pushed_at,
        _referenced(item, ()),
        item.size,
        _subject(item),
    )


def _referenced(item: _Loaded, declared: Iterable[Descriptor | None]) -> tuple[tuple[str, int], ...]:
    """(digest, size) of what the manifest references: its descriptors as declared, then whatever else the lenient
    reading finds (malformed descriptors, schema 1's fsLayers, children), with the size it says or 0."""
    found = {str(d.digest): d.size for d in declared if d is not None}
    references = item.references
    for blob, size in zip(references.blobs, references.blob_sizes, strict=True):
        found.setdefault(str(blob), size)
    for child in references.children:
        found.setdefault(str(child), 0)
    found.pop(item.digest, None)  # itself: counted as the manifest's own bytes
    return tuple(found.items())


def _subject(item: _Loaded) -> str | None:
    subject = item.references.subject
    return str(subject) if subject is not None else None


def _record(item: _Loaded, pushed_at: float, others: Mapping[str, ManifestRecord]) -> ManifestRecord:
    parsed = item.parsed
    if parsed is None:
        return _bare_record(item, pushed_at)
    if not parsed.is_index:
        config = item.config or {}
        size = item.size + sum(d.size for d in (parsed.config, *parsed.layers) if d is not None)
        platform = _platform(config)
        runtime = config.get("config")  # Docker's and OCI's name for the container's settings, labels among them
        labels = {**_string_map(runtime.get("Labels") if isinstance(runtime, dict) else None), **parsed.annotations}
        created = config.get("created") if isinstance(config.get("created"), str) else None
        return ManifestRecord(
            item.digest,
            item.media_type,
            parsed.referrer_artifact_type(),
            size,
            (platform,) if platform else (),
            created or parsed.annotations.get(CREATED_ANNOTATION),
            labels,
            pushed_at,
            _referenced(item, (parsed.config, *parsed.layers)),
            item.size,
            _subject(item),
        )
    children = [others.get(str(child.digest)) for child in parsed.children]
    size = item.size + sum(
        child.size if child is not None else descriptor.size
        for descriptor, child in zip(parsed.children, children, strict=True)
    )
    platforms: list[str] = []
    labels = {}
    created = parsed.annotations.get(CREATED_ANNOTATION)
    for descriptor, child in zip(parsed.children, children, strict=True):
        declared = _platform(descriptor.raw.get("platform"))
        found = (declared,) if declared else (child.platforms if child is not None else ())
        platforms += [p for p in found if p not in platforms]
        if child is not None and declared:  # attestations and signatures have no real platform
            labels = {**child.labels, **labels}
            created = created or child.created
    labels.update(parsed.annotations)
    return ManifestRecord(
        item.digest,
        item.media_type,
        parsed.artifact_type,
        size,
        tuple(platforms),
        created,
        labels,
        pushed_at,
        _referenced(item, parsed.children),
        item.size,
        _subject(item),
    )


def _platform(value: Any) -> str | None:
    """`os/architecture[/variant]` of an image config or a descriptor's `platform`; None for `unknown/unknown`."""
    if not isinstance(value, dict):
        return None
    os_name, architecture, variant = value.get("os"), value.get("architecture"), value.get("variant")
    if not isinstance(os_name, str) or not isinstance(architecture, str) or not os_name or not architecture:
        return None
    if os_name == "unknown" and architecture == "unknown":
        return None
    return "/".join([os_name, architecture, *([variant] if isinstance(variant, str) and variant else [])])


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}
