"""Quotas (registry/policy/quotas.py): a push that would pass its repository's quota is refused with 403 DENIED
naming the quota before its blob is stored; room comes back when a tag is deleted and GC runs; two pushes racing
for the last bytes cannot both pass; usage shows in the API and the metrics."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from registry.app import create_app
from registry.gc.collector import GarbageCollector, GcOptions
from registry.index.local import LocalIndex
from registry.store.cli import run_du
from registry.store.registry import Registry
from storage_backends import StorageBackend
from tests.api.conftest import blob_data_paths, make_settings
from tests.api.helpers import OCI_MANIFEST, at, digest_of, encode, error_code, image_manifest, push_blob

CONFIG = json.dumps({"architecture": "amd64", "os": "linux"}).encode()


@dataclass
class Serving:
    client: httpx.AsyncClient
    registry: Registry
    index: LocalIndex


@pytest.fixture
async def serving(storage_config: dict[str, Any], tmp_path: Path) -> AsyncIterator[Serving]:
    sections = {
        "quotas": [{"repository": "small/*", "bytes": 10_000}],
        "metrics": {"enabled": True},
        # On S3 without a database the default policy file is a temporary one, which takes no changes.
        "policy": {"path": str(tmp_path / "policy.sqlite")},
    }
    app = create_app(make_settings(storage_config, sections))
    async with LifespanManager(app) as manager:
        index: LocalIndex = app.state.index
        assert await index.wait_ready(10.0)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://registry.test"
        ) as client:
            yield Serving(client, app.state.registry, index)


async def push_with(client: httpx.AsyncClient, name: str, tag: str, layer: bytes) -> httpx.Response:
    """Config and layer (refused or not), then the manifest: the last refusal, else the manifest's answer."""
    for blob in (CONFIG, layer):
        start = await client.post(f"/v2/{name}/blobs/uploads/")
        if start.status_code != 202:
            return start
        put = await client.put(at(start.headers["Location"], digest=digest_of(blob)), content=blob)
        if put.status_code != 201:
            return put
    body = encode(image_manifest(CONFIG, [layer]))
    return await client.put(f"/v2/{name}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})


async def usage(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await client.get("/api/v1/quotas", params={"repository": name})
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()["usage"]
    return found


async def test_a_push_over_quota_is_refused_before_its_blob_is_stored(
    serving: Serving, storage: StorageBackend
) -> None:
    client = serving.client
    assert (await push_with(client, "small/app", "v1", b"a" * 6000)).status_code == 201
    stored = await blob_data_paths(storage)
    refused = await push_with(client, "small/app", "v2", b"b" * 6000)
    assert refused.status_code == 403 and error_code(refused) == "DENIED", refused.text
    error = refused.json()["errors"][0]
    assert "quota" in error["message"] and error["detail"]["quota"] == "small/*"
    assert error["detail"]["limit_bytes"] == 10_000 and error["detail"]["requested_bytes"] > 0
    assert await blob_data_paths(storage) == stored  # not a byte of it published
    # Other repositories have no quota; a repository of the same glob has its own.
    assert (await push_with(client, "big/app", "v1", b"b" * 6000)).status_code == 201
    assert (await push_with(client, "small/other", "v1", b"c" * 6000)).status_code == 201
    seen = await usage(client, "small/app")
    assert seen["limit_bytes"] == 10_000 and 6000 < seen["used_bytes"] < 10_000 and seen["warning"] is False


async def test_a_streamed_upload_stops_at_the_quota_without_storing_anything(
    serving: Serving, storage: StorageBackend
) -> None:
    client = serving.client
    start = await client.post("/v2/small/app/blobs/uploads/")

    async def body() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1000

    refused = await client.patch(start.headers["Location"], content=body())
    assert refused.status_code == 403 and error_code(refused) == "DENIED"
    # A PATCH whose length says it will not fit is refused before its body is read.
    start = await client.post("/v2/small/app/blobs/uploads/")
    sized = await client.patch(start.headers["Location"], content=b"y" * 20_000)
    assert sized.status_code == 403 and error_code(sized) == "DENIED"
    assert await blob_data_paths(storage) == []
    uploads = [info.path async for info in storage.walk("docker/registry/v2/repositories") if "/_uploads/" in info.path]
    assert not [path for path in uploads if "/chunks/" in path or path.endswith("/data")]


async def test_room_comes_back_after_a_tag_delete_and_gc(serving: Serving) -> None:
    client = serving.client
    assert (await push_with(client, "small/app", "v1", b"a" * 6000)).status_code == 201
    assert (await push_with(client, "small/app", "v2", b"b" * 6000)).status_code == 403
    assert (await client.delete("/v2/small/app/manifests/v1")).status_code == 202
    assert (await push_with(client, "small/app", "v2", b"b" * 6000)).status_code == 403  # still referenced
    await serving.index.settled()
    report = await GarbageCollector(serving.registry, GcOptions(grace=0.0, settle=0.0, delete_untagged=True)).run()
    assert report.blobs_removed
    await serving.index.settled()
    assert (await usage(client, "small/app"))["used_bytes"] == 0
    assert (await push_with(client, "small/app", "v2", b"b" * 6000)).status_code == 201


async def test_two_pushes_racing_for_the_last_bytes_cannot_both_pass(serving: Serving) -> None:
    client = serving.client
    layers = [bytes([65 + i]) * 4000 for i in range(6)]

    async def one(layer: bytes) -> int:
        start = await client.post("/v2/small/race/blobs/uploads/")
        if start.status_code != 202:
            return start.status_code
        put = await client.put(at(start.headers["Location"], digest=digest_of(layer)), content=layer)
        return put.status_code

    statuses = await asyncio.gather(*(one(layer) for layer in layers))
    assert sorted(statuses).count(201) == 2, statuses  # 2 x 4000 fit in 10,000; a third would not
    assert set(statuses) <= {201, 403}
    assert (await usage(client, "small/race"))["used_bytes"] == 8000


async def test_a_mount_counts_against_the_quota_too(serving: Serving) -> None:
    client = serving.client
    big = b"m" * 12_000
    await push_blob(client, "big/source", big)
    mounted = await client.post("/v2/small/app/blobs/uploads/", params={"mount": digest_of(big), "from": "big/source"})
    assert mounted.status_code == 403 and error_code(mounted) == "DENIED", mounted.text
    assert (await client.head(f"/v2/small/app/blobs/{digest_of(big)}")).status_code == 404


async def test_quotas_from_the_api_override_the_config_and_show_in_metrics(serving: Serving) -> None:
    client = serving.client
    raised = await client.put("/api/v1/quotas", json={"repository": "small/*", "bytes": "1MiB"})
    assert raised.status_code == 200, raised.text
    assert (await push_with(client, "small/app", "v1", b"a" * 50_000)).status_code == 201
    listed = (await client.get("/api/v1/quotas")).json()["quotas"]
    assert listed == [{"repository": "small/*", "bytes": 2**20, "source": "api"}]
    tight = await client.put("/api/v1/quotas", json={"repository": "small/app", "bytes": 60_000})
    assert tight.status_code == 200
    seen = await usage(client, "small/app")
    assert seen["pattern"] == "small/app" and seen["warning"] is True  # past 80%
    metrics = (await client.get("/metrics")).text
    assert 'moorage_quota_limit_bytes{repository="small/app"} 60000.0' in metrics
    assert 'moorage_quota_used_bytes{repository="small/app"}' in metrics
    assert (await client.delete("/api/v1/quotas/small/*")).status_code == 204
    assert (await client.get("/api/v1/quotas")).json()["quotas"][0]["source"] == "api"


async def test_usage_against_the_quota_shows_in_the_stats_api_and_moorage_du(
    serving: Serving, storage_config: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    client = serving.client
    assert (await push_with(client, "small/app", "v1", b"a" * 8500)).status_code == 201
    assert (await push_with(client, "big/app", "v1", b"b" * 100)).status_code == 201
    assert (await client.put("/api/v1/quotas", json={"repository": "big/*", "bytes": "1MiB"})).status_code == 200
    stats = (await client.get("/api/v1/stats")).json()["repositories"]
    by_name = {row["name"]: row for row in stats}
    assert by_name["small/app"]["quota_bytes"] == 10_000 and by_name["small/app"]["quota_warning"] is True
    assert by_name["big/app"]["quota_bytes"] == 2**20 and by_name["big/app"]["quota_warning"] is False

    settings = make_settings(
        storage_config,
        {"quotas": [{"repository": "small/*", "bytes": 10_000}], "policy": {"path": str(tmp_path / "policy.sqlite")}},
    )
    args = argparse.Namespace(repository=None, json=False)
    assert await run_du(args, settings) == 0
    printed = capsys.readouterr().out
    small = next(line for line in printed.splitlines() if line.startswith("small/app"))
    big = next(line for line in printed.splitlines() if line.startswith("big/app"))
    assert "QUOTA" in printed.splitlines()[0] and "over the warning level" in small, printed
    assert "1.0 MiB (0% used)" in big, printed  # the API's quota, read from the policy database


async def test_changes_are_refused_where_they_would_not_last(storage_config: dict[str, Any]) -> None:
    """S3 without a database: the policy file would be a temporary one, this machine's alone."""
    app = create_app(make_settings(storage_config))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://registry.test") as client,
    ):
        response = await client.put("/api/v1/quotas", json={"repository": "x/*", "bytes": 100})
        if storage_config.get("backend") == "s3":
            assert response.status_code == 503 and "database.url" in response.text, response.text
        else:
            assert response.status_code == 200, response.text


async def test_moorage_du_reads_the_policy_database_without_creating_it(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    settings = make_settings({"filesystem": {"root": str(root), "fsync": False}})
    registry = Registry.from_settings(settings)
    await registry.start()
    await registry.aclose()
    assert await run_du(argparse.Namespace(repository=None, json=True), settings) == 0
    assert not (root / "moorage" / "policy.sqlite").exists()


@pytest.mark.parametrize("storage_config", ["filesystem"], indirect=True)
@pytest.mark.parametrize(
    ("metrics", "named"),
    [
        ({}, False),  # an open scrape, with auth on: no private names
        ({"username": "prometheus", "password": "scrape-secret"}, True),
        ({"repository_names": True}, True),  # the operator's choice (a metrics port only Prometheus reaches)
    ],
)
async def test_metrics_name_repositories_only_where_the_scrape_is_protected(
    storage_config: dict[str, Any], tmp_path: Path, metrics: dict[str, Any], named: bool
) -> None:
    from tests.auth.test_htpasswd import bcrypt_entry

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(bcrypt_entry("admin", "admin-secret") + "\n")
    sections = {
        "auth": {"htpasswd": {"path": str(htpasswd)}, "admins": ["admin"]},
        "access": [{"repository": "**", "users": ["admin"], "actions": ["*"]}],
        "quotas": [{"repository": "secret/*", "bytes": 10_000_000}],
        "metrics": metrics,
        "policy": {"path": str(tmp_path / "policy.sqlite")},
    }
    app = create_app(make_settings(storage_config, sections))
    async with LifespanManager(app) as manager:
        base = "http://registry.test"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url=base) as client:
            client.auth = httpx.BasicAuth("admin", "admin-secret")
            assert (await push_with(client, "secret/merger", "v1", b"s" * 5000)).status_code == 201
            client.auth = None  # type: ignore[assignment]
            assert (await client.get("/v2/_catalog")).status_code == 401
            scrape = ("prometheus", "scrape-secret") if "username" in metrics else None
            text = (await client.get("/metrics", auth=scrape or httpx.USE_CLIENT_DEFAULT)).text
            assert "moorage_http_requests_total" in text
            assert ('moorage_quota_limit_bytes{repository="secret/merger"} 1e+07' in text) is named, text[-2000:]
            assert ("secret/merger" in text) is named
