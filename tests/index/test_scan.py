"""The index scanner over whatever storage holds under a manifest's digest (written by hand, by another registry,
or accepted under older rules): it never raises on content, a build always finishes and makes the index ready,
and what it stores renders as JSON."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from registry import paths
from registry.digests import Digest
from registry.index.base import SearchQuery
from registry.index.local import LocalIndex
from registry.index.settings import IndexSettings
from registry.store.referrers import referrer_descriptor
from registry.store.registry import Registry
from tests.api.conftest import make_settings
from tests.api.helpers import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, descriptor, digest_of
from tests.hostile_manifests import configs, encode, image_manifests, index_manifests, stored_manifests

LAYER = b"a layer"
MEDIA_TYPE_FILES = (None, b"", b"\xff\xfe not UTF-8", b"x" * 10_000, OCI_MANIFEST.encode())
_roots = itertools.count()


async def store_blob(registry: Registry, data: bytes) -> Digest:
    digest = Digest.of(data)
    await registry.blobs.put_small(digest, data)
    return digest


async def store_manifest(registry: Registry, name: str, tag: str, data: bytes, media_type: bytes | None = None) -> str:
    """What a manifest PUT leaves in storage, written directly: no parsing, no checks, no index update. The
    media type file is what the store keeps for manifests without a `mediaType` field."""
    digest = await store_blob(registry, data)
    if media_type is not None:
        await registry.backend.put_content(paths.manifest_media_type(name, digest), media_type)
    await registry.backend.put_content(paths.manifest_revision_link(name, digest), str(digest).encode())
    await registry.tags.write(name, tag, digest)
    return str(digest)


def image(config: bytes) -> bytes:
    return encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, config),
            "layers": [descriptor(OCI_LAYER, LAYER)],
            "annotations": {"org.opencontainers.image.description": "the app"},
        }
    )


def first(pair: tuple[bytes, str]) -> bytes:
    return pair[0]


manifests = st.one_of(
    stored_manifests,
    image_manifests((digest_of(b"{}"), 2), (digest_of(LAYER), len(LAYER))).map(first),
    index_manifests((digest_of(image(b"{}")), len(image(b"{}")))).map(first),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hostile=manifests, config=configs, media_type=st.sampled_from(MEDIA_TYPE_FILES))
async def test_generated_objects_in_storage_never_stop_a_build(
    tmp_path: Path, hostile: bytes, config: bytes, media_type: bytes | None
) -> None:
    assume(hostile != image(config))
    root = tmp_path / f"storage{next(_roots)}"
    registry = Registry.from_settings(make_settings({"filesystem": {"root": str(root), "fsync": False}}))
    await registry.start()
    index = LocalIndex(registry, IndexSettings(), root / "index.sqlite")
    index.follow(registry.events)
    try:
        for blob in (config, LAYER, b"{}", image(b"{}")):
            await store_blob(registry, blob)
        bad = await store_manifest(registry, "team/app", "bad", hostile, media_type)
        good = await store_manifest(registry, "team/app", "good", image(config))

        # What the API does with it on GET, DELETE and the referrers listing: never raises.
        stored = await registry.manifests.get("team/app", "bad")
        assert stored.data == hostile
        listed = referrer_descriptor(Digest.parse(bad), stored.data)
        assert listed is None or listed["digest"] == bad

        await index.open()
        await index.catch_up()  # what a server's start does: build, then ready
        assert index.ready and not index.behind
        assert await index.catalog(None, None, None) == ["team/app"]
        hits = await index.search(SearchQuery(terms=("app",)), None, 10, None)
        assert [hit.repository for hit in hits] == ["team/app"]
        summary = await index.repository("team/app")
        assert summary is not None
        assert {(t.tag, t.manifest.digest) for t in summary.tags} == {("bad", bad), ("good", good)}
        # Everything the index answers is storable and encodable: no surrogates, no integer beyond 64 bits.
        rendered = json.dumps(dataclasses.asdict(summary), ensure_ascii=False).encode("utf-8")
        assert all(-(2**63) <= t.manifest.size < 2**63 for t in summary.tags), rendered[:200]

        await registry.manifests.delete("team/app", bad)  # the index follows the store's events
        summary = await index.repository("team/app")
        assert summary is not None and [t.tag for t in summary.tags] == ["good"]
    finally:
        await index.aclose()
        await registry.aclose()
