"""Nothing a client sends poisons the metadata index: what the specs let the registry refuse is refused at PUT
before anything is stored (400 MANIFEST_INVALID); the rest (image configs are blobs, never checked at PUT) is
indexed as far as it can be, and the repository stays listed and searchable. No request answers 500."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.app import create_app
from registry.index.changes import Change
from registry.index.database import Database
from registry.index.local import LocalIndex
from registry.store.events import Event, EventBus, Planned
from tests.api.conftest import filesystem_storage, make_settings
from tests.api.helpers import (
    DOCKER_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    digest_of,
    error_code,
    push_blob,
)
from tests.hostile_manifests import configs, encode, image_manifests, index_manifests


@pytest.fixture
def storage_config(tmp_path: Path) -> dict[str, Any]:
    return filesystem_storage(tmp_path)  # nothing here depends on the storage backend


DESCRIPTION = "org.opencontainers.image.description"
LAYER = b"a layer" * 10
MANIFEST_FIELDS_OK = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}


@contextlib.asynccontextmanager
async def serving(storage_config: dict[str, Any], index_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    settings_ = make_settings(storage_config, {"index": {"path": str(index_path), "poll_interval": 0.05}})
    app = create_app(settings_)
    async with LifespanManager(app) as manager:
        # An app error reaches the test as a 500 response, the way a client would see it.
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
            yield client, app


@pytest.fixture
async def served(storage_config: dict[str, Any], tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with serving(storage_config, tmp_path / "index.sqlite") as found:
        yield found


@pytest.fixture
async def client(served: tuple[httpx.AsyncClient, Any]) -> httpx.AsyncClient:
    return served[0]


@pytest.fixture
async def fs_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    storage = {"filesystem": {"root": str(tmp_path / "data"), "fsync": False}}
    async with serving(storage, tmp_path / "index.sqlite") as (client, _):
        yield client


def manifest(config: bytes, config_type: str = OCI_CONFIG, **fields: Any) -> dict[str, Any]:
    return {
        **MANIFEST_FIELDS_OK,
        "config": descriptor(config_type, config),
        "layers": [descriptor(OCI_LAYER, LAYER)],
        **fields,
    }


async def put(client: httpx.AsyncClient, name: str, tag: str, body: bytes, media_type: str = OCI_MANIFEST) -> Any:
    return await client.put(f"/v2/{name}/manifests/{tag}", content=body, headers={"Content-Type": media_type})


async def assert_refused(client: httpx.AsyncClient, name: str, body: bytes, media_type: str = OCI_MANIFEST) -> str:
    """400 MANIFEST_INVALID with the spec's error body, and nothing stored; returns the reason given."""
    response = await put(client, name, "bad", body, media_type)
    assert response.status_code == 400, response.text
    assert error_code(response) == "MANIFEST_INVALID"
    assert (await client.get(f"/v2/{name}/manifests/{digest_of(body)}")).status_code == 404
    assert (await client.get(f"/v2/{name}/manifests/bad")).status_code == 404
    return str(response.json()["errors"][0]["detail"]["reason"])


