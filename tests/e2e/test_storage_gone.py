"""A store that is gone or full, under a running `moorage serve` (issue 12 item 5).

- S3: the bucket is deleted (objects, then the bucket, through boto3) while the server runs. `/readyz` turns 503
  with the reason, and every push and pull answers `503 UNAVAILABLE` in the spec's JSON body (never 500, never
  `404 MANIFEST_UNKNOWN`: nothing is known while the bucket is missing). The bucket is created again: `/readyz` is
  200 and pushes work, with no restart.
- Filesystem: the root is on a small tmpfs (tests/tmpfs.py) that really fills up. A push that does not fit answers
  `507 INSUFFICIENT_STORAGE`, whether the disk fills in a monolithic upload, mid-chunk or at commit, and leaves no
  temporary file or partial chunk behind; once space is freed the same push goes through.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.tmpfs import MiB, files_under, fill, small_tmpfs

from .conftest import MoorageFactory, RunningServer, S3Bucket
from .uploads import (
    OCTET_STREAM,
    client,
    describe,
    digest_of,
    error_codes,
    finish,
    monolithic_upload,
    on,
    patch_chunk,
    patch_ok,
    random_bytes,
    read_blob,
    start_upload,
    with_query,
)

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# /readyz caches its probe for a second.
READY_WAIT = 5.0
TMPFS_SIZE = 24 * MiB


def push_image(http: httpx.Client, server: RunningServer, repo: str, tag: str, seed: str) -> str:
    """Push a config, one layer and a manifest; return the manifest's digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = random_bytes(64 * 1024, seed)
    for blob in (config, layer):
        monolithic_upload(http, server, repo, blob)
    body = manifest_bytes(config, layer)
    response = http.put(f"{server.url}/v2/{repo}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 201, describe(response)
    return digest_of(body)


def manifest_bytes(config: bytes, layer: bytes) -> bytes:
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest_of(config),
            "size": len(config),
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(layer), "size": len(layer)}
        ],
    }
    return json.dumps(manifest).encode()


def wait_ready(http: httpx.Client, server: RunningServer, status: int) -> httpx.Response:
    """Poll `/readyz` until it answers `status` (the probe result is cached for a second)."""
    deadline = time.monotonic() + READY_WAIT
    while True:
        response = http.get(f"{server.url}/readyz")
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, describe(response)
            return response
        time.sleep(0.2)


def storage_gauges(http: httpx.Client, server: RunningServer) -> dict[str, float]:
    """`moorage_storage_*` samples of `/metrics`, by name (one backend per server)."""
    response = http.get(f"{server.url}/metrics")
    assert response.status_code == 200, describe(response)
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name.startswith("moorage_storage_") and not sample.name.startswith("moorage_storage_operation")
    }


def wait_gauge(http: httpx.Client, server: RunningServer, name: str, wanted: Callable[[float], bool]) -> float:
    """Scrape until the gauge `name` satisfies `wanted` (or READY_WAIT is over); its last value."""
    deadline = time.monotonic() + READY_WAIT
    while True:
        current = storage_gauges(http, server)[name]
        if wanted(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.2)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, describe(response)
    assert response.headers["retry-after"].isdigit(), describe(response)
    if response.request.method != "HEAD":
        assert response.headers["content-type"].startswith("application/json"), describe(response)
        assert error_codes(response) == ["UNAVAILABLE"], describe(response)


def assert_insufficient_storage(response: httpx.Response) -> None:
    assert response.status_code == 507, describe(response)
    assert response.headers["content-type"].startswith("application/json"), describe(response)
    assert error_codes(response) == ["INSUFFICIENT_STORAGE"], describe(response)


# -- S3: the bucket is deleted, then created again -------------------------------------------------------------------


