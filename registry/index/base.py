"""The metadata index's interface: what the rest of the registry may call."""

from __future__ import annotations

from typing import Protocol


class MetadataIndex(Protocol):
    async def repository_changed(self, name: str) -> None:
        """Bring one repository's entry in line with storage (dropping it if the repository is gone)."""
