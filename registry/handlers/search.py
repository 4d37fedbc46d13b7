"""`docker search` (`/v1/_ping`, `/v1/search`) and Moorage's search and repository summaries under `/api/v1/`."""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
