"""`/metrics`: counts that move with pushes and pulls, with labels that stay bounded."""

from __future__ import annotations

import base64

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import ClientFactory
from tests.api.helpers import OCI_MANIFEST, at, digest_of, push_blob, push_image

# Nothing here depends on the storage backend: the filesystem only (test_blobs, test_uploads, ... cover S3).
pytestmark = pytest.mark.parametrize("storage_config", ["filesystem"], indirect=True)

MANIFEST_ROUTE = "/v2/{name:path}/manifests/{reference}"


async def scrape(client: httpx.AsyncClient, **kwargs: object) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def test_metrics_move_with_pushes_and_pulls(client: httpx.AsyncClient) -> None:
    digest, body = await push_image(client, "team/app", "stable")
    for _ in range(3):
        pulled = await client.get("/v2/team/app/manifests/stable", headers={"Accept": OCI_MANIFEST})
        assert pulled.status_code == 200
    assert (await client.get("/v2/team/app/manifests/nope")).status_code == 404

    samples = await scrape(client)
    requests = "moorage_http_requests_total"
    assert value(samples, requests, method="PUT", route=MANIFEST_ROUTE, status="201") == 1
    assert value(samples, requests, method="GET", route=MANIFEST_ROUTE, status="200") == 3
    assert value(samples, requests, method="GET", route=MANIFEST_ROUTE, status="404") == 1
    assert value(samples, requests, method="POST", route="/v2/{name:path}/blobs/uploads/", status="201") == 2
    durations = "moorage_http_request_duration_seconds_count"
    assert value(samples, durations, method="GET", route=MANIFEST_ROUTE, status="200") == 3
    assert value(samples, "moorage_http_received_bytes_total", method="PUT", route=MANIFEST_ROUTE) == len(body)
    assert value(samples, "moorage_http_sent_bytes_total", method="GET", route=MANIFEST_ROUTE) >= 3 * len(body)
    assert value(samples, "moorage_uploads_in_progress") == 0
    assert value(samples, "moorage_blob_uploads_committed_total") == 2
    # What the store did, whoever asked (its events, counted by type; a HEAD is no pull).
    events = "moorage_store_events_total"
    assert value(samples, events, type="blob.pushed") == 2
    assert value(samples, events, type="manifest.pushed") == 1 and value(samples, events, type="tag.set") == 1
    assert value(samples, events, type="manifest.pulled") == 3
    assert (await client.delete("/v2/team/app/manifests/stable")).status_code == 202
    assert value(await scrape(client), events, type="tag.deleted") == 1
    assert total(samples, "moorage_storage_operation_duration_seconds_count", operation="get_content") > 0
    backends = {dict(labels)["backend"] for (name, labels) in samples if name.startswith("moorage_storage_")}
    assert len(backends) == 1 and backends <= {"filesystem", "s3"}

    # Bounded label sets: no repository name, reference or digest ever becomes a label value.
    for (name, labels), _ in samples.items():
        for label, label_value in labels:
            assert "team" not in label_value and "sha256" not in label_value and "stable" not in label_value, (
                name,
                label,
                label_value,
            )
    assert digest not in str(samples)


async def test_dedup_hits_and_saved_bytes(client: httpx.AsyncClient) -> None:
    data = b"the same layer" * 1000
    await push_blob(client, "one/app", data)
    before = await scrape(client)
    assert value(before, "moorage_blob_dedup_hits_total") == 0
    await push_blob(client, "two/app", data)  # monolithic: the bytes arrive, then turn out to exist
    # Chunked: POST, PATCH, PUT.
    started = await client.post("/v2/three/app/blobs/uploads/")
    patched = await client.patch(started.headers["Location"], content=data)
    finished = await client.put(at(patched.headers["Location"], digest=digest_of(data)))
    assert finished.status_code == 201
    after = await scrape(client)
    assert value(after, "moorage_blob_dedup_hits_total") == 2
    assert value(after, "moorage_blob_dedup_saved_bytes_total") == 2 * len(data)
    assert value(after, "moorage_blob_uploads_committed_total") == 3


async def test_unknown_methods_share_one_label(client: httpx.AsyncClient) -> None:
    for method in ("FOO", "BAR", "BAZ"):
        await client.request(method, "/v2/")
    samples = await scrape(client)
    methods = {dict(labels)["method"] for (name, labels) in samples if name == "moorage_http_requests_total"}
    assert "FOO" not in methods and "other" in methods


async def test_metrics_behind_basic_auth(client_factory: ClientFactory) -> None:
    client = await client_factory(sections={"metrics": {"username": "prometheus", "password": "s3cret-scrape"}})
    anonymous = await client.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    wrong = base64.b64encode(b"prometheus:guess").decode()
    assert (await client.get("/metrics", headers={"Authorization": f"Basic {wrong}"})).status_code == 401
    assert (await client.get("/metrics", headers={"Authorization": "Basic !!!"})).status_code == 401
    await scrape(client, auth=("prometheus", "s3cret-scrape"))


async def test_metrics_off_or_elsewhere(client_factory: ClientFactory) -> None:
    disabled = await client_factory(sections={"metrics": {"enabled": False}})
    assert (await disabled.get("/metrics")).status_code == 404
    assert (await disabled.get("/v2/")).status_code == 200
    other_port = await client_factory(sections={"metrics": {"port": 9102}})
    assert (await other_port.get("/metrics")).status_code == 404
