"""A chunk's name is freed when its upload session is deleted, and a PATCH that looked at the session before the
deletion can then store other bytes under it. Whatever the completing PUT knew of the chunks (its running hash, the
digest checkpoint, a hash read before the move), the blob it publishes holds bytes that hash to its digest, or
nothing is published. (Found by a review: before, the PUT copied or moved the replaced chunk under the digest it
had checked, and a blob is shared by every repository.)"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from registry import paths
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.store.registry import Registry
from storage_backends import FileInfo, StorageError, StorageUnavailable
from storage_backends.filesystem import FilesystemBackend
from storage_backends.memory import MemoryBackend

Hook = Callable[[], Awaitable[None]]


def digest_of(data: bytes) -> Digest:
    return Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


class HookedBackend(MemoryBackend):
    """Runs a hook before the first read or write of a path (or of any path under a key ending in "/"), before the
    next move or link (a chunk leaving for its blob, either way), before the next move to a destination, or before
    the next listing of a path."""

    def __init__(self, links: bool = True) -> None:
        super().__init__()
        self.links = links  # False: a chunk is moved like on S3, a copy straight into the blob
        self.before_read: dict[str, Hook] = {}
        self.before_put: dict[str, Hook] = {}
        self.before_list: dict[str, Hook] = {}
        self.before_move: Hook | None = None
        self.before_move_to: dict[str, Hook] = {}
        self.after_move_to: dict[str, Hook] = {}
        # S3Backend.delete's shape, when set: the prefix listed in key order and deleted in batches of this many
        # keys, a round trip between batches (and the hook for that prefix after its first batch).
        self.delete_batch: int | None = None
        self.between_batches: dict[str, Hook] = {}

    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        key = next((k for k in self.before_read if k == path or (k.endswith("/") and path.startswith(k))), None)
        hook = self.before_read.pop(key) if key is not None else None
        if hook is not None:
            await hook()
        async for data in super().reader(path, offset, length):
            yield data

    async def put_content(self, path: str, data: bytes, exclusive: bool = False, durable: bool = True) -> bool:
        key = next((k for k in self.before_put if k == path or (k.endswith("/") and path.startswith(k))), None)
        hook = self.before_put.pop(key) if key is not None else None
        if hook is not None:
            await hook()
        return await super().put_content(path, data, exclusive, durable)

    async def list(self, path: str) -> list[FileInfo]:
        hook = self.before_list.pop(path, None)
        if hook is not None:
            await hook()
        return await super().list(path)

    async def link(self, src: str, dst: str) -> bool:
        hook, self.before_move = self.before_move, None
        if hook is not None:
            await hook()
        return await super().link(src, dst)

    async def move(self, src: str, dst: str, exclusive: bool = False) -> bool:
        return await self._hooked(src, dst, super().move(src, dst, exclusive))

    async def copy(self, src: str, dst: str, exclusive: bool = False) -> bool:
        return await self._hooked(src, dst, super().copy(src, dst, exclusive))

    async def _hooked(self, src: str, dst: str, call: Coroutine[Any, Any, bool]) -> bool:
        """A move or a copy (a copying store's way into the blob), between its hooks."""
        try:
            hook, self.before_move = self.before_move, None
            if hook is not None:
                await hook()
            hook = self.before_move_to.pop(dst, None)
            if hook is not None:
                await hook()
        except BaseException:
            call.close()
            raise
        done = await call
        hook = self.after_move_to.pop(dst, None)
        if hook is not None:
            await hook()
        return done

    async def delete(self, path: str) -> None:
        if self.delete_batch is None:
            return await super().delete(path)
        self._remove(path)  # the key itself, then what the prefix holds
        keys = [info.path async for info in self.walk(path)]
        for start in range(0, len(keys), self.delete_batch):
            for key in keys[start : start + self.delete_batch]:
                self._remove(key)
            await asyncio.sleep(0)
            hook = self.between_batches.pop(path, None)
            if hook is not None:
                await hook()


async def blob_holds_its_digest_or_nothing(backend: MemoryBackend, digest: Digest) -> None:
    try:
        stored = await backend.get_content(paths.blob_data(digest))
    except Exception:
        return
    assert hashlib.sha256(stored).hexdigest() == digest.hex, f"{digest} holds {len(stored)} other bytes"


async def complete_or_refuse(store: Registry, name: str, upload_id: str, digest: Digest) -> None:
    try:
        assert (await store.uploads.complete(name, upload_id, digest)).digest == digest
    except RegistryError as e:
        assert e.code in (ErrorCode.DIGEST_INVALID, ErrorCode.BLOB_UPLOAD_UNKNOWN)


async def session_holding(store: Registry, name: str, data: bytes) -> str:
    """A new upload session with `data` as its one chunk; its id."""
    upload_id = (await store.uploads.start(name)).upload_id
    await store.uploads.append(name, upload_id, one_chunk(data))
    return upload_id


async def waiting_patch(
    store: Registry, name: str, upload_id: str, data: bytes
) -> tuple[asyncio.Event, asyncio.Task[object]]:
    """A PATCH that has looked at the session and waits for its body (sent once the event is set)."""
    gate = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        await gate.wait()
        yield data

    patch = asyncio.create_task(store.uploads.append(name, upload_id, body()))
    for _ in range(20):  # until it has read the session's state and waits for its body
        await asyncio.sleep(0)
    return gate, patch


async def straggling_patch(store: Registry, name: str, upload_id: str, data: bytes) -> tuple[asyncio.Event, Hook]:
    """A waiting PATCH, and what a client does while the PUT runs: delete the session, then let that PATCH finish
    (storing `data` under a freed chunk name)."""
    gate, straggler = await waiting_patch(store, name, upload_id, data)

    async def delete_then_release() -> None:
        await store.uploads.delete(name, upload_id)
        gate.set()
        await straggler

    return gate, delete_then_release


async def unavailable() -> None:
    """A hook: storage does not answer this call."""
    raise StorageUnavailable("storage did not answer")


def pause() -> tuple[asyncio.Event, asyncio.Event, Hook]:
    """A hook that says it was reached (the first event) and waits until told to go on (the second)."""
    reached, go_on = asyncio.Event(), asyncio.Event()

    async def hook() -> None:
        reached.set()
        await go_on.wait()

    return reached, go_on, hook


async def holding_with_straggler(
    store: Registry, other: Registry, name: str, good: bytes, evil: bytes
) -> tuple[str, asyncio.Event, asyncio.Task[object]]:
    """A session holding `good` (stored through `store`, whose running hash then covers it), and a PATCH through
    `other` that looked at the session before and waits to send `evil` at offset 0: the session's id, the PATCH's
    gate and task (see `waiting_patch`)."""
    upload_id = (await store.uploads.start(name)).upload_id
    gate, straggler = await waiting_patch(other, name, upload_id, evil)
    await store.uploads.append(name, upload_id, one_chunk(good))
    return upload_id, gate, straggler


async def holding_with_swap(store: Registry, other: Registry, name: str, good: bytes, evil: bytes) -> tuple[str, Hook]:
    """A session holding `good`, and the hook that deletes it and lets a straggling PATCH (through `other`) store
    `evil` at offset 0 (see `straggling_patch`): the session's id and that hook."""
    upload_id = (await store.uploads.start(name)).upload_id
    _, swap = await straggling_patch(other, name, upload_id, evil)
    await store.uploads.append(name, upload_id, one_chunk(good))
    return upload_id, swap


@pytest.fixture(params=[True, False], ids=["linking", "copying"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[tuple[HookedBackend, Registry, Registry]]:
    backend = HookedBackend(links=request.param)
    one, two = Registry(backend), Registry(backend)
    for store in (one, two):
        await store.start()
    yield backend, one, two
    for store in (one, two):
        await store.aclose()


@pytest.mark.parametrize("same_process", [True, False], ids=["running-hash", "checkpoint"])
async def test_a_chunk_replaced_while_several_are_copied_is_not_published(
    stores: tuple[HookedBackend, Registry, Registry], same_process: bool
) -> None:
    backend, one, two = stores
    name, first, second, evil = "team/app", b"A" * 4096, b"a" * 4096, b"EVIL" * 3000
    upload_id = (await one.uploads.start(name)).upload_id
    await one.uploads.append(name, upload_id, one_chunk(first))
    _, swap = await straggling_patch(two, name, upload_id, evil)  # will store at offset 4096
    await one.uploads.append(name, upload_id, one_chunk(second))  # takes offset 4096 first
    backend.before_read[paths.upload_chunk(name, upload_id, len(first))] = swap
    claimed = digest_of(first + second)
    await complete_or_refuse(one if same_process else two, name, upload_id, claimed)
    await blob_holds_its_digest_or_nothing(backend, claimed)


async def test_a_single_chunk_replaced_before_it_is_published_is_refused(
    stores: tuple[HookedBackend, Registry, Registry],
) -> None:
    backend, one, two = stores
    name, good, evil = "team/app", b"G" * 4096, b"EVIL" * 3000
    upload_id = (await one.uploads.start(name)).upload_id
    _, swap = await straggling_patch(two, name, upload_id, evil)  # will store at offset 0
    await one.uploads.append(name, upload_id, one_chunk(good))
    backend.before_move = swap
    claimed = digest_of(good)
    with pytest.raises(RegistryError) as refused:
        await one.uploads.complete(name, upload_id, claimed)
    assert refused.value.code is ErrorCode.BLOB_UPLOAD_UNKNOWN  # the session was deleted under the PUT
    await blob_holds_its_digest_or_nothing(backend, claimed)
    assert not await backend.exists(paths.blob_data(claimed))


async def test_a_session_deleted_under_a_single_chunk_move_still_publishes_matching_bytes(
    stores: tuple[HookedBackend, Registry, Registry],
) -> None:
    """The session gone but the chunk the PUT checked still the one moved: hashed again, and kept."""
    backend, one, _ = stores
    name, good = "team/app", b"G" * 4096
    upload_id = await session_holding(one, name, good)

    async def delete_start_record() -> None:
        await backend.delete(paths.upload_started_at(name, upload_id))

    backend.before_move = delete_start_record
    assert (await one.uploads.complete(name, upload_id, digest_of(good))).digest == digest_of(good)
    assert await backend.get_content(paths.blob_data(digest_of(good))) == good


async def test_two_completions_under_two_algorithms_never_move_two_contents(
    stores: tuple[HookedBackend, Registry, Registry],
) -> None:
    """Two completions of one session under two algorithms' digests (two blobs), a straggling PATCH between them.
    The session's own completion publishes its chunk without a copy (and the chunk keeps its name); the other one
    copies and hashes. Neither blob may hold `evil`."""
    backend, one, two = stores
    name, good, evil = "team/app", b"G" * 4096, b"E" * 4096  # same length: the running hash covers the total
    upload_id, gate, straggler = await holding_with_straggler(one, two, name, good, evil)  # a sha256 session
    sha256, sha512 = digest_of(good), Digest.parse("sha512:" + hashlib.sha512(good).hexdigest())
    # The sha256 completion has checked its digest, and moves later.
    waiting, go_on, wait_before_moving = pause()

    backend.before_move_to[paths.blob_data(sha256)] = wait_before_moving
    first = asyncio.create_task(one.uploads.complete(name, upload_id, sha256))
    await waiting.wait()

    async def straggler_then_first() -> None:  # the session not yet cancelled: the chunk's name is still taken
        gate.set()
        with contextlib.suppress(RegistryError):
            await straggler
        go_on.set()
        with contextlib.suppress(RegistryError):
            await first

    # Were the sha512 completion to move the chunk (it copies), the straggler and the first completion would run
    # right after that move.
    backend.after_move_to[paths.blob_data(sha512)] = straggler_then_first
    await complete_or_refuse(two, name, upload_id, sha512)
    if not go_on.is_set():
        await straggler_then_first()  # the straggler finds offset 0 taken (or the session gone): stores nothing
    for digest in (sha256, sha512):
        stored = None
        with contextlib.suppress(Exception):
            stored = await backend.get_content(paths.blob_data(digest))
        assert stored in (None, good), f"{digest} holds other bytes"


async def test_a_completion_that_fails_for_a_while_can_be_retried(
    stores: tuple[HookedBackend, Registry, Registry],
) -> None:
    backend, one, _ = stores
    name, good = "team/app", b"G" * 4096
    upload_id = await session_holding(one, name, good)

    backend.before_move = unavailable
    with pytest.raises(StorageUnavailable):
        await one.uploads.complete(name, upload_id, digest_of(good))
    assert (await one.uploads.complete(name, upload_id, digest_of(good))).digest == digest_of(good)


@pytest.mark.parametrize("interruption", ["storage-error", "cancelled"])
async def test_a_check_interrupted_leaves_nothing_unverified(
    stores: tuple[HookedBackend, Registry, Registry], interruption: str
) -> None:
    backend, one, two = stores
    name, good, evil = "team/app", b"G" * 4096, b"EVIL" * 3000
    upload_id, swap = await holding_with_swap(one, two, name, good, evil)
    claimed = digest_of(good)

    async def interrupt() -> None:
        if interruption == "storage-error":
            raise StorageUnavailable("a read failed")
        raise asyncio.CancelledError

    if backend.links:
        # Linked under the completion's private name, then the session found deleted: hashed there.
        backend.before_move = swap
        backend.before_read[paths.upload_publishing(name, upload_id, "")] = interrupt
    else:
        # Deleted before the completion marks it: hashed as the chunk is copied.
        backend.before_put[paths.upload_publishing(name, upload_id, "")] = swap
        backend.before_read[paths.upload_chunk(name, upload_id, 0)] = interrupt
    with pytest.raises((StorageUnavailable, asyncio.CancelledError)):
        await one.uploads.complete(name, upload_id, claimed)
    assert not await backend.exists(paths.blob_data(claimed))


async def test_a_repository_deleted_in_batches_under_a_completion_publishes_nothing_unverified(
    stores: tuple[HookedBackend, Registry, Registry],
) -> None:
    """A repository's deletion removes each upload session's start record first: deleted in key order and in
    batches (S3), a session's chunks could otherwise go a batch before its start record, and a chunk stored again
    meanwhile by a straggling PATCH would pass for the one the completing request checked."""
    backend, one, two = stores
    backend.delete_batch = 1000
    name, good, evil = "team/app", b"G" * 4096, b"EVIL" * 3000
    seed = (await one.uploads.start(name)).upload_id  # a blob, so that the repository exists
    await one.uploads.append(name, seed, one_chunk(b"seed"))
    await one.uploads.complete(name, seed, digest_of(b"seed"))
    ids = sorted([(await one.uploads.start(name)).upload_id for _ in range(1100)])
    target = ids[999]  # 999 sessions sort before it: a batch ends with its chunk, the next holds its start record
    gate, straggler = await waiting_patch(two, name, target, evil)
    await one.uploads.append(name, target, one_chunk(good))
    paused, resume = asyncio.Event(), asyncio.Event()

    async def after_first_batch() -> None:  # the target's chunk is gone, its start record is the next batch's
        gate.set()
        with contextlib.suppress(RegistryError):
            await straggler  # stores `evil` under the freed chunk name (where the session still looks alive)
        paused.set()
        await resume.wait()

    backend.between_batches[paths.uploads_dir(name)] = after_first_batch
    deletion: asyncio.Task[object] | None = None

    async def delete_the_repository() -> None:
        nonlocal deletion
        deletion = asyncio.create_task(one.repositories.delete(name))
        await asyncio.wait([asyncio.ensure_future(paused.wait()), deletion], return_when=asyncio.FIRST_COMPLETED)

    claimed = digest_of(good)
    backend.before_move_to[paths.blob_data(claimed)] = delete_the_repository
    await complete_or_refuse(one, name, target, claimed)
    resume.set()
    assert deletion is not None
    await deletion
    await blob_holds_its_digest_or_nothing(backend, claimed)


async def test_unverified_bytes_are_never_at_the_blob(
    stores: tuple[HookedBackend, Registry, Registry],
) -> None:
    """A single chunk is linked (the filesystem) or copied (S3) under a name private to the completion, and reaches
    the blob only once the session is seen alive after that, or its bytes hashed: the chunk a straggling PATCH
    stored after the session's deletion is never at the blob's path, not even for a moment (an honest push of the
    same content would deduplicate against it, and a pull would get it). Until 2026-12-07 a copying store published
    first and took back after: `seen` held the straggler's bytes."""
    backend, one, two = stores
    name, good, evil = "team/app", b"G" * 4096, b"EVIL" * 3000
    upload_id, swap = await holding_with_swap(one, two, name, good, evil)
    claimed = digest_of(good)
    seen: list[bytes] = []

    async def look() -> None:
        seen.append(await backend.get_content(paths.blob_data(claimed)))

    backend.before_move = swap
    backend.after_move_to[paths.blob_data(claimed)] = look
    with pytest.raises(RegistryError) as refused:
        await one.uploads.complete(name, upload_id, claimed)
    assert refused.value.code is ErrorCode.BLOB_UPLOAD_UNKNOWN  # the session was deleted under the PUT
    assert not await backend.exists(paths.blob_data(claimed))
    assert seen == []


async def test_a_completion_that_fails_after_publishing_began_is_completed_by_a_retry(
    stores: tuple[HookedBackend, Registry, Registry],
) -> None:
    """Storage failing as the chunk goes into the blob: the session still holds (and reports) every byte, and a
    retried PUT publishes them without the client sending anything again."""
    backend, one, _ = stores
    name, good = "team/app", b"G" * 4096
    upload_id = await session_holding(one, name, good)

    backend.before_move_to[paths.blob_data(digest_of(good))] = unavailable
    with pytest.raises(StorageUnavailable):
        await one.uploads.complete(name, upload_id, digest_of(good))
    assert (await one.uploads.status(name, upload_id)).offset == len(good)
    assert (await one.uploads.complete(name, upload_id, digest_of(good))).digest == digest_of(good)
    assert await backend.get_content(paths.blob_data(digest_of(good))) == good
    assert not await backend.exists(paths.upload_dir(name, upload_id))


@pytest.mark.parametrize("deletion", ["upload", "repository"])
async def test_a_session_deleted_between_two_completions_publishes_nothing_unverified(
    stores: tuple[HookedBackend, Registry, Registry], deletion: str
) -> None:
    """(Found by a review of a first take on linking stores, which staged the chunk under one shared name.) Worker
    one holds the running hash of `good`; one of its completions (C1) is on its way to the blob while a second
    (C3) is slow to list the chunks. The session is deleted on worker two (which leaves worker one's running hash
    in place) and a straggling PATCH stores `evil`, as long as `good`, under the freed chunk name. C3 then lists
    `evil`, which the stale running hash vouches for; whatever C1 and C3 publish must hash to the digest."""
    backend, one, two = stores
    name, good, evil = "team/app", b"G" * 4096, b"E" * 4096
    if deletion == "repository":  # a blob, so that the repository exists
        await one.uploads.complete(name, await session_holding(one, name, b"seed"), digest_of(b"seed"))
    upload_id, gate, straggler = await holding_with_straggler(one, two, name, good, evil)
    claimed = digest_of(good)
    c3_waits, c3_go, hold_c3 = pause()
    backend.before_list[paths.upload_chunks_dir(name, upload_id)] = hold_c3
    c3 = asyncio.create_task(one.uploads.complete(name, upload_id, claimed))
    await c3_waits.wait()
    c1_waits, c1_go, hold_c1 = pause()
    backend.before_move_to[paths.blob_data(claimed)] = hold_c1
    c1 = asyncio.create_task(one.uploads.complete(name, upload_id, claimed))
    await c1_waits.wait()
    if deletion == "repository":
        await two.repositories.delete(name)
    else:
        await two.uploads.delete(name, upload_id)
    gate.set()
    with contextlib.suppress(RegistryError):  # copying: the straggler finds offset 0 taken and the session gone
        await straggler
    # Linking: the deletion freed the chunk name, which the straggler took. Copying: C1 marked the session, so its
    # chunk stayed for C1's copy and the straggler found offset 0 taken.
    assert await backend.get_content(paths.upload_chunk(name, upload_id, 0)) == (evil if backend.links else good)

    async def let_c1_move() -> None:  # before C3 reads what it took: C1's move to the blob goes first
        c1_go.set()
        with contextlib.suppress(RegistryError):
            await c1

    # C3 finds the session gone after it listed the chunks: it hashes its private name (linking) or the chunk
    # (copying).
    c3_reads = paths.upload_publishing(name, upload_id, "") if backend.links else paths.upload_chunk(name, upload_id, 0)
    backend.before_read[c3_reads] = let_c1_move
    c3_go.set()
    with contextlib.suppress(RegistryError):
        await c3
    if not c1.done():
        await let_c1_move()
    await blob_holds_its_digest_or_nothing(backend, claimed)
    if not backend.links:  # whichever completion ended last freed the chunks the deletion had left to C1
        assert [info.path async for info in backend.walk(paths.upload_dir(name, upload_id))] == []


async def test_two_completions_of_one_session_on_the_filesystem_both_succeed(tmp_path: Path) -> None:
    """A client (or a proxy) sending the PUT again after a timeout, while the first still runs: one publishes, the
    other finds the blob there (a dedup hit); neither destroys the upload under the other."""
    store = Registry(FilesystemBackend(tmp_path, fsync=False))
    await store.start()
    try:
        name = "team/app"
        for round_ in range(20):
            good = f"G{round_}".encode() * 2048
            upload_id = await session_holding(store, name, good)
            results = await asyncio.gather(
                *(store.uploads.complete(name, upload_id, digest_of(good)) for _ in range(2)), return_exceptions=True
            )
            published = [r for r in results if not isinstance(r, BaseException)]
            assert published, results
            for r in results:
                assert not isinstance(r, BaseException) or (
                    isinstance(r, RegistryError) and r.code is ErrorCode.BLOB_UPLOAD_UNKNOWN
                ), results
            assert await store.backend.get_content(paths.blob_data(digest_of(good))) == good
    finally:
        await store.aclose()


async def test_a_chunk_keeps_its_name_while_a_completion_publishes_it(
    stores: tuple[HookedBackend, Registry, Registry],
) -> None:
    """No deletion at all: a completion (C1) is on its way to the blob when a straggling PATCH (which looked at the
    session before the chunk was stored) tries the chunk's name with `evil`, as long as `good`, and a second
    completion (C3) with the running hash of `good` lists the chunks after that. Were the chunk's name freed by C1
    taking the chunk, C3 would publish `evil` under the digest of `good` while the session is alive."""
    backend, one, two = stores
    name, good, evil = "team/app", b"G" * 4096, b"E" * 4096
    upload_id, gate, straggler = await holding_with_straggler(one, two, name, good, evil)
    claimed = digest_of(good)
    c1_waits, c1_go, hold_c1 = pause()
    backend.before_move_to[paths.blob_data(claimed)] = hold_c1
    c1 = asyncio.create_task(one.uploads.complete(name, upload_id, claimed))
    await c1_waits.wait()
    gate.set()
    with contextlib.suppress(RegistryError):
        await straggler
    c3 = asyncio.create_task(one.uploads.complete(name, upload_id, claimed))
    for _ in range(50):  # C3 as far as it goes while C1 waits
        await asyncio.sleep(0)
    c1_go.set()
    for task in (c1, c3):
        with contextlib.suppress(RegistryError):
            await task
    await blob_holds_its_digest_or_nothing(backend, claimed)


@pytest.mark.parametrize("same_worker", [True, False], ids=["same-worker", "other-worker"])
async def test_a_put_sent_again_while_the_first_completes_is_told_the_upload_is_unknown(
    stores: tuple[HookedBackend, Registry, Registry], same_worker: bool
) -> None:
    """(Found by a review.) The second PUT read the start record, then the first completed and deleted the session:
    the second lists no chunks. It answers BLOB_UPLOAD_UNKNOWN, not DIGEST_INVALID for the empty upload."""
    backend, one, two = stores
    name, good = "team/app", b"G" * 4096
    upload_id = await session_holding(one, name, good)
    waiting, go_on, hold = pause()
    backend.before_list[paths.upload_chunks_dir(name, upload_id)] = hold
    second = asyncio.create_task((one if same_worker else two).uploads.complete(name, upload_id, digest_of(good)))
    await waiting.wait()
    assert (await one.uploads.complete(name, upload_id, digest_of(good))).digest == digest_of(good)
    go_on.set()
    with pytest.raises(RegistryError) as refused:
        await second
    assert refused.value.code is ErrorCode.BLOB_UPLOAD_UNKNOWN, refused.value


async def test_a_completion_cancelled_during_its_link_leaves_no_private_name(tmp_path: Path) -> None:
    """(Found by a review.) A request cancelled while the link to its private name runs on a thread: the name is
    deleted once the link is done, not before (which would leave it behind until the session goes)."""
    backend = FilesystemBackend(tmp_path, fsync=False)
    store = Registry(backend)
    await store.start()
    try:
        name, good = "team/app", b"G" * 4096
        upload_id = await session_holding(store, name, good)
        real, started, release, linked = backend._link_sync, threading.Event(), threading.Event(), threading.Event()

        def slow_link(src: str, dst: str) -> bool:
            started.set()
            release.wait(5)
            try:
                return real(src, dst)
            finally:
                linked.set()

        backend._link_sync = slow_link  # type: ignore[method-assign]
        task = asyncio.create_task(store.uploads.complete(name, upload_id, digest_of(good)))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        release.set()
        # Looked at once the link is made (before, under load, the name was not there yet: the loop below ended at
        # once and the assertion then found the name the link had just made, not yet deleted).
        assert await asyncio.to_thread(linked.wait, 10)
        publishing = tmp_path / paths.upload_publishing(name, upload_id, "x").rsplit("/", 1)[0]
        for _ in range(500):  # the background deletion after the link's thread returns (CI's load: up to 10 s)
            if not publishing.exists() or not os.listdir(publishing):
                break
            await asyncio.sleep(0.02)
        assert not publishing.exists() or os.listdir(publishing) == []
        assert (await store.uploads.status(name, upload_id)).offset == len(good)  # the upload can still complete
        assert (await store.uploads.complete(name, upload_id, digest_of(good))).digest == digest_of(good)
    finally:
        await store.aclose()


class ListHooked(HookedBackend):
    """Calls a hook right after a listing of the chosen directory."""

    def __init__(self, links: bool) -> None:
        super().__init__(links=links)
        self.after_list: dict[str, Hook] = {}

    async def list(self, path: str) -> list[FileInfo]:
        found = await super().list(path)
        hook = self.after_list.pop(path, None)
        if hook is not None:
            await hook()
        return found


@pytest.mark.parametrize("links", [True, False], ids=["linking", "copying"])
async def test_a_session_started_while_its_repository_is_deleted_publishes_nothing_unverified(links: bool) -> None:
    """(Found by a review of 167619f.) A repository's deletion lists its upload sessions and ends each, start record
    first. A session started after that listing used to go with the deletion of the whole upload area: deleted in
    key order and in batches (S3), its chunk went a batch before its start record, and a plain PATCH meanwhile
    stored other bytes under the freed chunk name while the session still looked alive; a completion that had
    checked its running hash then published them. Now such a session is left whole (its push came after the
    deletion began)."""
    backend = ListHooked(links)
    backend.delete_batch = 1  # an attacker places the batch boundary with other sessions' keys
    one, two = Registry(backend), Registry(backend)
    for store in (one, two):
        await store.start()
    name, good, evil = "team/app", b"G" * 4096, b"EVIL" * 1024
    await one.uploads.complete(name, await session_holding(one, name, b"seed"), digest_of(b"seed"))
    await session_holding(one, name, b"idle")  # a session the deletion lists and ends
    claimed = digest_of(good)
    late: dict[str, Any] = {}
    reached, go_on, hold = pause()

    async def after_the_sessions_are_listed() -> None:
        upload_id = await session_holding(one, name, good)  # one's running hash covers `good`
        late["id"] = upload_id
        backend.before_move = hold  # the completion's link or copy to its private name waits
        late["completion"] = asyncio.create_task(one.uploads.complete(name, upload_id, claimed))
        await reached.wait()  # it has listed the chunk and checked the running hash

    async def between_batches() -> None:  # the late session's chunk gone, its start record in a later batch
        if await backend.exists(paths.upload_chunk(name, late["id"], 0)):
            backend.between_batches[paths.uploads_dir(name)] = between_batches  # not yet: after the next batch
            return
        with contextlib.suppress(RegistryError):
            await two.uploads.append(name, late["id"], one_chunk(evil))
        go_on.set()
        with contextlib.suppress(RegistryError):
            await late["completion"]

    backend.after_list[paths.uploads_dir(name)] = after_the_sessions_are_listed
    backend.between_batches[paths.uploads_dir(name)] = between_batches
    await one.repositories.delete(name)
    go_on.set()
    with contextlib.suppress(RegistryError):
        await late["completion"]
    await blob_holds_its_digest_or_nothing(backend, claimed)
    for store in (one, two):
        await store.aclose()


class CheckThenWrite(HookedBackend):
    """A store whose exclusive writes are not atomic (S3 without conditional writes): it says so."""

    @property
    def exclusive_writes(self) -> bool:
        return False


@pytest.mark.parametrize("links", [True, False], ids=["linking", "copying"])
async def test_where_exclusive_writes_are_not_atomic_a_running_hash_vouches_for_nothing(links: bool) -> None:
    """(Found by a review of 167619f.) Two PATCHes at offset 0 both pass a check-then-write: the later one's bytes
    stay under the chunk's name, and the earlier one's running hash would vouch for them. The single chunk is then
    hashed as it is copied into the blob."""
    backend = CheckThenWrite(links=links)
    store = Registry(backend)
    await store.start()
    name, good, evil = "team/app", b"G" * 4096, b"EVIL" * 1024
    upload_id = await session_holding(store, name, good)
    await backend.put_content(paths.upload_chunk(name, upload_id, 0), evil)  # the other PATCH's write, later
    with pytest.raises(RegistryError) as refused:
        await store.uploads.complete(name, upload_id, digest_of(good))
    assert refused.value.code is ErrorCode.DIGEST_INVALID
    assert not await backend.exists(paths.blob_data(digest_of(good)))
    await store.aclose()


@pytest.mark.parametrize("session", ["deleted", "alive"])
async def test_a_store_refusing_the_publish_says_the_upload_is_unknown_once_the_session_went(
    session: str, caplog: pytest.LogCaptureFixture
) -> None:
    """(Found by a review of 167619f.) S3 refuses a part copy beyond its source's size (a chunk replaced by a
    shorter one, its session deleted meanwhile) with an error of its own: BLOB_UPLOAD_UNKNOWN when the session is
    gone, never a server error, and what the store said goes to the log; the error as it is while the session
    lives."""
    caplog.set_level(logging.INFO, logger="moorage")
    backend = HookedBackend(links=False)
    store = Registry(backend)
    await store.start()
    name, good = "team/app", b"G" * 4096
    upload_id = await session_holding(store, name, good)

    async def refused() -> None:
        if session == "deleted":
            await store.uploads.delete(name, upload_id)
        raise StorageError("s3 upload_part_copy: 400: InvalidRequest")

    backend.before_move = refused
    if session == "deleted":
        with pytest.raises(RegistryError) as answer:
            await store.uploads.complete(name, upload_id, digest_of(good))
        assert answer.value.code is ErrorCode.BLOB_UPLOAD_UNKNOWN
        assert "400: InvalidRequest" in caplog.text
    else:
        with pytest.raises(StorageError):
            await store.uploads.complete(name, upload_id, digest_of(good))
        assert (await store.uploads.complete(name, upload_id, digest_of(good))).digest == digest_of(good)
    assert await backend.exists(paths.blob_data(digest_of(good))) is (session == "alive")
    await store.aclose()


@pytest.mark.parametrize("links", [True, False], ids=["linking", "copying"])
async def test_closing_waits_for_the_private_name_of_a_cancelled_completion_to_go(links: bool) -> None:
    """A completion cancelled while its link or copy runs leaves the deletion of its private name (linking) or
    marker (copying) to the background, once that link or copy is done; closing the store waits for it (else it
    waits for GC's purge). A copying store's copy was into the blob: it completes, with the session's bytes."""
    backend = HookedBackend(links=links)
    store = Registry(backend)
    await store.start()
    name, good = "team/app", b"G" * 4096
    upload_id = await session_holding(store, name, good)
    placing, release = asyncio.Event(), asyncio.Event()

    async def slow_placing() -> None:
        placing.set()
        await release.wait()

    backend.before_move = slow_placing
    completion = asyncio.create_task(store.uploads.complete(name, upload_id, digest_of(good)))
    await placing.wait()
    completion.cancel()
    with pytest.raises(asyncio.CancelledError):
        await completion
    asyncio.get_running_loop().call_later(0.05, release.set)
    await store.aclose()
    assert release.is_set()  # closing waited for the placing, then for the private name's deletion
    assert [path async for path in backend.walk(paths.upload_dir(name, upload_id)) if "/publishing/" in path.path] == []
    if links:
        assert not await backend.exists(paths.blob_data(digest_of(good)))
    else:
        assert await backend.get_content(paths.blob_data(digest_of(good))) == good
