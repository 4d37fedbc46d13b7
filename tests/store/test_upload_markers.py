"""A copying store's completion marks the session while it copies the chunk into the blob (UploadStore._publish_copied):
however the completion ends (published, failed, cancelled; its cleanup cancelled as the loop closes excepted: that
marker waits for GC), a deleted session leaves nothing behind, and a marker is dead only once it has not been rewritten
for MARKER_DEAD_SECONDS. (Found by reviews of cbce787 and 6245c44; each test fails before its fix.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from registry import paths
from registry.errors import RegistryError
from registry.store import uploads as uploads_module
from registry.store.registry import Registry
from storage_backends import FileInfo, StorageUnavailable
from tests.store.test_upload_races import (
    Hook,
    HookedBackend,
    blob_holds_its_digest_or_nothing,
    digest_of,
    one_chunk,
    pause,
    session_holding,
    unavailable,
    waiting_patch,
)

NAME = "team/app"
GOOD, EVIL = b"G" * 4096, b"E" * 4096


async def session_files(backend: HookedBackend, upload_id: str) -> list[str]:
    return [info.path async for info in backend.walk(paths.upload_dir(NAME, upload_id))]


def deleting(store: Registry, upload_id: str, then_fail: bool = False) -> Hook:
    """A hook: `store` (another process) deletes the session; then, if asked, the call the hook precedes fails."""

    async def hook() -> None:
        await store.uploads.delete(NAME, upload_id)
        if then_fail:
            raise StorageUnavailable("the copy failed")

    return hook


@pytest.fixture
async def stores() -> AsyncIterator[tuple[HookedBackend, Registry, Registry]]:
    backend = HookedBackend(links=False)
    one, two = Registry(backend), Registry(backend)
    for store in (one, two):
        await store.start()
    yield backend, one, two
    for store in (one, two):
        await store.aclose()


async def test_a_deletion_during_the_copy_then_a_failed_copy_leaves_nothing(
    stores: tuple[HookedBackend, Registry, Registry],
) -> None:
    """The DELETE leaves the chunks to the copying completion; its copy fails (a 503): it finishes the deletion."""
    backend, one, two = stores
    upload_id = await session_holding(one, NAME, GOOD)

    delete_then_fail = deleting(two, upload_id, then_fail=True)
    backend.before_move_to[paths.blob_data(digest_of(GOOD))] = delete_then_fail
    with pytest.raises(StorageUnavailable):
        await one.uploads.complete(NAME, upload_id, digest_of(GOOD))
    assert await session_files(backend, upload_id) == []


async def test_a_cancelled_completion_and_its_retry_leave_nothing(
    stores: tuple[HookedBackend, Registry, Registry],
) -> None:
    """A client gives up on a slow PUT and sends it again: the retry publishes, and its cancel finds the first one's
    marker; the first one's copy ends later, and it finishes the deletion."""
    backend, one, _ = stores
    upload_id = await session_holding(one, NAME, GOOD)
    reached, release, hook = pause()
    backend.before_move_to[paths.blob_data(digest_of(GOOD))] = hook
    first = asyncio.create_task(one.uploads.complete(NAME, upload_id, digest_of(GOOD)))
    await reached.wait()
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert (await one.uploads.complete(NAME, upload_id, digest_of(GOOD))).digest == digest_of(GOOD)
    assert await session_files(backend, upload_id) != []  # the first one's copy still reads the chunk
    release.set()
    await one.uploads.aclose()
    assert await backend.get_content(paths.blob_data(digest_of(GOOD))) == GOOD
    assert await session_files(backend, upload_id) == []


class MarkerLandsUnanswered(HookedBackend):
    """The marker's PUT reaches the store but its answer never comes before the request is cancelled (S3: boto3 runs
    in a thread, which finishes the PUT whatever happens to the coroutine waiting for it)."""

    def __init__(self) -> None:
        super().__init__(links=False)
        self.landed = asyncio.Event()
        self.answer = asyncio.Event()

    async def put_content(self, path: str, data: bytes, exclusive: bool = False, durable: bool = True) -> bool:
        done = await super().put_content(path, data, exclusive, durable)
        if "/publishing/" in path and not self.landed.is_set():
            self.landed.set()
            await self.answer.wait()
        return done


