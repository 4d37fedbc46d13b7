"""The store's semantics on the in-memory backend: no server, no files, milliseconds per test. What the API and
real-server tests check over HTTP on real stores, these check at the store's own calls."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import pytest

from registry import paths
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.gc.collector import GarbageCollector, GcOptions
from registry.store.registry import Registry
from storage_backends.memory import MemoryBackend

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest_of(data: bytes) -> Digest:
    return Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    store = Registry(MemoryBackend())
    await store.start()
    yield store
    await store.aclose()


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def upload(registry: Registry, name: str, data: bytes) -> Digest:
    status = await registry.uploads.start(name)
    await registry.uploads.append(name, status.upload_id, one_chunk(data))
    return (await registry.uploads.complete(name, status.upload_id, digest_of(data))).digest


async def image(registry: Registry, name: str, seed: str) -> bytes:
    config, layer = json.dumps({"os": "linux", "architecture": "amd64", "seed": seed}).encode(), seed.encode() * 50
    for blob in (config, layer):
        await upload(registry, name, blob)
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": str(digest_of(config)),
            "size": len(config),
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(digest_of(layer)), "size": len(layer)}
        ],
    }
    return json.dumps(body).encode()


async def test_an_upload_becomes_visible_only_with_the_right_digest(registry: Registry) -> None:
    status = await registry.uploads.start("team/app")
    await registry.uploads.append("team/app", status.upload_id, one_chunk(b"layer bytes"))
    with pytest.raises(RegistryError) as refused:
        await registry.uploads.complete("team/app", status.upload_id, digest_of(b"other bytes"))
    assert refused.value.code is ErrorCode.DIGEST_INVALID
    assert await registry.blobs.present(digest_of(b"layer bytes")) is None
    digest = await upload(registry, "team/app", b"layer bytes")
    assert (await registry.blobs.stat("team/app", digest)).size == len(b"layer bytes")
    with pytest.raises(RegistryError):
        await registry.blobs.stat("team/other", digest)  # stored once, visible only where linked


async def test_tags_move_and_a_delete_by_digest_takes_its_tags(registry: Registry) -> None:
    first, second = await image(registry, "team/app", "one"), await image(registry, "team/app", "two")
    await registry.manifests.put("team/app", "latest", first, OCI_MANIFEST, ("v1",))
    await registry.manifests.put("team/app", "latest", second, OCI_MANIFEST)
    assert (await registry.manifests.get("team/app", "latest")).data == second
    assert await registry.tags.tags_of("team/app", digest_of(first)) == ["v1"]
    await registry.manifests.delete("team/app", str(digest_of(first)))
    assert await registry.tags.all("team/app") == ["latest"]
    with pytest.raises(RegistryError) as gone:
        await registry.manifests.get("team/app", "v1")
    assert gone.value.code is ErrorCode.MANIFEST_UNKNOWN


async def test_a_manifest_needs_its_blobs_in_the_repository(registry: Registry) -> None:
    body = await image(registry, "team/app", "one")
    with pytest.raises(RegistryError) as refused:
        await registry.manifests.put("team/elsewhere", "v1", body, OCI_MANIFEST)
    assert refused.value.code is ErrorCode.MANIFEST_BLOB_UNKNOWN
    config = json.loads(body)["config"]["digest"]
    assert await registry.blobs.mount("team/elsewhere", "team/app", Digest.parse(config)) is not None
    assert await registry.blobs.mount("team/elsewhere", "team/nothing", Digest.parse(config)) is None


async def test_gc_keeps_what_tags_reach_and_collects_the_rest(registry: Registry) -> None:
    kept, dropped = await image(registry, "team/app", "kept"), await image(registry, "team/app", "dropped")
    await registry.manifests.put("team/app", "v1", kept, OCI_MANIFEST)
    await registry.manifests.put("team/app", str(digest_of(dropped)), dropped, OCI_MANIFEST)
    report = await GarbageCollector(registry, GcOptions(grace=0, settle=0, delete_untagged=True)).run()
    assert [r.target for r in report.manifests_removed] == [str(digest_of(dropped))]
    assert digest_of(dropped) in report.blobs_removed
    assert (await registry.manifests.get("team/app", "v1")).data == kept
    for layer in json.loads(kept)["layers"]:
        assert await registry.blobs.read_all(Digest.parse(layer["digest"])) == b"kept" * 50


async def test_a_deleted_repository_leaves_nothing_readable(registry: Registry) -> None:
    body = await image(registry, "team/app", "one")
    await registry.manifests.put("team/app", "v1", body, OCI_MANIFEST)
    deleted = await registry.repositories.delete("team/app")
    assert (deleted.tags, deleted.manifests) == (1, 1)
    assert not await registry.repositories.exists("team/app")
    with pytest.raises(RegistryError):
        await registry.manifests.get("team/app", "v1")


async def test_a_delete_by_digest_finds_its_tags_without_reading_every_tag(registry: Registry) -> None:
    """Each tag write lists the tag on its revision: a DELETE by digest reads those tags only, a tag moved away
    since is left alone, and tags written before those lists existed (by Distribution, or an older Moorage) are
    listed once, on the repository's first such lookup."""
    kept, doomed = await image(registry, "team/app", "kept"), await image(registry, "team/app", "doomed")
    await registry.manifests.put("team/app", "v1", doomed, OCI_MANIFEST, ("also",))
    await registry.manifests.put("team/app", "moved", doomed, OCI_MANIFEST)
    await registry.manifests.put("team/app", "moved", kept, OCI_MANIFEST)  # moved away: listed on both revisions
    await registry.manifests.put("team/app", "other", kept, OCI_MANIFEST)
    # A tag as Distribution writes it: no entry in the revision's list.
    legacy = digest_of(doomed)
    await registry.backend.put_content(paths.tag_current_link("team/app", "legacy"), str(legacy).encode())
    await registry.backend.delete(paths.revision_tags_complete("team/app"))
    registry.tags.forget_repository("team/app")
    reads: list[str] = []
    original = registry.tags.resolve

    async def counted(name: str, tag: str) -> Digest:
        reads.append(tag)
        return await original(name, tag)

    registry.tags.resolve = counted  # type: ignore[method-assign]
    assert sorted(await registry.tags.tags_of("team/app", legacy)) == ["also", "legacy", "v1"]
    # The backfill reads every tag once; the lookup then reads the tags listed on that revision.
    assert sorted(reads) == sorted(["also", "legacy", "moved", "other", "v1", "also", "legacy", "moved", "v1"])
    reads.clear()
    await registry.manifests.delete("team/app", str(legacy))
    # The tags ever set to that revision, looked at before and once more after its removal: never every tag.
    assert sorted(reads) == sorted(["also", "legacy", "moved", "v1"] * 2)
    assert await registry.tags.all("team/app") == ["moved", "other"]
    assert (await registry.manifests.get("team/app", "moved")).data == kept


