"""Background services that live as long as the app (index maintenance, GC schedule, ...)."""

from __future__ import annotations

from typing import Protocol


class Service(Protocol):
    async def start(self) -> None:
        """Called once the registry's storage is started; must not block serving."""

    async def aclose(self) -> None:
        """Stop and release everything; called at shutdown."""