async def assert_listed_and_searchable(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """The repository is in the catalog and in search results, and its summary renders; returns the summary."""
    catalog = (await client.get("/v2/_catalog")).json()["repositories"]
    assert name in catalog
    response = await client.get("/api/v1/search", params={"q": name, "n": 100})
    assert response.status_code == 200, response.text
    assert name in [hit["name"] for hit in response.json()["results"]]
    docker = await client.get("/v1/search", params={"q": name})
    assert docker.status_code == 200 and name in [r["name"] for r in docker.json()["results"]]
    summary = await client.get(f"/api/v1/repositories/{name}")
    assert summary.status_code == 200, summary.text
    return dict(summary.json())


async def push_config(client: httpx.AsyncClient, name: str, config: bytes) -> None:
    await push_blob(client, name, config)
    await push_blob(client, name, LAYER)


# Refused at PUT: each case is one the attacker review found or one of its class.
DIGEST = "sha256:" + "e" * 64
REFUSED: dict[str, bytes] = {
    "size beyond 64 bits": encode(manifest(b"{}", layers=[{"mediaType": OCI_LAYER, "digest": DIGEST, "size": 2**64}])),
    "size at 2**63": encode(manifest(b"{}", layers=[{"mediaType": OCI_LAYER, "digest": DIGEST, "size": 2**63}])),
    "negative size": encode(manifest(b"{}", layers=[{"mediaType": OCI_LAYER, "digest": DIGEST, "size": -1}])),
    "boolean size": encode(manifest(b"{}", layers=[{"mediaType": OCI_LAYER, "digest": DIGEST, "size": True}])),
    "float size": encode(manifest(b"{}", layers=[{"mediaType": OCI_LAYER, "digest": DIGEST, "size": 7.0}])),
    "string size": encode(manifest(b"{}", layers=[{"mediaType": OCI_LAYER, "digest": DIGEST, "size": "7"}])),
    "huge subject size": encode(manifest(b"{}", subject={"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 2**70})),
    "media type not a string": encode(manifest(b"{}", layers=[{"mediaType": 7, "digest": DIGEST, "size": 1}])),
    "media type not RFC 6838": encode(manifest(b"{}", layers=[{"mediaType": "a b/c", "digest": DIGEST, "size": 1}])),
    "invalid digest": encode(manifest(b"{}", layers=[{"mediaType": OCI_LAYER, "digest": "sha256:zz", "size": 1}])),
    "layers not a list": encode(manifest(b"{}", layers={"0": descriptor(OCI_LAYER, LAYER)})),
    "a layer not an object": encode(manifest(b"{}", layers=[7])),
    "non-string annotation": encode(manifest(b"{}", annotations={"a": 1})),
    "lone surrogate in an annotation": encode(manifest(b"{}", annotations={DESCRIPTION: "\ud800"})),
    "lone surrogate in an annotation key": encode(manifest(b"{}", annotations={"\udc00": "x"})),
    "lone surrogate in an unknown field": encode(manifest(b"{}", extra=["\udfff"])),
    "artifactType not a media type": encode(manifest(b"{}", artifactType=["x"])),
    "schemaVersion 2.0": encode(manifest(b"{}", schemaVersion=2.0)),
    "schemaVersion true": encode(manifest(b"{}", schemaVersion=True)),
    "NaN": encode(manifest(b"{}", extra=float("nan"))),
    "integer beyond Python's digit limit": b'{"schemaVersion": 2, "extra": ' + b"9" * 5000 + b"}",
    "100k brackets": b"[" * 100_000,
    "100k objects deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "129 levels inside a manifest": encode(manifest(b"{}", extra=0)).replace(
        b'"extra": 0', b'"extra": ' + b"[" * 129 + b"]" * 129
    ),
    "not UTF-8": encode(manifest(b"{}", annotations={"a": "X"})).replace(b'"X"', b'"\xe9"'),
    "UTF-16": json.dumps(manifest(b"{}")).encode("utf-16"),
    "UTF-8 byte order mark": b"\xef\xbb\xbf" + encode(manifest(b"{}")),
    "index platform architecture not a string": encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 1, "platform": {"architecture": 2**70}}
            ],
        }
    ),
    "index child size beyond 64 bits": encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 2**64}],
        }
    ),
    "index manifests not a list": encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": {}}),
}


