"""The handlers' answer to a full store: `507 INSUFFICIENT_STORAGE` in the spec's error body (no body for HEAD), on
a real filesystem that is out of space (a small tmpfs, tests/tmpfs.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import ClientFactory
from tests.api.helpers import OCI_MANIFEST, digest_of, encode, error_code, image_manifest, push_blob
from tests.tmpfs import MiB, fill, small_tmpfs


@pytest.fixture
def storage_config(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Replaces the two-backend fixture: this file is about a filesystem that fills up."""
    with small_tmpfs(tmp_path / "disk", 4 * MiB) as mount:
        yield {"filesystem": {"root": str(mount / "data"), "fsync": False}}


async def test_a_full_disk_answers_507_with_the_spec_body(
    client_factory: ClientFactory, storage_config: dict[str, Any]
) -> None:
    client = await client_factory()
    config, layer = b'{"os":"linux"}', b"l" * 1000
    await push_blob(client, "team/full", config)
    await push_blob(client, "team/full", layer)
    filler = fill(Path(storage_config["filesystem"]["root"]).parent / "filler")

    blob = b"b" * (64 * 1024)
    response = await client.post("/v2/team/full/blobs/uploads/", params={"digest": digest_of(blob)}, content=blob)
    assert_insufficient_storage(response)
    manifest = encode(image_manifest(config, [layer]))
    response = await client.put("/v2/team/full/manifests/v1", content=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert_insufficient_storage(response)
    # No room, but reads work: the registry stays ready for pulls.
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.head(f"/v2/team/full/blobs/{digest_of(layer)}")).status_code == 200

    filler.unlink()
    response = await client.put("/v2/team/full/manifests/v1", content=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 201, response.text


def assert_insufficient_storage(response: httpx.Response) -> None:
    assert response.status_code == 507, response.text
    assert error_code(response) == "INSUFFICIENT_STORAGE"
    assert response.json()["errors"][0]["detail"] == "the storage backend has no space left"
