"""The store goes away under a running app (the filesystem root removed, the S3 bucket deleted) and comes back.

While it is gone every storage-backed answer is `503 UNAVAILABLE` in the spec's error body, never `404 *_UNKNOWN`
(nothing is known) nor `500`; `/readyz` says why and `moorage_storage_up` is 0. Once it is back, both recover by
themselves.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import ClientFactory
from tests.api.helpers import OCI_MANIFEST, digest_of, error_code, push_blob, push_image
from tests.api.test_metrics import scrape, value
from tests.s3_server import MotoServer

NAME = "team/gone"


class Clock:
    """`time.monotonic` for the readiness cache: advanced by hand, so no test sleeps through it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += 10.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("registry.handlers.health.time.monotonic", clock)
    return clock


def remove_store(request: pytest.FixtureRequest, storage_config: dict[str, Any]) -> tuple[str, Any]:
    """Take the store away; returns (backend name, what to bring it back with)."""
    if "filesystem" in storage_config:
        root = Path(storage_config["filesystem"]["root"])
        # The push's work after its response (the change record that closes it) may still write while the tree is
        # removed ("Directory not empty", CI of 5f6a6ed): removed again until nothing is left.
        for _ in range(50):
            try:
                shutil.rmtree(root)
                break
            except OSError as e:
                if e.errno != errno.ENOTEMPTY:
                    raise
        assert not root.exists()
        return "filesystem", root
    server: MotoServer = request.getfixturevalue("s3_server")
    bucket = storage_config["s3"]["bucket"]
    server.drop_bucket(bucket)
    return "s3", (server, bucket)


def restore_store(kind: str, handle: Any) -> None:
    if kind == "filesystem":
        handle.mkdir()
    else:
        server, bucket = handle
        server.client().create_bucket(Bucket=bucket)


async def storage_up(client: httpx.AsyncClient, kind: str) -> float:
    samples = await scrape(client)
    key = ("moorage_storage_up", frozenset({("backend", kind)}))
    assert key in samples, sorted(name for name, _ in samples if name.startswith("moorage_storage"))
    return value(samples, "moorage_storage_up", backend=kind)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.request.method, response.request.url, response.text)
    assert response.headers["Retry-After"].isdigit()
    if response.request.method != "HEAD":
        assert error_code(response) == "UNAVAILABLE", response.text
        assert response.json()["errors"][0]["detail"].startswith("the storage backend is unavailable: ")


async def test_a_store_that_goes_away_answers_503_and_comes_back(
    client_factory: ClientFactory,
    storage_config: dict[str, Any],
    request: pytest.FixtureRequest,
    clock: Clock,
    tmp_path: Path,
) -> None:
    # The metadata index lives beside the data on the filesystem by default: out of the way of the removed root.
    client = await client_factory(sections={"index": {"path": str(tmp_path / "index.sqlite")}})
    manifest, _ = await push_image(client, NAME, "v1", seed="before")
    layer = digest_of(b"layer-before" * 100)
    assert (await client.get("/readyz")).status_code == 200

    kind, handle = remove_store(request, storage_config)
    clock.tick()
    ready = await client.get("/readyz")
    assert_unavailable(ready)
    reason = ready.json()["errors"][0]["detail"]
    assert ("bucket does not exist" if kind == "s3" else "root directory is missing") in reason, reason
    assert await storage_up(client, kind) == 0

    for reference in ("v1", manifest):
        assert_unavailable(await client.get(f"/v2/{NAME}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}))
        assert_unavailable(await client.head(f"/v2/{NAME}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}))
    assert_unavailable(await client.get(f"/v2/{NAME}/blobs/{layer}"))
    assert_unavailable(await client.head(f"/v2/{NAME}/blobs/{layer}"))
    assert_unavailable(await client.get(f"/v2/{NAME}/tags/list"))
    assert_unavailable(await client.post(f"/v2/{NAME}/blobs/uploads/"))
    data = b"pushed while gone"
    assert_unavailable(
        await client.post(f"/v2/{NAME}/blobs/uploads/", params={"digest": digest_of(data)}, content=data)
    )
    # The API base does not touch storage: load balancers probing it see the process alive.
    assert (await client.get("/v2/")).status_code == 200
    assert (await client.get("/healthz")).status_code == 200

    restore_store(kind, handle)
    clock.tick()
    assert (await client.get("/readyz")).status_code == 200
    assert await storage_up(client, kind) == 1
    # What was stored went with the store: now "unknown" is the truth. New pushes work.
    gone = await client.get(f"/v2/{NAME}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert gone.status_code == 404 and error_code(gone) == "MANIFEST_UNKNOWN"
    await push_blob(client, NAME, data)
    await push_image(client, NAME, "v2", seed="after")
    pulled = await client.get(f"/v2/{NAME}/manifests/v2", headers={"Accept": OCI_MANIFEST})
    assert pulled.status_code == 200
