"""A layer already in the registry is linked, not copied again, when a copying store (S3) completes an upload of it
(UploadStore._publish, PRESENT_PROBE_BYTES): clients pushing to a new repository cannot see the blobs of others, so
they upload base layers the registry already holds. Until 2026-12-07 such a completion copied the whole chunk
server-side before its exclusive create found the blob there (a 256 MiB layer on moto: 1.8 s, now 0.09 s)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from registry import paths
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.store import uploads as uploads_module
from registry.store.events import Event, EventType
from registry.store.registry import Registry
from storage_backends import FileInfo
from tests.store.test_upload_races import HookedBackend, ListHooked, digest_of, one_chunk, session_holding

LAYER = b"L" * 8192


@pytest.fixture
async def copying() -> AsyncIterator[tuple[HookedBackend, Registry]]:
    backend = HookedBackend(links=False)
    store = Registry(backend)
    await store.start()
    yield backend, store
    await store.aclose()


def refuse(what: str) -> Callable[[], Awaitable[None]]:
    async def hook() -> None:
        raise AssertionError(what)

    return hook


async def test_a_large_layer_already_stored_is_linked_without_a_copy(
    copying: tuple[HookedBackend, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, store = copying
    monkeypatch.setattr(uploads_module, "PRESENT_PROBE_BYTES", len(LAYER))
    digest = digest_of(LAYER)
    await store.uploads.complete("team/base", await session_holding(store, "team/base", LAYER), digest)
    events: list[Event] = []
    store.events.subscribe(events.append)

    upload_id = await session_holding(store, "team/app", LAYER)
    backend.before_move_to[paths.blob_data(digest)] = refuse("the chunk was copied into a blob already there")
    backend.before_read[paths.upload_dir("team/app", upload_id) + "/"] = refuse("the chunk was read")
    info = await store.uploads.complete("team/app", upload_id, digest)

    assert (info.digest, info.size) == (digest, len(LAYER))
    assert (await store.blobs.stat("team/app", digest)).size == len(LAYER)
    assert await backend.get_content(paths.blob_data(digest)) == LAYER
    assert [info.path async for info in backend.walk(paths.upload_dir("team/app", upload_id))] == []
    pushed = [e for e in events if e.type is EventType.BLOB_PUSHED]
    assert [(e.repository, e.digest, e.size, e.deduplicated) for e in pushed] == [
        ("team/app", str(digest), len(LAYER), True)
    ]


async def test_a_wrong_digest_is_refused_before_the_look_for_the_blob(
    copying: tuple[HookedBackend, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look is no way to link a blob one does not hold: the session's own hash must vouch for the digest."""
    _, store = copying
    monkeypatch.setattr(uploads_module, "PRESENT_PROBE_BYTES", 1)
    digest = digest_of(LAYER)
    await store.uploads.complete("team/base", await session_holding(store, "team/base", LAYER), digest)
    upload_id = await session_holding(store, "team/app", b"other bytes of the same length".ljust(len(LAYER)))
    with pytest.raises(RegistryError) as refused:
        await store.uploads.complete("team/app", upload_id, digest)
    assert refused.value.code is ErrorCode.DIGEST_INVALID
    with pytest.raises(RegistryError):
        await store.blobs.stat("team/app", digest)


async def test_below_the_probe_size_a_layer_already_stored_is_still_a_dedup_hit(
    copying: tuple[HookedBackend, Registry],
) -> None:
    """Small blobs skip the look (their copy costs about as much): the exclusive copy finds the blob instead."""
    _, store = copying
    assert len(LAYER) < uploads_module.PRESENT_PROBE_BYTES
    digest = digest_of(LAYER)
    await store.uploads.complete("team/base", await session_holding(store, "team/base", LAYER), digest)
    info = await store.uploads.complete("team/app", await session_holding(store, "team/app", LAYER), digest)
    assert info.size == len(LAYER)
    assert (await store.blobs.stat("team/app", digest)).size == len(LAYER)


async def answer(store: Registry, name: str, upload_id: str, digest: Digest) -> str:
    try:
        await store.uploads.complete(name, upload_id, digest)
    except RegistryError as e:
        return e.code.name
    return "201"


async def close(*stores: Registry) -> None:
    for store in stores:
        await store.aclose()


async def replicas(links: bool = False) -> tuple[ListHooked, Registry, Registry]:
    """Two stores over one backend (`other` stands for another replica), and "team/app" holding a small blob."""
    backend = ListHooked(links=links)
    store, other = Registry(backend), Registry(backend)
    for each in (store, other):
        await each.start()
    small = b"a small blob of the repository"
    await store.uploads.complete("team/app", await session_holding(store, "team/app", small), digest_of(small))
    return backend, store, other


def deleting_the_repository(other: Registry) -> Callable[[], Awaitable[None]]:
    async def hook() -> None:
        await other.repositories.delete("team/app")

    return hook