async def test_refused_before_anything_is_stored(fs_client: httpx.AsyncClient) -> None:
    """On the filesystem only: refusing happens before storage is touched (and S3 makes the loop slow)."""
    client = fs_client
    for number, case in enumerate(sorted(REFUSED)):
        name = f"refused/case{number}"
        await push_config(client, name, b"{}")
        body = REFUSED[case]
        media_type = OCI_INDEX if b"manifests" in body and b"image.index" in body else OCI_MANIFEST
        reason = await assert_refused(client, name, body, media_type)
        reason.encode("utf-8")  # values are shown escaped: never a raw surrogate on the wire
        # The repository takes a good push right after, and is listed and searchable.
        response = await put(client, name, "good", encode(manifest(b"{}")))
        assert response.status_code == 201, (case, response.text)
        await assert_listed_and_searchable(client, name)


async def test_deep_nesting_is_refused_by_its_depth_not_by_a_recursion_error(client: httpx.AsyncClient) -> None:
    reason = await assert_refused(client, "team/app", b"[" * 100_000)
    assert "nested deeper than" in reason
    # 100 levels in an unknown field are fine (the bound is 128); manifests real clients push nest 5.
    await push_config(client, "team/app", b"{}")
    nested = encode(manifest(b"{}", extra=0)).replace(b'"extra": 0', b'"extra": ' + b"[" * 100 + b"]" * 100)
    assert (await put(client, "team/app", "nested", nested)).status_code == 201


# Accepted, and indexed as far as they can be: image configs are blobs, which PUT does not read.
def config_of(**fields: Any) -> bytes:
    return encode({"architecture": "amd64", "os": "linux", **fields})


ACCEPTED_CONFIGS: dict[str, bytes] = {
    "config not an object": config_of(config=[1, 2]),
    "config a string": config_of(config="labels"),
    "non-string label values": config_of(config={"Labels": {"team": "core", "n": 1, "list": [1], "none": None}}),
    "lone surrogate in a label": config_of(config={"Labels": {"team": "\ud800core", "\udfff": "key"}}),
    "NUL bytes in labels": config_of(config={"Labels": {"team": "co\x00re", "a\x00b": "c"}}),
    "huge numbers in platform fields": encode({"architecture": 2**70, "os": 1e308, "variant": -(2**70)}),
    "absurdly long label": config_of(config={"Labels": {"team": "core", "long": "x" * 1_000_000}}),
    "many labels": config_of(config={"Labels": {f"label{i}": "v" for i in range(5000)}}),
    "config 100k deep": b"[" * 100_000,
    "integer beyond Python's digit limit": b'{"os": ' + b"1" * 5000 + b"}",
    "not JSON": b"\x00\xffnot json",
    "a JSON array": b"[1, 2]",
    "invalid UTF-8 in a label": b'{"config": {"Labels": {"team": "\xff\xfe"}}}',
    "created not a string": config_of(created=2**70),
}


async def test_hostile_image_configs_are_indexed_as_far_as_they_can_be(fs_client: httpx.AsyncClient) -> None:
    """On the filesystem only, to stay fast; test_hostile_storage.py reads bad configs from S3 too."""
    client = fs_client
    for number, case in enumerate(sorted(ACCEPTED_CONFIGS)):
        name = f"configs/case{number}"
        config = ACCEPTED_CONFIGS[case]
        await push_config(client, name, config)
        body = encode(manifest(config, annotations={DESCRIPTION: "the app"}))
        response = await put(client, name, "v1", body)
        assert response.status_code == 201, (case, response.text)
        summary = await assert_listed_and_searchable(client, name)
        assert summary["description"] == "the app", case
        assert [t["tag"] for t in summary["tags"]] == ["v1"], case
        # Later pushes to the repository work too (every one re-reads the repository into the index).
        second = encode(manifest(config, annotations={DESCRIPTION: "again"}))
        assert (await put(client, name, "v2", second)).status_code == 201, case
    assert (await client.get("/readyz")).status_code == 200


