"""Change records in storage: how every process and replica learns which repositories another one changed.

Before a repository changes, its writer appends a tiny record naming it (`paths.index_change(key)`, the key being
`<nanoseconds since the epoch>-<uuid>`, so keys sort by time). Every process lists the records after its position
every poll interval and re-reads those repositories. A record is read when first seen and once more when it is
older than `settle` (the write it announced may not have been finished the first time); the position only moves
past settled records, and it is kept in the index, so a restart replays what a crash left half done.
"""

from __future__ import annotations

import logging
import time
import uuid

from registry import paths
from registry.errors import RegistryError
from registry.names import validate_name
from storage_backends import PathNotFound, StorageBackend

logger = logging.getLogger("moorage")


def position_at(seconds: float) -> str:
    """The position just before every record written at or after `seconds`."""
    return f"{int(seconds * 1e9):020d}"


def time_of(position: str) -> float:
    return int(position.partition("-")[0]) / 1e9


class ChangeLog:
    def __init__(self, backend: StorageBackend, settle: float, retention: float) -> None:
        self.backend = backend
        self.settle = settle
        self.retention = retention
        self._own: set[str] = set()  # records this process wrote and applied itself
        self._seen: dict[str, str] = {}  # unsettled records read once: key -> repository

    async def append(self, name: str) -> str:
        key = f"{time.time_ns():020d}-{uuid.uuid4().hex}"
        await self.backend.put_content(paths.index_change(key), name.encode())
        return key

    def applied(self, key: str) -> None:
        """This process brought the index in line after the change `key` announced: no need to read it back."""
        self._own.add(key)

    async def read(self, position: str) -> tuple[set[str], str]:
        """The repositories changed since `position` (that this process did not apply itself), and the new position."""
        cutoff = position_at(time.time() - self.settle)
        changed: set[str] = set()
        async for info in self.backend.walk(paths.INDEX_CHANGES, start_after=paths.index_change(position)):
            key = paths.index_change_key(info.path)
            if not key[:1].isdigit():
                continue
            settled = key < cutoff
            if key in self._own:
                if settled:
                    self._own.discard(key)
                continue
            name = self._seen.pop(key, None) if settled else self._seen.get(key)
            if name is None:
                name = await self._name_in(info.path)
                if name is None:
                    continue
                changed.add(name)
                if not settled:
                    self._seen[key] = name
            elif settled:
                changed.add(name)
        return changed, max(cutoff, position)

    async def _name_in(self, path: str) -> str | None:
        try:
            name = (await self.backend.get_content(path)).decode("utf-8", "replace").strip()
            return validate_name(name)
        except PathNotFound:
            return None  # pruned meanwhile
        except RegistryError:
            logger.warning("index: ignoring the change record %s: not a repository name", path)
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
            await self.backend.delete(path)
        return len(old)
