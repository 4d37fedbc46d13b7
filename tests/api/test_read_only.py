"""`maintenance.read_only`: every write answers 503 UNAVAILABLE before touching storage; reads keep working."""

from __future__ import annotations

import httpx
import pytest

from storage_backends import StorageBackend
from tests.api.conftest import ClientFactory
from tests.api.helpers import OCI_MANIFEST, digest_of, error_code, push_image

# Nothing here depends on the storage backend: the filesystem only (test_blobs, test_uploads, ... cover S3).
pytestmark = pytest.mark.parametrize("storage_config", ["filesystem"], indirect=True)

READ_ONLY = {"maintenance": {"read_only": True}}


async def stored_paths(storage: StorageBackend) -> list[str]:
    return [info.path async for info in storage.walk("docker/registry/v2")]


def assert_read_only(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert error_code(response) == "UNAVAILABLE"
    assert "read-only" in response.json()["errors"][0]["message"]
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_writes_are_refused_and_reads_work(client_factory: ClientFactory, storage: StorageBackend) -> None:
    writer = await client_factory()
    digest, body = await push_image(writer, "team/app", "1.0")
    started = await writer.post("/v2/team/app/blobs/uploads/")
    assert started.status_code == 202
    session = started.headers["Location"]
    before = await stored_paths(storage)

    reader = await client_factory(sections=READ_ONLY)
    accept = {"Accept": OCI_MANIFEST}
    assert (await reader.get("/v2/")).status_code == 200
    pulled = await reader.get("/v2/team/app/manifests/1.0", headers=accept)
    assert pulled.status_code == 200 and pulled.content == body
    assert (await reader.head(f"/v2/team/app/manifests/{digest}", headers=accept)).status_code == 200
    assert (await reader.get("/v2/team/app/tags/list")).json() == {"name": "team/app", "tags": ["1.0"]}
    assert (await reader.get("/v2/_catalog")).status_code == 200
    layer = b"layer-x" * 100
    blob = await reader.get(f"/v2/team/app/blobs/{digest_of(layer)}")
    assert blob.status_code == 200 and blob.content == layer

    data = b"new content"
    assert_read_only(await reader.post("/v2/team/app/blobs/uploads/"))
    assert_read_only(await reader.post("/v2/team/app/blobs/uploads/", params={"digest": digest_of(data)}, content=data))
    assert_read_only(await reader.patch(session, content=data))
    assert_read_only(await reader.put(session, params={"digest": digest_of(data)}, content=data))
    assert_read_only(await reader.delete(session))
    assert_read_only(
        await reader.put("/v2/team/app/manifests/2.0", content=body, headers={"Content-Type": OCI_MANIFEST})
    )
    assert_read_only(await reader.delete(f"/v2/team/app/manifests/{digest}"))
    assert_read_only(await reader.delete(f"/v2/team/app/blobs/{digest_of(layer)}"))
    assert await stored_paths(storage) == before

    # The same storage is writable again without the switch.
    again = await client_factory()
    assert (await again.patch(session, content=data)).status_code == 202
