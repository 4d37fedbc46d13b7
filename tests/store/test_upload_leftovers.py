"""What upload sessions leave behind, and what a completion counts (found by a review of 68615bd..2da684f):
GC's database-driven sweep finds sessions of names that hold nothing else; a push taken back in a deleted repository
leaves no repository behind whatever sessions live there; a blob published by the hashing path is the size the
completion admitted and reports."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from registry import paths
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.gc.collector import GcOptions, GcReport
from registry.gc.reviews import ReviewCollector
from registry.store.registry import Registry
from registry.store.uploads import MARKER_DEAD_SECONDS
from storage_backends.filesystem import FilesystemBackend
from storage_backends.memory import MemoryBackend
from tests.store.test_upload_races import CheckThenWrite, HookedBackend, ListHooked, digest_of, session_holding


class MetaOnly:
    """The two calls of the database the upload sweep makes."""

    def __init__(self) -> None:
        self.meta: dict[str, str] = {}

    def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)

    def set_meta(self, values: dict[str, str]) -> None:
        self.meta.update(values)


async def swept_by_reviews(store: Registry) -> list[tuple[str, str]]:
    report = GcReport(dry_run=False)
    collector = ReviewCollector(store, None, GcOptions(purge_uploads_after=1e-6))  # type: ignore[arg-type]
    await collector._purge_uploads(MetaOnly(), report, time.time() + 10)  # type: ignore[arg-type]
    return report.uploads_purged


async def test_an_abandoned_first_push_is_swept() -> None:
    store = Registry(MemoryBackend())
    await store.start()
    upload_id = await session_holding(store, "team/new", b"x" * 1000)
    assert ("team/new", upload_id) in await swept_by_reviews(store)
    assert "team/new" not in await store.repositories.names()  # no repository for the catalog
    await store.aclose()


async def test_a_session_started_during_a_repository_deletion_is_swept() -> None:
    backend = ListHooked(links=True)
    store = Registry(backend)
    await store.start()
    name = "team/app"
    await store.uploads.complete(name, await session_holding(store, name, b"seed"), digest_of(b"seed"))
    await session_holding(store, name, b"idle")  # a session the deletion lists and ends
    late: dict[str, Any] = {}

    async def after_listing() -> None:
        late["id"] = await session_holding(store, name, b"abandoned " * 100)

    backend.after_list[paths.uploads_dir(name)] = after_listing
    await store.repositories.delete(name)
    assert await backend.exists(paths.upload_started_at(name, late["id"]))  # left whole (68615bd)
    assert not await store.repositories.exists(name)
    assert (name, late["id"]) in await swept_by_reviews(store)
    await store.aclose()


async def test_a_session_of_a_repository_is_swept() -> None:
    store = Registry(MemoryBackend())
    await store.start()
    await store.uploads.complete("team/old", await session_holding(store, "team/old", b"seed"), digest_of(b"seed"))
    upload_id = await session_holding(store, "team/old", b"x" * 1000)
    assert ("team/old", upload_id) in await swept_by_reviews(store)
    await store.aclose()


@pytest.mark.parametrize("live_session", [False, True])
async def test_a_taken_back_push_leaves_no_repository_behind(tmp_path: Path, live_session: bool) -> None:
    backend = FilesystemBackend(tmp_path, fsync=False)
    store = Registry(backend)
    await store.start()
    name = "team/app"
    await store.uploads.complete(name, await session_holding(store, name, b"seed"), digest_of(b"seed"))
    await store.repositories.delete(name)
    assert not await store.repositories.exists(name)
    if live_session:  # a push started after the deletion (or a session the deletion left whole)
        await session_holding(store, name, b"a layer being pushed")
    # What a manifest PUT racing the deletion leaves once it took its revision back (ManifestStore.put):
    digest = digest_of(b"manifest")
    await backend.put_content(paths.manifest_revision_link(name, digest), b"x")
    await backend.delete(paths.manifest_revision_dir(name, digest))
    await store.manifests._drop_if_empty(name)
    assert not await store.repositories.exists(name)
    assert name not in await store.repositories.names()
    await store.aclose()


async def test_a_blob_published_by_hashing_is_the_size_the_completion_counted() -> None:
    """A chunk whose bytes are not those the listing sized (two PATCHes at one offset where exclusive writes are
    not atomic, a straggler after a DELETE), with a digest of another algorithm than the session's (nothing known):
    refused, not published as one size and counted (quota, response, event) as another."""
    backend = CheckThenWrite(links=False)
    store = Registry(backend)
    await store.start()
    name, small, big = "team/app", b"G", b"BIG!" * 4096
    upload_id = await session_holding(store, name, small)  # listed and admitted as 1 byte

    async def later_write() -> None:  # the other PATCH's write lands after the completion listed the chunks
        await backend.put_content(paths.upload_chunk(name, upload_id, 0), big)

    backend.before_read[paths.upload_chunk(name, upload_id, 0)] = later_write
    digest = Digest.parse("sha512:" + hashlib.sha512(big).hexdigest())
    with pytest.raises(RegistryError) as refused:
        await store.uploads.complete(name, upload_id, digest)
    assert refused.value.code is ErrorCode.BLOB_UPLOAD_INVALID
    assert not await backend.exists(paths.blob_data(digest))
    await store.aclose()


async def test_a_session_a_dead_completion_marked_is_left_by_its_deletion_and_swept_by_gc() -> None:
    """Where storage copies, a deletion leaves the chunks of a session a completion marked (its copy may still be
    reading them); so does GC's purge while the marker is fresh (a live completion rewrites it while it copies). A
    completion that died mid-copy leaves its marker to age: GC's purge then deletes it all."""
    backend = HookedBackend(links=False)
    store = Registry(backend)
    await store.start()
    name = "team/app"
    upload_id = await session_holding(store, name, b"x" * 1000)
    marker = paths.upload_publishing(name, upload_id, "dead")
    await backend.put_content(marker, b"")
    await store.uploads.delete(name, upload_id)
    assert not await backend.exists(paths.upload_started_at(name, upload_id))
    assert await backend.get_content(paths.upload_chunk(name, upload_id, 0)) == b"x" * 1000
    await swept_by_reviews(store)
    assert await backend.get_content(paths.upload_chunk(name, upload_id, 0)) == b"x" * 1000
    backend.backdate(marker, MARKER_DEAD_SECONDS + 1)
    assert (name, upload_id) in await swept_by_reviews(store)
    assert [info.path async for info in backend.walk(paths.upload_dir(name, upload_id))] == []
    await store.aclose()
