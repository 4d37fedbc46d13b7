"""Online GC against both backends: exactly the unreferenced blobs go, and a set-aside blob comes back on demand."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx

from registry import paths
from registry.digests import Digest
from registry.gc.cli import format_report
from registry.gc.collector import GarbageCollector, GcOptions, GcReport
from registry.store.registry import Registry
from storage_backends import StorageBackend
from tests.api.conftest import blob_data_paths, make_settings
from tests.api.gc_helpers import blob_digests, collect, pull_completely, push_index, put_manifest, snapshot
from tests.api.helpers import (
    OCI_MANIFEST,
    descriptor,
    digest_of,
    encode,
    error_code,
    image_manifest,
    push_blob,
    push_image,
)


async def test_gc_removes_exactly_the_unreferenced_blobs(
    client: httpx.AsyncClient, storage: StorageBackend, storage_config: dict[str, Any]
) -> None:
    shared = b"shared layer " * 300
    config_a, unique_a = b'{"image": "a"}', b"unique to a " * 200
    config_b, unique_b = b'{"image": "b"}', b"unique to b " * 200
    for blob in (shared, config_a, unique_a, config_b, unique_b):
        await push_blob(client, "team/app", blob)
    manifest_a = encode(image_manifest(config_a, [shared, unique_a]))
    manifest_b = encode(image_manifest(config_b, [shared, unique_b]))
    digest_a = await put_manifest(client, "team/app", "a", manifest_a, OCI_MANIFEST)
    await put_manifest(client, "team/app", "b", manifest_b, OCI_MANIFEST)
    index_digest, children = await push_index(client, "team/multi", "latest", ["amd64", "arm64"])
    orphan = await push_blob(client, "team/app", b"uploaded, never referenced")
    assert (await client.delete(f"/v2/team/app/manifests/{digest_a}")).status_code == 202

    young = await collect(storage_config, grace=3600.0)
    assert not young.blobs_removed and young.blobs_kept_young == 4, "all within the grace period"

    before = await snapshot(storage)
    dry = await collect(storage_config, dry_run=True)
    expected = {digest_of(config_a), digest_of(unique_a), digest_a, orphan}
    assert {str(d) for d in dry.blobs_removed} == expected
    expected_bytes = len(config_a) + len(unique_a) + len(manifest_a) + len(b"uploaded, never referenced")
    assert dry.bytes_reclaimed == expected_bytes
    assert await snapshot(storage) == before, "a dry run changes nothing"

    report = await collect(storage_config)
    assert {str(d) for d in report.blobs_removed} == expected
    assert report.bytes_reclaimed == expected_bytes
    assert {(name, str(d)) for name, d in report.links_removed} == {
        ("team/app", digest_of(config_a)),
        ("team/app", digest_of(unique_a)),
        ("team/app", orphan),
    }
    remaining = blob_digests(await blob_data_paths(storage))
    assert not remaining & expected
    assert {digest_of(shared), digest_of(unique_b), index_digest, *children} <= remaining
    await pull_completely(client, "team/app", "b")
    await pull_completely(client, "team/multi", "latest")
    for digest in children:
        await pull_completely(client, "team/multi", digest)
    # Nothing left to collect: a second run removes nothing.
    again = await collect(storage_config)
    assert not again.blobs_removed and not again.links_removed


async def test_delete_untagged_keeps_index_children_and_referrers(
    client: httpx.AsyncClient, storage_config: dict[str, Any]
) -> None:
    tagged, tagged_body = await push_image(client, "team/app", "v1", seed="tagged")
    untagged, _ = await push_image(client, "team/app", "scratch", seed="untagged")
    assert (await client.delete("/v2/team/app/manifests/scratch")).status_code == 202
    index_digest, children = await push_index(client, "team/app", "multi", ["amd64", "arm64"])
    signature = image_manifest(
        b"{}", [b"signature payload"], subject=descriptor(OCI_MANIFEST, tagged_body), artifactType="application/x.sig"
    )
    await push_blob(client, "team/app", b"{}")
    await push_blob(client, "team/app", b"signature payload")
    signature_digest = await put_manifest(
        client, "team/app", digest_of(encode(signature)), encode(signature), OCI_MANIFEST
    )

    # A multi-arch push writes its children by digest before the index: untagged manifests within the grace
    # period stay.
    young = await collect(storage_config, delete_untagged=True, grace=3600.0)
    assert not young.manifests_removed

    report = await collect(storage_config, delete_untagged=True)
    assert [(r.repository, r.target) for r in report.manifests_removed] == [("team/app", untagged)]
    assert untagged in {str(d) for d in report.blobs_removed}
    for digest in (tagged, index_digest, *children, signature_digest):
        await pull_completely(client, "team/app", digest)
    missing = await client.get(f"/v2/team/app/manifests/{untagged}", headers={"Accept": OCI_MANIFEST})
    assert missing.status_code == 404 and error_code(missing) == "MANIFEST_UNKNOWN"

    without_referrers = await collect(storage_config, delete_untagged=True, keep_referrers=False)
    assert [r.target for r in without_referrers.manifests_removed] == [signature_digest]
    assert digest_of(b"signature payload") in {str(d) for d in without_referrers.blobs_removed}
    await pull_completely(client, "team/app", "v1")


async def test_a_set_aside_blob_comes_back_for_the_manifest_that_needs_it(
    client: httpx.AsyncClient, storage: StorageBackend, storage_config: dict[str, Any]
) -> None:
    """GC's first mark ran before this manifest was written: the PUT (or a pull) restores the blob from quarantine.
    And upload sessions older than `uploads.purge_after` go."""
    started = await client.post("/v2/team/app/blobs/uploads/")
    assert started.status_code == 202
    config, layer = b'{"late": true}', b"late layer " * 100
    await push_blob(client, "team/app", config)
    await push_blob(client, "team/app", layer)
    registry = Registry.from_settings(make_settings(storage_config))
    await registry.start()
    try:
        collector = GarbageCollector(registry, GcOptions(grace=0.0, settle=0.0))
        for blob in (config, layer):
            assert await collector._set_aside(Digest.parse(digest_of(blob)), dt.timedelta(0))
    finally:
        await registry.aclose()
    assert not {digest_of(config), digest_of(layer)} & blob_digests(await blob_data_paths(storage))

    head = await client.head(f"/v2/team/app/blobs/{digest_of(layer)}")
    assert head.status_code == 200, "a linked blob GC set aside is restored on access"
    await put_manifest(client, "team/app", "late", encode(image_manifest(config, [layer])), OCI_MANIFEST)
    await pull_completely(client, "team/app", "late")
    report = await collect(storage_config)
    assert not report.blobs_removed
    assert [info.path async for info in storage.walk("moorage/gc/quarantine")] == []

    assert not report.uploads_purged, "the session is younger than the default 24 h"
    assert (await client.get(started.headers["location"])).status_code == 204
    purged = await collect(storage_config, purge_uploads_after=0.000001)
    assert [name for name, _ in purged.uploads_purged] == ["team/app"]
    gone = await client.get(started.headers["location"])
    assert gone.status_code == 404 and error_code(gone) == "BLOB_UPLOAD_UNKNOWN"


def test_report_serializes_to_json() -> None:
    report = GcReport(dry_run=True, blobs_removed={Digest.parse(digest_of(b"x")): 1})
    body = json.loads(json.dumps(report.as_dict()))
    assert body["bytes_reclaimed"] == 1 and body["dry_run"] is True
    assert body["blobs_removed"] == [{"digest": digest_of(b"x"), "size": 1}]


async def test_gc_purges_what_interrupted_writes_left_in_the_store(
    storage: StorageBackend, storage_config: dict[str, Any]
) -> None:
    """A process that died mid-write leaves a temporary file (filesystem) or an incomplete multipart upload (S3,
    invisible but billed): GC removes it once it is older than `uploads.purge_after`, and a dry run only counts."""
    writer = await storage.writer("docker/registry/v2/blobs/sha256/ab/abandoned/data")
    await writer.write(b"y" * (6 * 1024 * 1024))  # beyond one S3 part: under way in the store itself
    try:
        assert (await collect(storage_config)).abandoned_writes_purged == 0  # younger than the default 24 h
        dry = await collect(storage_config, purge_uploads_after=0.000001, dry_run=True)
        assert dry.abandoned_writes_purged >= 1
        assert f"would remove {dry.abandoned_writes_purged} leftovers" in format_report(dry)
        purged = await collect(storage_config, purge_uploads_after=0.000001)
        assert purged.abandoned_writes_purged == dry.abandoned_writes_purged
        assert purged.as_dict()["abandoned_writes_purged"] == dry.abandoned_writes_purged
        assert (await collect(storage_config, purge_uploads_after=0.000001)).abandoned_writes_purged == 0
    finally:
        await writer.cancel()


async def test_gc_runs_over_a_stored_manifest_nested_past_the_recursion_limit(
    client: httpx.AsyncClient, storage: StorageBackend, storage_config: dict[str, Any]
) -> None:
    """Written by another registry (Distribution accepts deep nesting): GC must not stop on it."""
    await push_image(client, "team/app", "v1")
    hostile = b"[" * 100_000 + b"]" * 100_000
    digest = Digest.parse(digest_of(hostile))
    await storage.put_content(paths.blob_data(digest), hostile)
    await storage.put_content(paths.manifest_revision_link("team/old", digest), str(digest).encode())
    report = await collect(storage_config)
    assert report.blobs_in_use >= 3  # team/app's manifest, config and layer, and the hostile manifest itself
    await pull_completely(client, "team/app", "v1")