async def test_what_can_be_indexed_of_a_hostile_config_is(client: httpx.AsyncClient, tmp_path: Path) -> None:
    config = config_of(
        config={"Labels": {"team": "core", "bad": "\ud800x", "n": 1, "long": "y" * 100_000, "\udfff": "k"}}
    )
    await push_config(client, "team/app", config)
    assert (await put(client, "team/app", "v1", encode(manifest(config)))).status_code == 201
    for q in ("label:team=core platform:linux/amd64", "label:bad=\ufffdx", "label:\ufffd=k", "label:long"):
        hits = (await client.get("/api/v1/search", params={"q": q})).json()["results"]
        assert [h["name"] for h in hits] == ["team/app"], q
    assert (await client.get("/api/v1/search", params={"q": "label:n"})).json()["results"] == []
    db = Database.open(tmp_path / "index.sqlite")
    try:
        (record,) = db.known_manifests("team/app").values()
    finally:
        db.close()
    assert record.labels["long"] == "y" * 4096  # truncated, not dropped


async def test_sizes_that_add_up_beyond_64_bits_are_clamped(client: httpx.AsyncClient) -> None:
    # Each size is a valid int64 (PUT does not compare sizes with blobs, like Distribution); their sum is not.
    await push_config(client, "team/app", b"{}")
    big = {**descriptor(OCI_LAYER, LAYER), "size": 2**63 - 1}
    body = encode(manifest(b"{}", layers=[big, big, big]))
    response = await put(client, "team/app", "v1", body)
    assert response.status_code == 201, response.text
    child = {"mediaType": OCI_MANIFEST, "digest": digest_of(body), "size": len(body)}
    index = encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child, child]})
    assert (await put(client, "team/app", "multi", index, OCI_INDEX)).status_code == 201
    summary = await assert_listed_and_searchable(client, "team/app")
    assert {t["tag"]: t["size"] for t in summary["tags"]} == {"multi": 2**63 - 1, "v1": 2**63 - 1}


async def test_a_failed_index_update_after_a_put_still_answers_201_and_is_repaired(
    served: tuple[httpx.AsyncClient, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, app = served
    index = app.state.index
    assert isinstance(index, LocalIndex)
    original = index._apply
    broken = True

    async def failing_while_broken(change: Change) -> bool:
        if broken:
            raise RuntimeError("an index bug")
        return await original(change)

    monkeypatch.setattr(index, "_apply", failing_while_broken)
    await push_config(client, "team/app", b"{}")
    assert (await put(client, "team/app", "v1", encode(manifest(b"{}")))).status_code == 201
    assert (await client.get("/api/v1/repositories/team/app")).status_code == 404
    failures = re.search(r"^moorage_index_refresh_failures_total (\S+)$", (await client.get("/metrics")).text, re.M)
    assert failures is not None and float(failures.group(1)) >= 1  # the blob pushes' updates failed as well
    broken = False
    for _ in range(500):  # the next poll re-reads the repository from its change record (bounded: 10 s)
        if (await client.get("/api/v1/repositories/team/app")).status_code == 200:
            break
        await asyncio.sleep(0.02)
    await assert_listed_and_searchable(client, "team/app")


async def test_a_follower_that_raises_does_not_fail_the_write(served: tuple[httpx.AsyncClient, Any]) -> None:
    """The store's events reach every follower after the write: one that breaks its promise (raises) is logged and
    skipped; the write stands and the others (the index here) still follow."""
    client, app = served
    events: EventBus = app.state.registry.events

    def broken(event: Event) -> None:
        raise RuntimeError("a listener that breaks its promise")

    async def broken_preparer(planned: Planned) -> None:
        raise RuntimeError("a preparer that breaks its promise")

    events.on_prepare(broken_preparer)
    events.subscribe(broken)
    await push_config(client, "team/app", b"{}")
    body = encode(manifest(b"{}"))
    assert (await put(client, "team/app", "v1", body)).status_code == 201
    await assert_listed_and_searchable(client, "team/app")
    assert (await client.delete(f"/v2/team/app/manifests/{digest_of(body)}")).status_code == 202
    summary = (await client.get("/api/v1/repositories/team/app")).json()
    assert summary["tags"] == [] and summary["manifests"] == 0


async def test_real_client_shapes_are_still_accepted(client: httpx.AsyncClient) -> None:
    """What docker, podman, buildx, oras, helm and cosign push: empty configs, artifacts with subjects, unknown
    fields, attestation children with unknown/unknown platforms, descriptor data and annotations."""
    await push_config(client, "team/app", b"{}")
    image = encode(manifest(b"{}", annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}))
    assert (await put(client, "team/app", "v1", image)).status_code == 201
    empty = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(b"{}"), "size": 2, "data": "e30="}
    artifact = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": empty,
        "layers": [
            {
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                "digest": digest_of(LAYER),
                "size": len(LAYER),
                "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="},
            }
        ],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest_of(image), "size": len(image)},
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        "x-unknown-extension": {"nested": [{"ok": True}]},
    }
    assert (await put(client, "team/app", "sig", encode(artifact))).status_code == 201
    helm = manifest(b"{}", "application/vnd.cncf.helm.config.v1+json")
    helm["layers"][0]["mediaType"] = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
    assert (await put(client, "team/app", "chart", encode(helm))).status_code == 201
    child = {"mediaType": OCI_MANIFEST, "digest": digest_of(image), "size": len(image)}
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**child, "platform": {"architecture": "arm64", "os": "linux", "variant": "v8", "os.features": []}},
            {
                **child,
                "platform": {"architecture": "unknown", "os": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
            },
        ],
    }
    assert (await put(client, "team/app", "multi", encode(index), OCI_INDEX)).status_code == 201
    docker_list = {**index, "mediaType": DOCKER_LIST}
    assert (await put(client, "team/app", "list", encode(docker_list), DOCKER_LIST)).status_code == 201
    await assert_listed_and_searchable(client, "team/app")