async def test_a_completion_cancelled_during_its_marking_leaves_no_marker() -> None:
    backend = MarkerLandsUnanswered()
    store = Registry(backend)
    await store.start()
    upload_id = await session_holding(store, NAME, GOOD)
    first = asyncio.create_task(store.uploads.complete(NAME, upload_id, digest_of(GOOD)))
    await backend.landed.wait()
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    backend.answer.set()
    await store.uploads.aclose()  # the first one's marker goes once its PUT answered
    assert (await store.uploads.complete(NAME, upload_id, digest_of(GOOD))).digest == digest_of(GOOD)
    assert await session_files(backend, upload_id) == []
    await store.aclose()


class PartwiseCopy(HookedBackend):
    """S3's exclusive copy of a large object: the source read part by part (each part as it is then), the
    destination created at the end; a hook between the parts."""

    def __init__(self) -> None:
        super().__init__(links=False)
        self.between_parts: object = None

    async def copy(self, src: str, dst: str, exclusive: bool = False) -> bool:
        if not dst.endswith("/data"):
            return await super().copy(src, dst, exclusive)
        size = (await self.stat(src)).size
        first = (await self.get_content(src))[: size // 2]
        hook, self.between_parts = self.between_parts, None
        if hook is not None:
            await hook()  # type: ignore[operator]
        second = (await self.get_content(src))[size // 2 : size]
        return await self.put_content(dst, first + second, exclusive=exclusive)


async def test_a_purge_during_a_copy_keeps_the_chunk_the_copy_reads() -> None:
    """GC's purge (its age limit shorter than the copy: every file of the session looks old) finds the live
    completion's marker fresh: it keeps the chunk, so a straggling PATCH cannot put other bytes under its name for
    the copy's later parts to read."""
    backend = PartwiseCopy()
    one, two = Registry(backend), Registry(backend)
    for store in (one, two):
        await store.start()
    upload_id = (await one.uploads.start(NAME)).upload_id
    gate, straggler = await waiting_patch(two, NAME, upload_id, EVIL)
    await one.uploads.append(NAME, upload_id, one_chunk(GOOD))

    async def purge_then_straggle() -> None:
        for path in await session_files(backend, upload_id):
            if "/publishing/" not in path:
                backend.backdate(path, 120)
        await two.uploads.cancel(NAME, upload_id, purging=True)
        gate.set()
        with contextlib.suppress(RegistryError):
            await straggler

    backend.between_parts = purge_then_straggle
    with contextlib.suppress(RegistryError):
        await one.uploads.complete(NAME, upload_id, digest_of(GOOD))
    await blob_holds_its_digest_or_nothing(backend, digest_of(GOOD))
    assert await backend.get_content(paths.blob_data(digest_of(GOOD))) == GOOD
    for store in (one, two):
        await store.aclose()
    assert await session_files(backend, upload_id) == []


async def test_a_long_copy_keeps_its_marker_fresh(
    stores: tuple[HookedBackend, Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, one, two = stores
    monkeypatch.setattr(uploads_module, "MARKER_REFRESH_SECONDS", 0.01)
    upload_id = await session_holding(one, NAME, GOOD)
    reached, release, hook = pause()
    backend.before_move_to[paths.blob_data(digest_of(GOOD))] = hook
    completion = asyncio.create_task(one.uploads.complete(NAME, upload_id, digest_of(GOOD)))
    await reached.wait()
    markers: list[FileInfo] = await backend.list(paths.upload_publishing_dir(NAME, upload_id))
    (marker,) = markers
    backend.backdate(marker.path, uploads_module.MARKER_DEAD_SECONDS + 60)
    await asyncio.sleep(0.1)  # a few refreshes
    await two.uploads.cancel(NAME, upload_id, purging=True)
    assert await backend.get_content(paths.upload_chunk(NAME, upload_id, 0)) == GOOD  # kept for the copy
    release.set()
    assert (await completion).digest == digest_of(GOOD)
    assert await backend.get_content(paths.blob_data(digest_of(GOOD))) == GOOD
    assert await session_files(backend, upload_id) == []


async def test_a_deletion_held_off_then_a_failed_link_leaves_nothing(
    stores: tuple[HookedBackend, Registry, Registry],
) -> None:
    """(Found by a review of 6245c44.) The DELETE during the copy leaves the chunks to the completion; the copy
    publishes, but the layer link fails (a 503): the completion's final cancel never runs, so it finishes the
    deletion on its way out."""
    backend, one, two = stores
    upload_id = await session_holding(one, NAME, GOOD)

    delete_during_copy = deleting(two, upload_id)
    backend.before_move_to[paths.blob_data(digest_of(GOOD))] = delete_during_copy
    backend.before_put[paths.layer_link(NAME, digest_of(GOOD))] = unavailable
    with pytest.raises(StorageUnavailable):
        await one.uploads.complete(NAME, upload_id, digest_of(GOOD))
    await one.uploads.aclose()
    assert await session_files(backend, upload_id) == []


async def test_a_deletion_held_off_then_a_client_gone_during_the_link_leaves_nothing(
    stores: tuple[HookedBackend, Registry, Registry],
) -> None:
    backend, one, two = stores
    upload_id = await session_holding(one, NAME, GOOD)

    delete_during_copy = deleting(two, upload_id)
    reached, release, hook = pause()
    backend.before_move_to[paths.blob_data(digest_of(GOOD))] = delete_during_copy
    backend.before_put[paths.layer_link(NAME, digest_of(GOOD))] = hook
    completion = asyncio.create_task(one.uploads.complete(NAME, upload_id, digest_of(GOOD)))
    await reached.wait()
    completion.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await completion
    release.set()
    await one.uploads.aclose()
    assert await session_files(backend, upload_id) == []


class RefreshOnAThread(HookedBackend):
    """The marker's first refresh runs as on a thread (S3: boto3 in an executor): cancelling the coroutine waiting
    for it does not stop the PUT, which lands once `land` is set."""

    def __init__(self) -> None:
        super().__init__(links=False)
        self.marker_puts = 0
        self.refreshing = asyncio.Event()
        self.land = asyncio.Event()

    async def put_content(self, path: str, data: bytes, exclusive: bool = False, durable: bool = True) -> bool:
        if "/publishing/" in path:
            self.marker_puts += 1
            if self.marker_puts == 2:
                self.refreshing.set()

                async def on_a_thread() -> bool:
                    await self.land.wait()
                    return await HookedBackend.put_content(self, path, data, exclusive, durable)

                return await asyncio.shield(asyncio.ensure_future(on_a_thread()))
        return await super().put_content(path, data, exclusive, durable)


async def test_a_cleanup_cancelled_at_shutdown_never_deletes_a_marker_a_refresh_then_writes_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """(Found by a review of 6245c44.) The loop closing cancels a completion's cleanup while a refresh of its marker
    is in flight: the cleanup stops there and leaves the marker (dead in MARKER_DEAD_SECONDS, then GC's); it used to
    swallow the cancellation and delete the marker, which the refresh then wrote again, for good."""
    monkeypatch.setattr(uploads_module, "MARKER_REFRESH_SECONDS", 0.01)
    backend = RefreshOnAThread()
    store = Registry(backend)
    await store.start()
    upload_id = await session_holding(store, NAME, GOOD)
    reached, release, hook = pause()
    backend.before_move_to[paths.blob_data(digest_of(GOOD))] = hook
    completion = asyncio.create_task(store.uploads.complete(NAME, upload_id, digest_of(GOOD)))
    await reached.wait()
    await backend.refreshing.wait()
    completion.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await completion
    release.set()
    await asyncio.sleep(0.01)
    (cleanup,) = store.uploads._dropping
    cleanup.cancel()
    await asyncio.sleep(0.01)
    assert cleanup.cancelled()
    deleted: list[str] = []
    real_delete_file = backend.delete_file

    async def recording(path: str) -> None:
        deleted.append(path)
        await real_delete_file(path)

    monkeypatch.setattr(backend, "delete_file", recording)
    backend.land.set()
    await asyncio.sleep(0.01)
    assert [path for path in deleted if "/publishing/" in path] == []
    assert len([path for path in await session_files(backend, upload_id) if "/publishing/" in path]) == 1
    await store.aclose()


class MarkerDeleteFailsOnce(HookedBackend):
    """The first delete of a marker fails (S3 answering 503 through every retry)."""

    def __init__(self) -> None:
        super().__init__(links=False)
        self.failed = False

    async def delete_file(self, path: str) -> None:
        if "/publishing/" in path and not self.failed:
            self.failed = True
            raise StorageUnavailable("503 SlowDown")
        await super().delete_file(path)


async def test_a_marker_whose_delete_failed_holds_nothing_off_for_its_own_process() -> None:
    """The push succeeds and its session's cancel deletes everything, the marker too: before, the cancel found the
    completion's own marker and left the session's files to GC's purge an hour later. (Found by the review of
    6245c44.)"""
    backend = MarkerDeleteFailsOnce()
    store = Registry(backend)
    await store.start()
    upload_id = await session_holding(store, NAME, GOOD)
    assert (await store.uploads.complete(NAME, upload_id, digest_of(GOOD))).digest == digest_of(GOOD)
    await store.aclose()
    assert backend.failed
    assert await session_files(backend, upload_id) == []
    assert await backend.get_content(paths.blob_data(digest_of(GOOD))) == GOOD


class MarkerDeletesFail(HookedBackend):
    """Every delete of a marker fails."""

    def __init__(self) -> None:
        super().__init__(links=False)
        self.failures = 0

    async def delete_file(self, path: str) -> None:
        if "/publishing/" in path:
            self.failures += 1
            raise StorageUnavailable("503 SlowDown")
        await super().delete_file(path)


async def test_spent_markers_are_forgotten_with_their_sessions() -> None:
    """A DELETE during the copy leaves the chunks to the completion, whose copy then fails and whose marker's delete
    fails: the completion deletes the session all the same, and forgets the marker (the review of 24dfd51 found the
    process kept every such marker for its life)."""
    backend = MarkerDeletesFail()
    store = Registry(backend)
    await store.start()
    for i in range(5):
        data = b"L%d" % i * 2048
        upload_id = await session_holding(store, NAME, data)

        delete_then_fail = deleting(store, upload_id, then_fail=True)
        backend.before_move_to[paths.blob_data(digest_of(data))] = delete_then_fail
        with pytest.raises(StorageUnavailable):
            await store.uploads.complete(NAME, upload_id, digest_of(data))
        await store.uploads.aclose()
        assert await session_files(backend, upload_id) == []
    assert backend.failures == 5
    assert not store.uploads._spent_markers
    await store.aclose()


async def test_spent_markers_are_remembered_for_a_bounded_number_of_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies that fail (their sessions stay for a retry) and whose markers cannot be deleted: the process remembers
    the spent markers of the last SPENT_SESSIONS_LIMIT sessions only."""
    monkeypatch.setattr(uploads_module, "SPENT_SESSIONS_LIMIT", 3)
    backend = MarkerDeletesFail()
    store = Registry(backend)
    await store.start()
    sessions = []
    for i in range(5):
        data = b"B%d" % i * 2048
        sessions.append(await session_holding(store, NAME, data))
        backend.before_move_to[paths.blob_data(digest_of(data))] = unavailable
        with pytest.raises(StorageUnavailable):
            await store.uploads.complete(NAME, sessions[-1], digest_of(data))
    assert list(store.uploads._spent_markers) == [paths.upload_dir(NAME, s) for s in sessions[2:]]
    await store.aclose()