async def test_a_refused_push_leaves_no_repository(registry: Registry) -> None:
    """A manifest refused by its checks writes nothing under the repository: a new name does not become one."""
    body = await image(registry, "team/app", "real")
    manifest = json.loads(body)
    manifest["layers"][0]["digest"] = str(digest_of(b"never uploaded"))
    with pytest.raises(RegistryError) as refused:
        await registry.manifests.put("team/new", "v1", json.dumps(manifest).encode(), OCI_MANIFEST)
    assert refused.value.code is ErrorCode.MANIFEST_BLOB_UNKNOWN
    assert not await registry.repositories.exists("team/new")
    assert "team/new" not in await registry.repositories.names()


class ReadCountingBackend(MemoryBackend):
    """Records every path streamed out of it."""

    def __init__(self) -> None:
        super().__init__()
        self.read_paths: list[str] = []

    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        self.read_paths.append(path)
        async for data in super().reader(path, offset, length):
            yield data


@pytest.mark.parametrize("checkpoint", [True, False])
async def test_an_upload_started_in_one_process_and_sent_by_another_is_not_read_again(checkpoint: bool) -> None:
    """Workers behind one port: the POST and the PUT reach one process, the PATCH another. The commit takes the
    digest checkpoint the PATCH's process wrote, not the hash of nothing the POST's process holds (a 1 GiB upload
    spent 1.45 s hashing again); without a checkpoint, it hashes the chunks (and refuses a wrong digest)."""
    backend = ReadCountingBackend()
    starting, sending = Registry(backend), Registry(backend)
    for store in (starting, sending):
        await store.start()
    try:
        data = b"layer bytes " * 1000
        for claimed in (digest_of(b"other bytes"), digest_of(data)):
            status = await starting.uploads.start("team/app")
            await sending.uploads.append("team/app", status.upload_id, one_chunk(data))
            if not checkpoint:
                await backend.delete(paths.upload_digest_checkpoint("team/app", status.upload_id, "sha256", len(data)))
            backend.read_paths.clear()
            if claimed != digest_of(data):
                with pytest.raises(RegistryError) as refused:
                    await starting.uploads.complete("team/app", status.upload_id, claimed)
                assert refused.value.code is ErrorCode.DIGEST_INVALID
                continue
            assert (await starting.uploads.complete("team/app", status.upload_id, claimed)).digest == claimed
            chunk_reads = [p for p in backend.read_paths if "/_uploads/" in p]
            assert len(chunk_reads) == (0 if checkpoint else 1)
        assert (await sending.blobs.stat("team/app", digest_of(data))).size == len(data)
    finally:
        for store in (starting, sending):
            await store.aclose()


async def test_gc_purges_upload_sessions_by_their_last_write() -> None:
    """A session is abandoned when nothing was written to it for `purge_after`: one started long ago but still
    receiving chunks stays, and one whose start record is gone (a cancel cut short) goes once its files are old."""
    backend = MemoryBackend()
    registry = Registry(backend)
    await registry.start()
    try:
        name, day = "team/app", 86400.0

        async def session(data: bytes) -> str:
            upload_id = (await registry.uploads.start(name)).upload_id
            await registry.uploads.append(name, upload_id, one_chunk(data))
            return upload_id

        idle, busy, orphan = await session(b"idle"), await session(b"busy"), await session(b"orphan")
        for upload_id in (idle, busy, orphan):
            for info in [i async for i in backend.walk(paths.upload_dir(name, upload_id))]:
                backend.backdate(info.path, 2 * day)
        await registry.uploads.append(name, busy, one_chunk(b" and more"))  # still being written
        await backend.delete(paths.upload_started_at(name, orphan))  # a cancel that stopped there
        report = await GarbageCollector(registry, GcOptions(grace=0, settle=0, purge_uploads_after=day)).run()
        assert sorted(report.uploads_purged) == sorted([(name, idle), (name, orphan)])
        assert not await backend.exists(paths.upload_dir(name, orphan))
        assert not await backend.exists(paths.upload_dir(name, idle))
        assert (await registry.uploads.status(name, busy)).offset == len(b"busy and more")
    finally:
        await registry.aclose()