@pytest.mark.parametrize("chunks", [1, 2])
async def test_a_dedup_hit_in_a_repository_deleted_meanwhile_links_nothing_back(
    chunks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica deletes the repository once the completion has listed its chunks: the completion answers
    BLOB_UPLOAD_UNKNOWN and the repository stays deleted (found by the review of d845bec, which linked the blob
    back into it; the several-chunk hit did so before)."""
    monkeypatch.setattr(uploads_module, "PRESENT_PROBE_BYTES", len(LAYER))
    backend, store, other = await replicas()
    digest = digest_of(LAYER)
    await store.uploads.complete("team/base", await session_holding(store, "team/base", LAYER), digest)
    upload_id = await session_holding(store, "team/app", LAYER[: len(LAYER) // chunks])
    if chunks == 2:
        await store.uploads.append("team/app", upload_id, one_chunk(LAYER[len(LAYER) // 2 :]))
    backend.after_list[paths.upload_chunks_dir("team/app", upload_id)] = deleting_the_repository(other)
    assert await answer(store, "team/app", upload_id, digest) == "BLOB_UPLOAD_UNKNOWN"
    assert not await store.repositories.exists("team/app")
    await close(store, other)


class CollectedAfterTheLook(HookedBackend):
    """The blob is deleted for good (GC past its settle period) right after the completion's look finds it."""

    def __init__(self) -> None:
        super().__init__(links=False)
        self.collect: str | None = None

    async def stat(self, path: str) -> FileInfo:
        info = await super().stat(path)
        if path == self.collect:
            self.collect = None
            await self.delete_file(path)
        return info


async def test_a_blob_collected_after_the_look_is_published_from_the_clients_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, the completion answered 201 for a blob that was gone (found by the review of d845bec)."""
    monkeypatch.setattr(uploads_module, "PRESENT_PROBE_BYTES", len(LAYER))
    backend = CollectedAfterTheLook()
    store = Registry(backend)
    await store.start()
    digest = digest_of(LAYER)
    await store.uploads.complete("team/base", await session_holding(store, "team/base", LAYER), digest)
    upload_id = await session_holding(store, "team/app", LAYER)
    backend.collect = paths.blob_data(digest)
    info = await store.uploads.complete("team/app", upload_id, digest)
    assert backend.collect is None and info.size == len(LAYER)
    assert await backend.get_content(paths.blob_data(digest)) == LAYER
    assert (await store.blobs.stat("team/app", digest)).size == len(LAYER)
    await store.aclose()


async def test_a_dedup_hit_found_by_the_copy_in_a_repository_deleted_meanwhile_links_nothing_back() -> None:
    """A small layer (no look): the exclusive copy finds the blob while another replica deletes the repository
    (found by the review of 1c669ae)."""
    backend, store, other = await replicas()
    digest = digest_of(LAYER)
    await store.uploads.complete("team/base", await session_holding(store, "team/base", LAYER), digest)
    upload_id = await session_holding(store, "team/app", LAYER)
    backend.before_move_to[paths.blob_data(digest)] = deleting_the_repository(other)
    assert await answer(store, "team/app", upload_id, digest) == "BLOB_UPLOAD_UNKNOWN"
    assert not await store.repositories.exists("team/app")
    await close(store, other)


@pytest.mark.parametrize("links", [True, False])
async def test_an_empty_blob_in_a_repository_deleted_meanwhile_is_linked_nowhere(links: bool) -> None:
    backend, store, other = await replicas(links)
    digest = digest_of(b"")
    await store.uploads.complete("team/base", (await store.uploads.start("team/base")).upload_id, digest)
    upload_id = (await store.uploads.start("team/app")).upload_id
    backend.before_put[paths.blob_data(digest)] = deleting_the_repository(other)
    assert await answer(store, "team/app", upload_id, digest) == "BLOB_UPLOAD_UNKNOWN"
    assert not await store.repositories.exists("team/app")
    await close(store, other)


async def test_a_retried_completion_after_the_first_one_linked_is_answered_201() -> None:
    """Two PUTs of one session (a client retrying one that timed out): while the second copies, the first publishes,
    links and ends the session; the second finds the blob there and is answered 201 too, the repository linking it
    (the check against deleted repositories lets it through)."""
    backend = HookedBackend(links=False)
    store = Registry(backend)
    await store.start()
    digest = digest_of(LAYER)
    upload_id = await session_holding(store, "team/app", LAYER)
    first: list[str] = []

    async def first_completes() -> None:
        first.append(await answer(store, "team/app", upload_id, digest))

    backend.before_move_to[paths.blob_data(digest)] = first_completes
    second = await answer(store, "team/app", upload_id, digest)
    assert (first, second) == (["201"], "201")
    assert not await backend.exists(paths.upload_started_at("team/app", upload_id))
    assert (await store.blobs.stat("team/app", digest)).size == len(LAYER)
    await store.aclose()
    assert [info.path async for info in backend.walk(paths.upload_dir("team/app", upload_id))] == []
