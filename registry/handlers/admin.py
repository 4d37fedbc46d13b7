"""Admin endpoints under `/api/v1/`: repository deletion and storage accounting."""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
