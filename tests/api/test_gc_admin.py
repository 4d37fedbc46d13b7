"""`DELETE /api/v1/repositories/{name}` and `GET /api/v1/stats` against hand-computed numbers, on both backends."""

from __future__ import annotations

from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from registry.app import create_app
from registry.store.registry import Registry
from registry.store.usage import measure
from storage_backends import StorageBackend
from tests.api.conftest import ClientFactory, blob_data_paths, make_settings
from tests.api.gc_helpers import EventRecorder, blob_digests, collect, pull_completely, put_manifest
from tests.api.helpers import OCI_MANIFEST, digest_of, encode, error_code, image_manifest, push_blob, push_image


async def test_repository_deletion_and_storage_accounting(
    client_factory: ClientFactory, storage: StorageBackend, storage_config: dict[str, Any]
) -> None:
    client = await client_factory()
    shared = b"base layer " * 500
    config_a, unique_a = b'{"repo": "a"}', b"only in a " * 300
    config_b, unique_b = b'{"repo": "b"}', b"only in b " * 100
    orphan = b"never referenced " * 10
    images = {}
    for name, config, unique in (("team/a", config_a, unique_a), ("team/b", config_b, unique_b)):
        for blob in (config, shared, unique):
            await push_blob(client, name, blob)
        manifest = encode(image_manifest(config, [shared, unique]))
        await put_manifest(client, name, "latest", manifest, OCI_MANIFEST)
        images[name] = manifest
    await push_blob(client, "team/b", orphan)

    logical_a = len(config_a) + len(shared) + len(unique_a) + len(images["team/a"])
    logical_b = len(config_b) + len(shared) + len(unique_b) + len(images["team/b"])
    response = await client.get("/api/v1/stats")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "repositories": [
            {"name": "team/a", "manifests": 1, "tags": 1, "blobs": 4, "logical_bytes": logical_a},
            {"name": "team/b", "manifests": 1, "tags": 1, "blobs": 4, "logical_bytes": logical_b},
        ],
        "logical_bytes": logical_a + logical_b,
        "physical_bytes": logical_a + logical_b - len(shared),
        "dedup_saved_bytes": len(shared),
        "stored_bytes": logical_a + logical_b - len(shared) + len(orphan),
        "unreferenced_bytes": len(orphan),
    }
    one = await client.get("/api/v1/stats", params={"repository": "team/b"})
    assert one.json()["repositories"] == [response.json()["repositories"][1]]
    assert one.json()["physical_bytes"] == logical_b and "stored_bytes" not in one.json()
    unknown = await client.get("/api/v1/stats", params={"repository": "team/nope"})
    assert unknown.status_code == 404 and error_code(unknown) == "NAME_UNKNOWN"
    invalid = await client.get("/api/v1/stats", params={"repository": "Team/../x"})
    assert invalid.status_code == 400 and error_code(invalid) == "NAME_INVALID"

    nested, _ = await push_image(client, "team/a/nested", "v1", seed="nested")
    deleted = await client.delete("/api/v1/repositories/team/a")
    assert deleted.status_code == 202, deleted.text
    assert deleted.json() == {"name": "team/a", "tags": 1, "manifests": 1}
    catalog = (await client.get("/v2/_catalog")).json()["repositories"]
    assert catalog == ["team/a/nested", "team/b"]
    gone = await client.get("/v2/team/a/manifests/latest", headers={"Accept": OCI_MANIFEST})
    assert gone.status_code == 404
    again = await client.delete("/api/v1/repositories/team/a")
    assert again.status_code == 404 and error_code(again) == "NAME_UNKNOWN"
    bad = await client.delete("/api/v1/repositories/Bad..Name")
    assert bad.status_code == 400 and error_code(bad) == "NAME_INVALID"

    report = await collect(storage_config)
    assert {str(d) for d in report.blobs_removed} == {
        digest_of(config_a),
        digest_of(unique_a),
        digest_of(images["team/a"]),
        digest_of(orphan),
    }
    assert digest_of(shared) in blob_digests(await blob_data_paths(storage)), "shared with team/b: stays"
    await pull_completely(client, "team/b", "latest")
    await pull_completely(client, "team/a/nested", nested)

    registry = Registry.from_settings(make_settings(storage_config))
    await registry.start()
    try:
        usage = await measure(registry)
        visible_only = await measure(registry, visible=lambda name: name == "team/b")
    finally:
        await registry.aclose()
    assert [r.name for r in usage.repositories] == ["team/a/nested", "team/b"]
    assert usage.stored_bytes == usage.physical_bytes, "after GC nothing unreferenced is stored"
    # What a caller may not pull is left out, and so is what only the whole registry could tell (garbage).
    assert [r.name for r in visible_only.repositories] == ["team/b"]
    assert visible_only.physical_bytes == logical_b and visible_only.stored_bytes is None

    # What the store deletes, it says (the metadata index follows, which updates every catalog and search).
    recorder = EventRecorder()
    app = create_app(make_settings(storage_config))
    recorder.follow(app.state.registry.events)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://registry.test") as admin,
    ):
        assert (await admin.delete("/api/v1/repositories/team/a/nested")).status_code == 202
    assert recorder.changed == ["team/a/nested"]

    read_only = await client_factory(delete=False)
    refused = await read_only.delete("/api/v1/repositories/team/b")
    assert refused.status_code == 405 and error_code(refused) == "UNSUPPORTED"