def test_bucket_deleted_under_a_running_server_then_recreated(
    moorage_factory: MoorageFactory, s3_bucket: S3Bucket
) -> None:
    server = moorage_factory(storage=s3_bucket.storage())
    repo = "e2e/gone/bucket"
    with client() as http:
        manifest = push_image(http, server, repo, "v1", seed="before")
        layer = digest_of(random_bytes(64 * 1024, "before"))
        wait_ready(http, server, 200)
        assert storage_gauges(http, server)["moorage_storage_up"] == 1

        s3_bucket.server.drop_bucket(s3_bucket.name)

        ready = wait_ready(http, server, 503)
        assert_unavailable(ready)
        assert "the bucket does not exist" in ready.json()["errors"][0]["detail"], describe(ready)
        assert storage_gauges(http, server)["moorage_storage_up"] == 0
        # Pulls: by tag and by digest, manifests and blobs, GET and HEAD.
        for reference in ("v1", manifest):
            url = f"{server.url}/v2/{repo}/manifests/{reference}"
            assert_unavailable(http.get(url, headers={"Accept": OCI_MANIFEST}))
            assert_unavailable(http.head(url, headers={"Accept": OCI_MANIFEST}))
        assert_unavailable(http.get(f"{server.url}/v2/{repo}/blobs/{layer}"))
        assert_unavailable(http.head(f"{server.url}/v2/{repo}/blobs/{layer}"))
        assert_unavailable(http.get(f"{server.url}/v2/{repo}/tags/list"))
        # Pushes: a session, a monolithic upload, a manifest.
        assert_unavailable(http.post(f"{server.url}/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"}))
        data = b"pushed while the bucket is gone"
        assert_unavailable(
            http.post(
                with_query(f"{server.url}/v2/{repo}/blobs/uploads/", digest=digest_of(data)),
                content=data,
                headers=OCTET_STREAM,
            )
        )
        body = manifest_bytes(b"{}", data)
        assert_unavailable(
            http.put(f"{server.url}/v2/{repo}/manifests/v2", content=body, headers={"Content-Type": OCI_MANIFEST})
        )
        assert server.proc.poll() is None, server.describe()

        s3_bucket.client().create_bucket(Bucket=s3_bucket.name)

        wait_ready(http, server, 200)
        assert storage_gauges(http, server)["moorage_storage_up"] == 1
        # The old content went with the bucket ("unknown" is the truth now); new pushes and pulls work.
        gone = http.get(f"{server.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert gone.status_code == 404 and error_codes(gone) == ["MANIFEST_UNKNOWN"], describe(gone)
        manifest = push_image(http, server, repo, "v1", seed="after")
        pulled = http.get(f"{server.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert pulled.status_code == 200 and digest_of(pulled.content) == manifest, describe(pulled)
        assert read_blob(http, server, repo, digest_of(random_bytes(64 * 1024, "after"))) == random_bytes(
            64 * 1024, "after"
        )
    log = server.log()
    assert "unexpected error" not in log, server.describe()
    assert "storage unavailable" in log


# -- Filesystem: the disk fills up, then space is freed -------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small-disk", TMPFS_SIZE) as mount:
        yield mount


def leftovers(root: Path) -> list[str]:
    """Temporary files and upload chunks: what a failed write must not leave behind."""
    return [f for f in files_under(root) if f.startswith(".moorage-tmp/") or "/chunks/" in f]


def settled_leftovers(root: Path) -> list[str]:
    """`leftovers` once the server's writes in the background (the index's change records after a push) are done:
    a write in flight has its temporary file for a moment."""
    for _ in range(100):
        found = leftovers(root)
        if not found:
            return found
        time.sleep(0.02)
    return leftovers(root)


def chunks_of(root: Path, repo: str, location: str) -> list[str]:
    upload_id = location.split("?")[0].rstrip("/").rsplit("/", 1)[1]
    directory = root / "docker/registry/v2/repositories" / repo / "_uploads" / upload_id
    return [f for f in files_under(directory) if f.startswith("chunks/")] if directory.exists() else []


def test_full_disk_answers_507_leaves_nothing_behind_and_recovers(
    moorage_factory: MoorageFactory, small_disk: Path
) -> None:
    root = small_disk / "registry"
    server = moorage_factory(root, env={"MOORAGE_STORAGE__FILESYSTEM__FSYNC": "false"})
    repo = "e2e/full/disk"
    filler = small_disk / "filler"
    with client() as http:
        gauges = storage_gauges(http, server)
        assert gauges["moorage_storage_up"] == 1
        assert 0 < gauges["moorage_storage_free_bytes"] <= TMPFS_SIZE

        # 1. A monolithic upload bigger than what is left.
        fill(filler, leave=3 * MiB)
        big = random_bytes(6 * MiB, "full-monolithic")
        response = http.post(
            with_query(f"{server.url}/v2/{repo}/blobs/uploads/", digest=digest_of(big)),
            content=big,
            headers=OCTET_STREAM,
        )
        assert_insufficient_storage(response)
        assert leftovers(root) == []
        assert http.head(f"{server.url}/v2/{repo}/blobs/{digest_of(big)}").status_code == 404
        # Reads still work on a full disk, so the server stays ready (pulls go on); the gauge shows the space left.
        wait_ready(http, server, 200)
        # (the probe behind it is cached for a second)
        assert wait_gauge(http, server, "moorage_storage_free_bytes", lambda free: free < 4 * MiB) < 4 * MiB

        # 2. The disk fills in the middle of the second chunk.
        first, second = random_bytes(1 * MiB, "full-chunk-1"), random_bytes(4 * MiB, "full-chunk-2")
        location = start_upload(http, server, repo)
        location = patch_ok(http, server, location, first, 0)
        assert_insufficient_storage(patch_chunk(http, server, location, second, len(first)))
        # Only the first chunk is stored (its name is its offset): none of the second, and no temporary file.
        assert [Path(c).name for c in leftovers(root)] == ["0" * 20], leftovers(root)
        assert chunks_of(root, repo, location) == ["chunks/" + "0" * 20]
        status = http.get(on(server, location))
        assert status.status_code == 204 and status.headers["range"] == f"0-{len(first) - 1}", describe(status)

        # Space is freed: the same chunk goes through, and the upload completes. No restart.
        filler.unlink()
        location = patch_ok(http, server, location, second, len(first))
        response = finish(http, server, location, digest_of(first + second))
        assert response.status_code == 201, describe(response)
        assert read_blob(http, server, repo, digest_of(first + second)) == first + second

        # 3. The disk fills at commit: two chunks are concatenated into the blob, which no longer fits.
        one, two = random_bytes(3 * MiB, "full-commit-1"), random_bytes(3 * MiB, "full-commit-2")
        location = start_upload(http, server, repo)
        location = patch_ok(http, server, location, one, 0)
        location = patch_ok(http, server, location, two, len(one))
        fill(filler, leave=2 * MiB)
        digest = digest_of(one + two)
        assert_insufficient_storage(finish(http, server, location, digest))
        # The session's two chunks stay (the client may retry), and nothing else: no temporary file.
        assert len(leftovers(root)) == 2 and len(chunks_of(root, repo, location)) == 2, leftovers(root)
        assert http.head(f"{server.url}/v2/{repo}/blobs/{digest}").status_code == 404
        # 4. A manifest, its blobs in place, on a disk with no space at all; and a blob.
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": "on-full"}).encode()
        layer = random_bytes(64 * 1024, "manifest-on-full")
        for blob in (config, layer):
            monolithic_upload(http, server, repo, blob)
        fill(small_disk / "filler-2")
        body = manifest_bytes(config, layer)
        url = f"{server.url}/v2/{repo}/manifests/v9"
        assert_insufficient_storage(http.put(url, content=body, headers={"Content-Type": OCI_MANIFEST}))
        for reference in ("v9", digest_of(body)):
            response = http.get(f"{server.url}/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
            assert response.status_code == 404, describe(response)
        other = random_bytes(64 * 1024, "blob-on-full")
        response = http.post(
            with_query(f"{server.url}/v2/{repo}/blobs/uploads/", digest=digest_of(other)),
            content=other,
            headers=OCTET_STREAM,
        )
        assert_insufficient_storage(response)
        assert len(leftovers(root)) == 2, leftovers(root)  # still only the session of step 3

        (small_disk / "filler-2").unlink()
        filler.unlink()
        response = finish(http, server, location, digest)
        assert response.status_code == 201, describe(response)
        assert read_blob(http, server, repo, digest) == one + two
        push_image(http, server, repo, "v1", seed="after-full")
        assert settled_leftovers(root) == []
    log = server.log()
    assert "unexpected error" not in log, server.describe()
    assert "storage full" in log
