"""The catalog: which repositories exist, found by walking `repositories/` (Distribution's way)."""

from __future__ import annotations

from registry import paths
from storage_backends import PathNotFound, StorageBackend


class RepositoryStore:
    def __init__(self, backend: StorageBackend) -> None:
        self.backend = backend

    async def exists(self, name: str) -> bool:
        for marker in paths.repository_marker_dirs():
            if await self.backend.exists(f"{paths.repository(name)}/{marker}"):
                return True
        return False

    async def names(self) -> list[str]:
        found: list[str] = []
        await self._collect(paths.REPOSITORIES, found)
        return sorted(found)

    async def _collect(self, directory: str, found: list[str]) -> None:
        try:
            entries = await self.backend.list(directory)
        except PathNotFound:
            return
        markers = paths.repository_marker_dirs()
        bases = {entry.path.rsplit("/", 1)[1]: entry.path for entry in entries if entry.is_dir}
        if directory != paths.REPOSITORIES and any(marker in bases for marker in markers):
            found.append(paths.repository_name_of(directory))
        for base, child in bases.items():
            if base.startswith("_"):
                continue
            await self._collect(child, found)
