from __future__ import annotations

import httpx
import pytest

from tests.api.helpers import error_code

# Nothing here depends on the storage backend: the filesystem only (test_blobs, test_uploads, ... cover S3).
pytestmark = pytest.mark.parametrize("storage_config", ["filesystem"], indirect=True)


async def test_api_version_check(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_unknown_endpoint_is_a_spec_error(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/team/app/nonsense")
    assert response.status_code == 404
    assert error_code(response) == "NOT_FOUND"
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_wrong_method_is_unsupported(client: httpx.AsyncClient) -> None:
    response = await client.post("/v2/team/app/tags/list")
    assert response.status_code == 405
    assert error_code(response) == "UNSUPPORTED"
