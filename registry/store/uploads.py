"""Resumable upload sessions that any worker process or replica can continue.

A session lives only in storage: `_uploads/<id>/startedat` plus one object per received chunk, named by its
byte offset and created exclusively, so a replayed or racing chunk loses (416) instead of corrupting the
upload. The running hash of the common case (one process sees the whole upload) is kept in memory; a
process without it re-reads the chunks at commit. Commit verifies the digest before the blob becomes
visible, then links it into the repository and deletes the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, Coroutine
from dataclasses import dataclass
from typing import Any

from registry import paths
from registry.digests import DEFAULT_ALGORITHM, Digest, Hasher, new_hasher
from registry.errors import ErrorCode, RegistryError
from registry.store.admission import Admissions
from registry.store.blobs import BlobInfo, BlobStore
from registry.store.events import Event, EventBus, EventType
from registry.store.streaming import copy_stream, hash_into
from storage_backends import PathNotFound, StorageBackend, StorageError, StorageFull, StorageUnavailable

_UPLOAD_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
HASHER_CACHE_SIZE = 1024
logger = logging.getLogger("moorage")


@dataclass(frozen=True, slots=True)
class UploadStatus:
    name: str
    upload_id: str
    offset: int
    started_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Chunk:
    offset: int
    size: int
    path: str


def is_upload_id(text: str) -> bool:
    """Whether `text` has the form of the ids this registry gives upload sessions."""
    return _UPLOAD_ID_RE.match(text) is not None


def upload_unknown(upload_id: str) -> RegistryError:
    return RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN, detail={"uuid": upload_id})


def range_header(offset: int) -> str:
    # Distribution's convention: an empty upload reports "0-0".
    return f"0-{max(offset - 1, 0)}"


def out_of_order(upload_id: str, offset: int, requested: int | None) -> RegistryError:
    return RegistryError(
        ErrorCode.RANGE_INVALID,
        detail={"uuid": upload_id, "expected_offset": offset, "requested_offset": requested},
        message="chunk out of order: the upload continues at the offset in the Range header",
        headers={"Range": range_header(offset)},
    )


class _HasherCache:
    """upload id -> (offset the hash covers, algorithm, hasher); bounded, least recently used goes first."""

    def __init__(self, size: int = HASHER_CACHE_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[int, str, Hasher]] = OrderedDict()

    def take(self, upload_id: str, offset: int) -> tuple[str, Hasher] | None:
        entry = self._entries.get(upload_id)
        if entry is None or entry[0] != offset:
            return None
        return entry[1], entry[2].copy()

    def latest(self, upload_id: str) -> tuple[int, str, Hasher] | None:
        entry = self._entries.get(upload_id)
        return None if entry is None else (entry[0], entry[1], entry[2].copy())

    def put(self, upload_id: str, offset: int, algorithm: str, hasher: Hasher) -> None:
        self._entries[upload_id] = (offset, algorithm, hasher)
        self._entries.move_to_end(upload_id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        self._entries.pop(upload_id, None)


MARKER_REFRESH_SECONDS = 600.0
"""How often a completion copying a chunk (S3) rewrites its marker while the copy runs."""
MARKER_DEAD_SECONDS = 3600.0
"""A marker older than this was left by a completion that died mid-copy (a live one rewrites it far more often)."""

PRESENT_PROBE_BYTES = 16 * 1024 * 1024
"""Where storage copies (S3), a verified single chunk at least this large is published only after a look for the
blob: a layer already in the registry (pushed to another repository, whose blobs clients cannot see from theirs) is
then linked without a server-side copy of all its bytes. Below this size the copy costs about what the look costs when
the blob is absent (on S3 a HEAD and a listing), and most small blobs (configs) are new."""

SPENT_SESSIONS_LIMIT = 1024
"""At most this many sessions' spent markers (see UploadStore._unmark) are remembered by a process."""

CLOSE_WAIT_SECONDS = 10.0
"""How long closing waits for private names and markers deleted in the background (after the link or copy of a
cancelled completion)."""


