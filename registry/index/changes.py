"""Change records in storage: how every process and replica learns what another one changed.

Around each write the index of the writing process appends a tiny record (`paths.index_change(key)`, the key being
`<nanoseconds since the epoch>-<uuid>`, so keys sort by time) naming the repository and the tags and manifests the
write changes: `{"repository": ..., "tags": [...], "manifests": [...]}`; a record with only a name (the older form)
means the whole repository. One record goes before the write, so that a process dying in the middle leaves a trace,
and one after it, to say it is done. Every process lists the records after its position every poll interval and
re-reads from storage the rows they name: only those. A record is read when first seen and once more when it is
older than `settle` (the write it announced may not have been finished the first time); the position only moves
past settled records, and it is kept in the index, so a restart replays what a crash left half done. The writing
process skips its own records at first sight (it applies its changes itself); a write of its own that fails
part-way is re-read as soon as it ends, and its announcement once more when settled, which also repairs a write
cut short by a crash.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from registry import paths
from registry.errors import ErrorCode, RegistryError
from registry.names import validate_name
from storage_backends import PathNotFound, StorageBackend

logger = logging.getLogger("moorage")


def position_at(seconds: float) -> str:
    """The position just before every record written at or after `seconds`."""
    return f"{int(seconds * 1e9):020d}"


def time_of(position: str) -> float:
    return int(position.partition("-")[0]) / 1e9


@dataclass(slots=True)
class Change:
    """What changed in one repository: some tags and manifests, or (`whole`) anything."""

    repository: str
    tags: set[str] = field(default_factory=set)
    manifests: set[str] = field(default_factory=set)
    whole: bool = False

    def merge(self, other: Change) -> None:
        self.whole = self.whole or other.whole
        self.tags |= other.tags
        self.manifests |= other.manifests

    def encode(self) -> bytes:
        if self.whole:
            return self.repository.encode()
        body = {"repository": self.repository, "tags": sorted(self.tags), "manifests": sorted(self.manifests)}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Change:
        """Raises RegistryError for a record that names no valid repository."""
        text = data.decode("utf-8", "replace").strip()
        if not text.startswith("{"):
            return cls(validate_name(text), whole=True)
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("repository"), str):
            raise RegistryError(ErrorCode.NAME_INVALID, detail="not a change record")
        tags, manifests = body.get("tags"), body.get("manifests")
        if not isinstance(tags, list) or not isinstance(manifests, list):
            return cls(validate_name(body["repository"]), whole=True)
        return cls(
            validate_name(body["repository"]),
            {t for t in tags if isinstance(t, str)},
            {m for m in manifests if isinstance(m, str)},
        )


def merged(changes: Iterable[Change]) -> dict[str, Change]:
    """One change per repository."""
    found: dict[str, Change] = {}
    for change in changes:
        if change.repository in found:
            found[change.repository].merge(change)
        else:
            found[change.repository] = Change(change.repository, set(change.tags), set(change.manifests), change.whole)
    return found


class ChangeLog:
    def __init__(self, backend: StorageBackend, settle: float, retention: float) -> None:
        self.backend = backend
        self.settle = settle
        self.retention = retention
        self._own: set[str] = set()  # records this process wrote and applied itself
        self._seen: dict[str, Change] = {}  # unsettled records read once
        self._floor = ""  # records at or before this were read for the last time: none needs remembering

    async def append(self, change: Change | str) -> str:
        """Record a change (a repository's name alone: anything in it)."""
        record = change if isinstance(change, Change) else Change(change, whole=True)
        key = f"{time.time_ns():020d}-{uuid.uuid4().hex}"
        # A hint for the indexes, which storage can rebuild: not worth a flush to disk per write.
        await self.backend.put_content(paths.index_change(key), record.encode(), durable=False)
        return key

    def announced(self, key: str, change: Change) -> None:
        """This process wrote the record `key` before a write of its own: read it only once it has settled."""
        self._seen[key] = change

    def applied(self, key: str) -> None:
        """This process brought the index in line after the change `key` announced: no need to read it back."""
        self._seen.pop(key, None)
        if key > self._floor:  # one already read back for good is past: remembering it would leak
            self._own.add(key)

    async def read(self, position: str) -> tuple[list[Change], str]:
        """The changes recorded since `position` (that this process did not apply itself), and the new position."""
        cutoff = position_at(time.time() - self.settle)
        changed: list[Change] = []
        async for info in self.backend.walk(paths.INDEX_CHANGES, start_after=paths.index_change(position)):
            key = paths.index_change_key(info.path)
            if not key[:1].isdigit():
                continue
            settled = key < cutoff
            if key in self._own:
                if settled:
                    self._own.discard(key)
                continue
            change = self._seen.pop(key, None) if settled else self._seen.get(key)
            if change is None:
                change = await self._change_in(info.path)
                if change is None:
                    continue
                changed.append(change)
                if not settled:
                    self._seen[key] = change
            elif settled:
                changed.append(change)
        self._floor = max(self._floor, cutoff)
        return changed, max(cutoff, position)

    async def recorded_since(self, seconds: float) -> list[Change]:
        """Every change recorded at or after `seconds`, settled or not, this process's own included."""
        found: list[Change] = []
        async for info in self.backend.walk(paths.INDEX_CHANGES, start_after=paths.index_change(position_at(seconds))):
            if not paths.index_change_key(info.path)[:1].isdigit():
                continue
            change = await self._change_in(info.path)
            if change is not None:
                found.append(change)
        return found

    async def _change_in(self, path: str) -> Change | None:
        try:
            return Change.decode(await self.backend.get_content(path))
        except PathNotFound:
            return None  # pruned meanwhile
        except RegistryError:
            logger.warning("index: ignoring the change record %s: it names no repository", path)
            return None

    async def prune(self) -> int:
        """Delete records older than the retention; returns how many."""
        cutoff = position_at(time.time() - self.retention)
        old = []
        async for info in self.backend.walk(paths.INDEX_CHANGES):
            if paths.index_change_key(info.path) >= cutoff:
                break
            old.append(info.path)
        for path in old:
            await self.backend.delete_file(path)
        return len(old)