# Hypothesis: generated manifests and configs through the real PUT path (filesystem only: the parser and the
# index do not depend on the backend, and the examples must stay fast).
_names = itertools.count()


async def check_put(client: httpx.AsyncClient, name: str, body: bytes, media_type: str) -> None:
    before = (await client.get(f"/v2/{name}/manifests/{digest_of(body)}")).status_code
    response = await put(client, name, "t", body, media_type)
    assert response.status_code in (201, 400), response.text
    stored = await client.get(f"/v2/{name}/manifests/{digest_of(body)}")
    if response.status_code == 400:
        assert error_code(response) in ("MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN")
        assert stored.status_code == before  # refused means nothing stored (the same bytes may be there already)
        assert (await client.get(f"/v2/{name}/manifests/t")).status_code == 404
    else:
        assert stored.status_code == 200 and stored.content == body
    # Whatever happened, the repository (it holds the blobs and a first image) is listed and searchable.
    await assert_listed_and_searchable(client, name)
    assert (await client.get("/readyz")).status_code == 200


HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYPOTHESIS
@given(data=st.data(), config=configs)
async def test_generated_image_manifests_never_break_a_put(
    fs_client: httpx.AsyncClient, data: st.DataObject, config: bytes
) -> None:
    name = f"fuzz/image{next(_names)}"
    await push_config(fs_client, name, config)
    assert (await put(fs_client, name, "first", encode(manifest(config)))).status_code == 201
    body, media_type = data.draw(image_manifests((digest_of(config), len(config)), (digest_of(LAYER), len(LAYER))))
    await check_put(fs_client, name, body, media_type)


@HYPOTHESIS
@given(data=st.data(), config=configs)
async def test_generated_indexes_never_break_a_put(
    fs_client: httpx.AsyncClient, data: st.DataObject, config: bytes
) -> None:
    name = f"fuzz/index{next(_names)}"
    await push_config(fs_client, name, config)
    child = encode(manifest(config))
    assert (await put(fs_client, name, "first", child)).status_code == 201
    body, media_type = data.draw(index_manifests((digest_of(child), len(child))))
    await check_put(fs_client, name, body, media_type)