class UploadStore:
    def __init__(
        self, backend: StorageBackend, blobs: BlobStore, events: EventBus, admissions: Admissions | None = None
    ) -> None:
        self.backend = backend
        self.blobs = blobs
        self.events = events
        self.admissions = admissions if admissions is not None else Admissions()
        self._hashers = _HasherCache()
        self._dropping: set[asyncio.Future[None]] = set()  # names deleted once their link or copy is done
        # Markers of this process's completions, done, whose delete failed, by session directory: this process's
        # deletions pass them by. Forgotten once the session is deleted here; at most SPENT_SESSIONS_LIMIT sessions
        # (a session deleted elsewhere, or forgotten, keeps its files until GC's purge, as any marked session does).
        self._spent_markers: OrderedDict[str, set[str]] = OrderedDict()

    async def start(self, name: str, algorithm: str = DEFAULT_ALGORITHM) -> UploadStatus:
        new_hasher(algorithm)  # rejects unsupported algorithms before anything is stored
        if self.admissions:
            await self.admissions.require_room(name, 0)  # a repository with no room left takes no upload
        upload_id = str(uuid.uuid4())
        started_at = dt.datetime.now(dt.UTC)
        await self.backend.put_content(paths.upload_started_at(name, upload_id), started_at.isoformat().encode())
        self._hashers.put(upload_id, 0, algorithm, new_hasher(algorithm))
        return UploadStatus(name, upload_id, 0, started_at)

    async def status(self, name: str, upload_id: str) -> UploadStatus:
        started_at = await self._started_at(name, upload_id)
        chunks = await self._chunks(name, upload_id)
        offset = chunks[-1].offset + chunks[-1].size if chunks else 0
        return UploadStatus(name, upload_id, offset, started_at)

    async def _started_at(self, name: str, upload_id: str) -> dt.datetime:
        if not is_upload_id(upload_id):
            raise upload_unknown(upload_id)
        try:
            raw = await self.backend.get_content(paths.upload_started_at(name, upload_id))
        except PathNotFound:
            raise upload_unknown(upload_id) from None
        try:
            return dt.datetime.fromisoformat(raw.decode().strip())
        except ValueError:
            return dt.datetime.fromtimestamp(0, dt.UTC)

    async def _chunks(self, name: str, upload_id: str) -> list[Chunk]:
        try:
            entries = await self.backend.list(paths.upload_chunks_dir(name, upload_id))
        except PathNotFound:
            return []
        chunks = [Chunk(paths.parse_chunk_offset(e.path), e.size, e.path) for e in entries if not e.is_dir]
        expected = 0
        for chunk in chunks:
            if chunk.offset != expected:
                raise RegistryError(
                    ErrorCode.BLOB_UPLOAD_INVALID,
                    detail={"uuid": upload_id},
                    message="upload chunks are not contiguous; restart the upload",
                )
            expected += chunk.size
        return chunks

    async def append(
        self,
        name: str,
        upload_id: str,
        body: AsyncIterable[bytes],
        start: int | None = None,
        length: int | None = None,
        algorithm: str = DEFAULT_ALGORITHM,
    ) -> UploadStatus:
        """Store `body` as the next chunk. `start` (from Content-Range) must equal the current offset."""
        status = await self.status(name, upload_id)
        offset = status.offset
        if start is not None and start != offset:
            raise out_of_order(upload_id, offset, start)
        if self.admissions:
            # Refused before a byte is stored when the length says it will not fit; else once it passes the room.
            if length is not None:
                await self.admissions.require_room(name, offset + length)
            body = await self.admissions.bounded(name, offset, body)
        cached = self._hashers.take(upload_id, offset)
        if cached is None and offset == 0:
            cached = (algorithm, new_hasher(algorithm))
        writer = await self.backend.writer(paths.upload_chunk(name, upload_id, offset), exclusive=True)
        async with writer:
            size = await copy_stream(body, writer, cached[1] if cached else None)
            if length is not None and size != length:
                raise RegistryError(ErrorCode.SIZE_INVALID, detail={"expected": length, "received": size})
            if size == 0:
                return status
            if not await writer.commit():
                # Another request stored a chunk at this offset first.
                self._hashers.drop(upload_id)
                current = await self.status(name, upload_id)
                raise out_of_order(upload_id, current.offset, offset)
        if cached:
            algorithm, hasher = cached
            self._hashers.put(upload_id, offset + size, algorithm, hasher)
            # hashlib state cannot be saved, but its digest can: whoever completes the upload, in any
            # process, need not re-read the chunks when the client's digest matches this checkpoint.
            await self.backend.put_content(
                paths.upload_digest_checkpoint(name, upload_id, algorithm, offset + size),
                hasher.hexdigest().encode(),
            )
        return UploadStatus(name, upload_id, offset + size, status.started_at)

    async def complete(self, name: str, upload_id: str, digest: Digest) -> BlobInfo:
        """Verify the received bytes against `digest`, publish the blob and link it into `name`."""
        await self._started_at(name, upload_id)
        chunks = await self._chunks(name, upload_id)
        total = sum(c.size for c in chunks)
        admitted = None
        if self.admissions:
            try:
                admitted = await self.admissions.admit(name, digest, total)  # before the blob is published
            except RegistryError as e:
                if e.code is ErrorCode.DENIED:  # refused for good; a 503 leaves the session for a retry
                    await self.cancel(name, upload_id)
                raise
        published = False
        try:
            created = await self._publish_answered(name, upload_id, digest, chunks, total)
            published = True
            # A dedup hit on an old blob: its age is what GC's grace period reads, and a manifest PUT follows.
            if not created and await self.blobs.present(digest, touch=True) is None:
                # GC deleted that blob for good since it was found (past its settle period): the client's bytes,
                # still in the session, are published after all.
                created = await self._publish_answered(name, upload_id, digest, chunks, total)
                if not created and await self.blobs.present(digest, touch=True) is None:
                    raise StorageUnavailable(f"{digest} was collected again while its upload completed; retry")
            # A dedup hit is linked only if the session outlived the completion: one deleted meanwhile (a DELETE, its
            # repository deleted by another replica) must not get a layer link written back into what was deleted.
            # Unless the repository links the blob already: the session's other completion (a client's retry)
            # linked it, then ended the session. (A blob this completion published is linked even so, as before: a
            # DELETE or GC's purge during a long copy still ends in a 201; a repository deletion during the copy
            # leaves that one link, which a check here, one more request per upload, would close.)
            if (
                not created
                and not await self.backend.exists(paths.upload_started_at(name, upload_id))
                and not await self.blobs.is_linked(name, digest)
            ):
                raise upload_unknown(upload_id)
            await self.blobs.link(name, digest)
        except BaseException:
            if published and not self.backend.links:
                # The session's cancel below will not run: a deletion the marker held off is finished here.
                self._in_background(self._finish_deletion(name, upload_id))
            if admitted is not None:
                await admitted.release()  # not stored (or not linked) after all: not counted either
            raise
        await self.cancel(name, upload_id)
        self.events.emit(Event(EventType.BLOB_PUSHED, name, str(digest), size=total, deduplicated=not created))
        return BlobInfo(digest, total)

    async def _publish_answered(
        self, name: str, upload_id: str, digest: Digest, chunks: list[Chunk], total: int
    ) -> bool:
        """`_publish`, its failures answered as the client must hear them."""
        try:
            return await self._publish(name, upload_id, digest, chunks, total)
        except PathNotFound:
            # A concurrent completion of the same session took the chunks first.
            raise upload_unknown(upload_id) from None
        except RegistryError:
            # The session gone since it was read (another PUT of it completed, a DELETE): what was listed of it
            # (nothing, part of its chunks) says nothing of the client's bytes.
            if not await self.backend.exists(paths.upload_started_at(name, upload_id)):
                raise upload_unknown(upload_id) from None
            await self.cancel(name, upload_id)
            raise
        except (StorageUnavailable, StorageFull):
            raise  # a 503 or a 507: the session stays for a retry
        except StorageError as e:
            # Another refusal of the store (a copy of parts of a chunk replaced by a shorter one, its session
            # deleted meanwhile, is refused as out of range): not a server error when the session went.
            if not await self.backend.exists(paths.upload_started_at(name, upload_id)):
                logger.info("uploads: %s/%s went while it completed; the store said: %s", name, upload_id, e)
                raise upload_unknown(upload_id) from None
            raise

    async def _publish(self, name: str, upload_id: str, digest: Digest, chunks: list[Chunk], total: int) -> bool:
        """Make the verified bytes the blob; False when the blob already existed (ours is dropped).

        A chunk's name is taken once, exclusively, and freed only when the session is deleted (no completion moves
        a chunk out); but a PATCH that looked at the session before the deletion (a DELETE, a PUT that failed and
        cancelled it, a repository deletion) can still store a chunk under the same name after it, with other bytes.
        So what is known of the chunks (a running hash, a checkpoint) vouches for them only while the session lives:
        - a blob already there is not published again when the session's own hash vouches for the digest: several
          chunks, or one large chunk on a copying store (PRESENT_PROBE_BYTES), are linked without a copy;
        - several chunks are hashed as they are copied into the blob, whatever is known, and so is a single chunk
          the session's own hash does not vouch for;
        - a single chunk it vouches for is published without passing through here: through a name private to this
          completion where storage links (`_publish_linked`), straight from the chunk where it copies, the session
          marked so that no deletion frees the chunk meanwhile (`_publish_copied`). Nothing unverified is ever at
          the blob's path."""
        data_path = paths.blob_data(digest)
        several = len(chunks) > 1
        known = await self._known_digest(name, upload_id, digest.algorithm, total)
        if known is not None:
            self._verify(digest, known, total)  # a wrong digest is refused before anything is copied
            if not chunks:
                return await self.backend.put_content(data_path, b"", exclusive=True)
            if several:
                there = await self.blobs.present(digest) is not None
            else:  # a layer the registry holds already: linked without a server-side copy of its bytes
                there = self._worth_a_look(total) and await self.backend.exists(data_path)
            if there:
                return False  # linked only if the session outlives the completion (`complete`)
        if several or known is None or not self.backend.exclusive_writes:
            # Hashed as they are copied, whatever was known; so is a single chunk with nothing known (a digest of
            # another algorithm than the session's, a lost checkpoint), and any chunk where exclusive writes are not
            # atomic (an S3 store without conditional writes): two PATCHes racing at one offset may both store their
            # chunk there, the later one's bytes staying, which the earlier one's hash would vouch for.
            return await self._publish_hashed(upload_id, digest, chunks, total, data_path)
        # The common case: one PATCH (or monolithic PUT), hashed as it came. If the blob already existed (a dedup
        # hit), ours goes with the session.
        if self.backend.links:
            return await self._publish_linked(name, upload_id, digest, chunks[0], data_path)
        return await self._publish_copied(name, upload_id, digest, chunks[0], data_path)

    def _worth_a_look(self, size: int) -> bool:
        """Whether to look for the blob before publishing a verified single chunk of `size` bytes: where storage
        links, publishing a blob already there costs a link and its undoing; where it copies, a copy of the bytes."""
        return not self.backend.links and size >= PRESENT_PROBE_BYTES

    async def _publish_hashed(
        self, upload_id: str, digest: Digest, chunks: list[Chunk], total: int, data_path: str
    ) -> bool:
        """Copy the chunks into the blob, hashing them: the blob is created (exclusively) only if they hash right."""
        hasher = new_hasher(digest.algorithm)
        async with await self.backend.writer(data_path, exclusive=True) as writer:
            size = await copy_stream(self._read_chunks(chunks), writer, hasher)
            self._verify(digest, hasher.hexdigest(), total)
            if size != total:  # a chunk replaced since the listing: admitted and reported as `total` bytes
                raise RegistryError(
                    ErrorCode.BLOB_UPLOAD_INVALID,
                    detail={"uuid": upload_id, "listed": total, "read": size},
                    message="the upload changed while it completed; restart it",
                )
            return await writer.commit()

    async def _publish_linked(self, name: str, upload_id: str, digest: Digest, chunk: Chunk, data_path: str) -> bool:
        """Where storage links: link the chunk under a name private to this completion, then publish that name once
        the session is seen alive after the linking, or once its bytes are hashed.

        The chunk keeps its name until the session is deleted: only a deletion frees it, and a deletion removes
        the start record first (which only the POST writes). Alive after the linking therefore means the chunk
        linked was the only one ever stored under that name, the one the session's hash saw; and no one but this
        completion writes the private name, so what it then publishes is what it linked."""
        private = paths.upload_publishing(name, upload_id, uuid.uuid4().hex)
        linking = asyncio.ensure_future(self.backend.link(chunk.path, private))
        published = False
        try:
            if not await asyncio.shield(linking):
                raise AssertionError(f"{private} was taken: a random name came up twice")
            if not await self.backend.exists(paths.upload_started_at(name, upload_id)):
                await self._verify_private(upload_id, digest, private, chunk.size)
            published = await self.backend.move(private, data_path, exclusive=True)
            return published
        finally:
            if not published:  # a dedup hit, refused or failed: the private name goes (the chunk stays)
                await self._delete_when_done(linking, private)

    async def _publish_copied(self, name: str, upload_id: str, digest: Digest, chunk: Chunk, data_path: str) -> bool:
        """Where storage copies (S3): mark the session as being published from, then copy the chunk straight into
        the blob (created exclusively) if the session is seen alive after the marking; else hash it as it is copied.

        A deletion of the session removes the start record first, and frees the chunks only when it finds no live
        marker (`cancel`). Alive after the marking therefore means the chunk is the one the session's hash saw, and
        stays so: it cannot be freed, hence not replaced by a straggling PATCH, until this completion's marker goes,
        once its copy is done (the marker is rewritten while a long copy runs, so that it never looks like a dead
        completion's). One server-side copy of the layer, where a private copy checked before publishing would cost
        two. A completion that ends otherwise than published finishes a deletion its marker held off."""
        marker = paths.upload_publishing(name, upload_id, uuid.uuid4().hex)
        work: asyncio.Future[bool] = asyncio.ensure_future(self.backend.put_content(marker, b"", durable=False))
        keeping: asyncio.Future[None] | None = None
        ended = False
        try:
            await asyncio.shield(work)  # cancelled, the PUT may still land: `_unmark` waits for it
            if not await self.backend.exists(paths.upload_started_at(name, upload_id)):
                created = await self._publish_hashed(upload_id, digest, [chunk], chunk.size, data_path)
            else:
                work = asyncio.ensure_future(self.backend.copy(chunk.path, data_path, exclusive=True))
                keeping = asyncio.ensure_future(self._keep_marked(marker, work))
                created = await asyncio.shield(work)
            ended = True
            return created
        finally:
            unmarking = self._in_background(self._unmark(name, upload_id, marker, work, keeping, ended))
            # Done, the marker goes before the session's own cancel reads the markers. Cancelled during the copy,
            # it goes in the background once the copy is done (`aclose` waits for it).
            if work.done():
                await asyncio.shield(unmarking)

    async def _keep_marked(self, marker: str, copying: asyncio.Future[bool]) -> None:
        """Rewrite the marker every MARKER_REFRESH_SECONDS while the copy runs (a layer of many GiB)."""
        while True:
            done, _ = await asyncio.wait({copying}, timeout=MARKER_REFRESH_SECONDS)
            if done:
                return
            try:
                await self.backend.put_content(marker, b"", durable=False)
            except StorageError as e:
                logger.warning("uploads: could not refresh the marker %s: %s", marker, e)

    async def _unmark(
        self,
        name: str,
        upload_id: str,
        marker: str,
        work: asyncio.Future[bool],
        keeping: asyncio.Future[None] | None,
        ended: bool,
    ) -> None:
        """Once the marker's PUT, the copy and the marker's refreshes are done: delete the marker, and unless the
        completion ended (published, or found the blob there: the session's own cancel follows), finish the
        deletion of the session if one came and left the chunks to this completion."""
        for pending in (work, keeping):
            if pending is None:
                continue
            try:
                await asyncio.shield(pending)  # never cancelled from here: a refresh's PUT may be in flight
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this cleanup cancelled (the loop closing): the marker stays, dead in an hour, for GC
            except Exception:
                pass  # the copy failed: what follows is the same
        try:
            await self.backend.delete_file(marker)
        except Exception as e:
            # Done with, it holds nothing off here: the session's cancel that follows (or any deletion of it by this
            # process) deletes it with the rest. Other processes wait for it to age, then GC's purge removes it.
            session = paths.upload_dir(name, upload_id)
            self._spent_markers.setdefault(session, set()).add(marker)
            self._spent_markers.move_to_end(session)
            while len(self._spent_markers) > SPENT_SESSIONS_LIMIT:
                self._spent_markers.popitem(last=False)
            logger.warning("uploads: could not delete the marker %s: %s", marker, e)
        try:
            if not ended:
                await self._finish_deletion(name, upload_id)
        except Exception as e:  # the session then waits for GC's purge
            logger.warning("uploads: could not clean up after completing %s/%s: %s", name, upload_id, e)

    async def _finish_deletion(self, name: str, upload_id: str) -> None:
        """Delete what is left of a session deleted while completions marked it, once none marks it any more."""
        if await self.backend.exists(paths.upload_started_at(name, upload_id)):
            return  # alive: a retry may still complete it
        if not await self._marked(name, upload_id, purging=False):
            await self._delete_session(name, upload_id)

    async def _delete_when_done(self, work: asyncio.Future[bool], path: str) -> None:
        """Delete a completion's private name once its link is done: one still running (the request was cancelled)
        is waited for in the background, so that no name is made after its delete."""

        async def drop() -> None:
            with contextlib.suppress(BaseException):
                await work
            with contextlib.suppress(Exception):
                await self.backend.delete_file(path)

        task = self._in_background(drop())
        if work.done():
            await asyncio.shield(task)

    def _in_background(self, cleanup: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run a cleanup on its own, whatever happens to the request that started it (`aclose` waits for it)."""
        task = asyncio.ensure_future(cleanup)
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)
        return task

    async def _verify_private(self, upload_id: str, digest: Digest, private: str, size: int) -> None:
        """Hash the chunk a completion placed under its private name, its session deleted meanwhile."""
        hasher = new_hasher(digest.algorithm)
        try:
            async for data in self.backend.reader(private):
                await hash_into(hasher, data)
        except PathNotFound:
            raise upload_unknown(upload_id) from None
        self._verify(digest, hasher.hexdigest(), size)

    async def _known_digest(self, name: str, upload_id: str, algorithm: str, total: int) -> str | None:
        """The hex digest of the upload's `total` bytes as the session's own hash saw them, without reading them:
        this process's running hash when it covers them all, else the checkpoint written by the process that stored
        the last chunk. A process's hash can be stale: the one that started the upload holds the hash of nothing,
        while another process stored every chunk since."""
        latest = self._hashers.latest(upload_id)
        if latest is not None and latest[1] == algorithm and latest[0] == total:
            return latest[2].hexdigest()
        if total == 0:
            return new_hasher(algorithm).hexdigest()
        try:
            checkpoint = await self.backend.get_content(
                paths.upload_digest_checkpoint(name, upload_id, algorithm, total)
            )
        except PathNotFound:
            return None
        return checkpoint.decode("ascii", "replace").strip() or None

    async def _read_chunks(self, chunks: list[Chunk]) -> AsyncIterable[bytes]:
        for chunk in chunks:
            async for data in self.backend.reader(chunk.path):
                yield data

    @staticmethod
    def _verify(digest: Digest, actual: str, total: int) -> None:
        if actual != digest.hex:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                detail={"expected": str(digest), "actual": f"{digest.algorithm}:{actual}", "size": total},
            )

    async def aclose(self, wait: float = CLOSE_WAIT_SECONDS) -> None:
        """Let the private names and markers still being deleted in the background go before storage closes (else
        they wait for GC's purge of their session)."""
        if self._dropping:
            await asyncio.wait(set(self._dropping), timeout=wait)

    async def cancel(self, name: str, upload_id: str, *, purging: bool = False) -> None:
        """End the session. Where storage copies, its chunks stay while a completion marks it (`_publish_copied`):
        that completion's end deletes them. `purging` (GC's purge of idle sessions): markers older than
        MARKER_DEAD_SECONDS are dead completions', which keep nothing."""
        self._hashers.drop(upload_id)
        # The start record first: where a deletion is not atomic (S3 deletes a prefix in batches), a completing
        # request must not find it while chunks are already gone (see `_publish_linked`, `_publish_copied`).
        await self.backend.delete_file(paths.upload_started_at(name, upload_id))
        if not self.backend.links and await self._marked(name, upload_id, purging):
            return
        await self._delete_session(name, upload_id)

    async def _delete_session(self, name: str, upload_id: str) -> None:
        session = paths.upload_dir(name, upload_id)
        await self.backend.delete(session)
        self._spent_markers.pop(session, None)

    async def _marked(self, name: str, upload_id: str, purging: bool) -> bool:
        try:
            markers = await self.backend.list(paths.upload_publishing_dir(name, upload_id))
        except PathNotFound:
            return False
        spent = self._spent_markers.get(paths.upload_dir(name, upload_id), ())
        markers = [marker for marker in markers if marker.path not in spent]
        if not purging:
            return bool(markers)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=MARKER_DEAD_SECONDS)
        return any(marker.modified > since for marker in markers)

    async def delete(self, name: str, upload_id: str) -> None:
        await self._started_at(name, upload_id)
        await self.cancel(name, upload_id)
