"""end-1: `GET /v2/`, the API version check."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from registry.handlers.common import json_response


async def api_version(request: Request) -> Response:
    return json_response({})
