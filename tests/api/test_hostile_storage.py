"""Storage holding objects no PUT would accept any more (written by hand, by another registry, or under older
rules): `moorage index rebuild` finishes over them, a server built on them becomes ready, every repository is
listed, searchable and pullable, and what could not be indexed is counted."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.admin import EXIT_OK
from registry.index.cli import run_rebuild
from registry.store.registry import Registry
from tests.api.conftest import make_settings
from tests.api.helpers import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, descriptor
from tests.api.test_hostile_manifests import serving
from tests.index.test_scan import store_blob, store_manifest

LAYER = b"a layer"
DESCRIPTION = "org.opencontainers.image.description"


def image(config_blob: bytes, **fields: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config_blob),
        "layers": [descriptor(OCI_LAYER, LAYER)],
        **fields,
    }


def raw(value: Any) -> bytes:
    return json.dumps(value).encode()


GOOD_CONFIG = raw({"architecture": "amd64", "os": "linux", "config": {"Labels": {"team": "core"}}})
BAD_CONFIGS = {
    "config-not-object": raw({"architecture": "amd64", "os": "linux", "config": [1, 2]}),
    "surrogate-labels": raw({"os": "linux", "architecture": "arm64", "config": {"Labels": {"\udfff": "\ud800"}}}),
    "deep-config": b"[" * 100_000,
    "huge-platform": raw({"architecture": 2**70, "os": ["linux"]}),
}
BAD_MANIFESTS = {
    "size-beyond-64-bits": raw(image(GOOD_CONFIG, layers=[{**descriptor(OCI_LAYER, LAYER), "size": 2**70}])),
    "negative-size": raw(image(GOOD_CONFIG, layers=[{**descriptor(OCI_LAYER, LAYER), "size": -5}])),
    "surrogate-annotation": raw(image(GOOD_CONFIG, annotations={DESCRIPTION: "\ud800", "\udc00": "x"})),
    "non-string-annotation": raw(image(GOOD_CONFIG, annotations={DESCRIPTION: 7, "team": ["core"]})),
    "layers-not-list": raw(image(GOOD_CONFIG, layers="all of them")),
    "config-size-float": raw(image(GOOD_CONFIG, config={**descriptor(OCI_CONFIG, GOOD_CONFIG), "size": 1.5})),
    "deep": b"[" * 100_000,
    "deep-object": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "not-json": b"\x00\xff not json",
    "not-utf8": raw(image(GOOD_CONFIG, annotations={"a": "X"})).replace(b'"X"', b'"\xff\xfe"'),
    "huge-integer": b'{"schemaVersion": 2, "layers": ' + b"9" * 5000 + b"}",
    "schema1": raw({"schemaVersion": 1, "name": "team/app", "fsLayers": []}),
    "index-sum-beyond-64-bits": raw(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:" + "7" * 64, "size": 2**63 - 1}] * 3,
            "annotations": {DESCRIPTION: "x" * 100_000},
        }
    ),
}


async def fill_storage(settings: Any) -> list[str]:
    """One repository per bad object, each also holding a good image; returns their names."""
    registry = Registry.from_settings(settings)
    await registry.start()
    names = []
    try:
        for blob in (GOOD_CONFIG, LAYER, *BAD_CONFIGS.values()):
            await store_blob(registry, blob)
        good = raw(image(GOOD_CONFIG))
        for case, config in BAD_CONFIGS.items():
            await store_manifest(registry, f"configs/{case}", "bad", raw(image(config)))
            await store_manifest(registry, f"configs/{case}", "good", good)
            names.append(f"configs/{case}")
        for case, body in BAD_MANIFESTS.items():
            await store_manifest(registry, f"manifests/{case}", "bad", body)
            await store_manifest(registry, f"manifests/{case}", "good", good)
            names.append(f"manifests/{case}")
    finally:
        await registry.aclose()
    return sorted(names)


async def ready(client: httpx.AsyncClient) -> None:
    for _ in range(300):
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"never ready: {(await client.get('/readyz')).text}")


async def check_served(client: httpx.AsyncClient, names: list[str]) -> None:
    await ready(client)
    assert (await client.get("/v2/_catalog")).json()["repositories"] == names
    for name in names:
        hits = (await client.get("/api/v1/search", params={"q": name})).json()["results"]
        assert name in [hit["name"] for hit in hits]
        summary = await client.get(f"/api/v1/repositories/{name}")
        assert summary.status_code == 200, summary.text
        assert sorted(t["tag"] for t in summary.json()["tags"]) == ["bad", "good"]
        for tag in ("bad", "good"):
            assert (await client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": "*/*"})).status_code == 200
    # The good images' labels still count.
    found = (await client.get("/api/v1/search", params={"q": "label:team=core", "n": 100})).json()["results"]
    assert sorted(hit["name"] for hit in found) == names


async def test_a_rebuild_over_bad_objects_finishes_and_the_server_becomes_ready(
    storage_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "index.sqlite"
    settings = make_settings(storage_config, {"index": {"path": str(path)}})
    names = await fill_storage(settings)

    assert await run_rebuild(argparse.Namespace(), settings) == EXIT_OK
    out = capsys.readouterr().out
    assert f"indexed {len(names)} repositories" in out
    assert "could be indexed only in part" in out
    async with serving(storage_config, path) as (client, _):
        await check_served(client, names)

    # Without a file, a server builds the index itself at start: ready too, and it counts what it skipped.
    path.unlink()
    async with serving(storage_config, path) as (client, _):
        await check_served(client, names)
        metrics = (await client.get("/metrics")).text
        skipped = {
            line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("moorage_index_skipped_objects_total{")
        }
        # Schema 1 is old, not bad; sizes adding up beyond 64 bits and long texts are bounded, not skipped.
        assert skipped == {'kind="config"': len(BAD_CONFIGS), 'kind="manifest"': len(BAD_MANIFESTS) - 2}
