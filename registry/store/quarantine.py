"""GC's quarantine: how a blob leaves storage without ever breaking a push or a pull.

**Invariant: a blob that a manifest references (or that a client relied on within the grace period) is never
deleted for good.** GC does not delete a blob it found unreferenced: it *sets it aside* (moves the data into the
quarantine area), waits, marks again, and only then *purges* what is still unreferenced. Until the purge, anyone who
needs the blob *restores* it (moves it back). The four operations and the rule that ties them together live here:

- `set_aside(digest, grace)` (GC): move the data into quarantine if it is still older than the grace period (its
  modification time, re-read just before the move).
- `restore(digest)` (anyone): a repository that links the blob asks for it (a blob GET/HEAD or mount that misses, a
  manifest read, a manifest PUT's checks): the data is moved back.
- `purge(digest)` (GC, after its second mark): delete the set-aside copy for good (or drop it as a duplicate when the
  blob was pushed again meanwhile).
- `refresh(digest, info)`, the touch rule: every existence check made on a client's behalf on the way to a manifest
  PUT (HEAD, mount, an upload's dedup hit, the PUT's own checks) refreshes the blob's modification time once it is
  older than `touch_after` (half the grace period). The blob then stays younger than the grace period for at least
  half of it after the check, so GC's age test spares it; only a client whose HEAD-to-PUT gap exceeds half the grace
  period can meet a set-aside blob, and restoring brings it back.

Why no push loses a blob, whatever the interleaving:

- A blob becomes referenced when a manifest PUT writes its revision link. Before that the PUT checks each blob with
  a touch, and after it looks at them all again (registry/store/manifests.py, `_confirm`), restoring what GC set
  aside in between.
- GC's settle period (`gc.settle`, longer than the servers' 1 s existence memory and than a manifest PUT) separates
  the move from the second mark: a PUT whose first check saw the blob in place has written its revision link by
  then, so the second mark sees the manifest and GC restores the blob itself.
- What remains is a PUT that stays in its handler longer than the settle period and the second mark together, and
  whose blob GC set aside right after that PUT's first check. Its second look finds the blob purged, takes back
  what it wrote and answers MANIFEST_BLOB_UNKNOWN: the client pushes the blob again. No manifest is ever left
  pointing at a missing blob.
- A process forgets what it remembers of a blob it moves (`BlobStore.forget_digest`); other processes remember a
  blob for at most 1 s, less than the settle period, and a read that follows a remembered answer restores a
  set-aside blob before streaming it. (With S3 redirects the client fetches from the bucket itself: for that 1 s a
  redirect to a set-aside blob can 404, and the client's retry is answered from storage, which restores it.)
"""

from __future__ import annotations

import datetime as dt
import time

from registry import paths
from registry.digests import Digest
from storage_backends import FileInfo, PathNotFound, StorageBackend

DEFAULT_TOUCH_AFTER = 1800.0
"""Half of GC's default grace period; the registry sets it from `gc.grace` (registry/store/registry.py)."""


class Quarantine:
    def __init__(self, backend: StorageBackend, touch_after: float = DEFAULT_TOUCH_AFTER) -> None:
        self.backend = backend
        self.touch_after = touch_after

    async def set_aside(self, digest: Digest, grace: dt.timedelta, now: dt.datetime) -> bool:
        """Move the blob's data into quarantine if it is still older than `grace`; whether it was moved."""
        data = paths.blob_data(digest)
        try:
            info = await self.backend.stat(data)
        except PathNotFound:
            return False
        if now - info.modified <= grace:
            return False
        quarantined = paths.quarantined_blob(digest)
        await self.backend.delete_file(quarantined)  # a duplicate left by an interrupted run
        try:
            if not await self.backend.move(data, quarantined, exclusive=True):
                return False
            await self.backend.touch(quarantined)  # when it was set aside: what GC's leftovers check reads
        except PathNotFound:
            return False  # restored at once by a client's request
        return True

    async def holds(self, digest: Digest) -> bool:
        """Whether a copy of the blob is set aside (by a run that was interrupted before deciding on it)."""
        return await self.backend.exists(paths.quarantined_blob(digest))

    async def restore(self, digest: Digest) -> bool:
        """Bring the blob back if it was set aside; whether its data is in place afterwards."""
        quarantined = paths.quarantined_blob(digest)
        try:
            if await self.backend.move(quarantined, paths.blob_data(digest), exclusive=True):
                await self.backend.touch(paths.blob_data(digest))
                return True
            await self.backend.delete_file(quarantined)  # pushed again meanwhile: the set-aside copy is a duplicate
        except PathNotFound:
            pass
        try:
            await self.backend.stat(paths.blob_data(digest))
        except PathNotFound:
            return False
        return True

    async def purge(self, digest: Digest) -> bool:
        """Delete the set-aside copy for good; False when the blob was pushed again meanwhile (the copy was a
        duplicate, dropped as well)."""
        pushed_again = await self.backend.exists(paths.blob_data(digest))
        await self.backend.delete_file(paths.quarantined_blob(digest))
        return not pushed_again

    async def refresh(self, digest: Digest, info: FileInfo) -> float | None:
        """The touch rule: the data's modification time (a timestamp) after refreshing it when it is older than
        `touch_after`; None when GC took it out meanwhile and it could not be brought back."""
        modified = info.modified.timestamp()
        if time.time() - modified <= self.touch_after:
            return modified
        try:
            await self.backend.touch(paths.blob_data(digest))
        except PathNotFound:
            # Taken out by GC between the caller's stat and the touch: bring it back, which refreshes it too.
            if not await self.restore(digest):
                return None
        return time.time()
