"""Stateless replicas: two `moorage serve` processes (A and B) on one S3 bucket, as behind a load balancer.

Neither replica has `http.secret` configured: the first to start generates one and stores it in the bucket
(`moorage/http-secret`), so an upload session signed by one replica is accepted by the other.
"""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path

import httpx
import pytest

from .conftest import MoorageFactory, RunningServer, S3Bucket, Skopeo
from .images import OciLayout, assert_same_blobs, small_image
from .uploads import (
    client,
    describe,
    digest_of,
    error_codes,
    finish,
    on,
    patch_ok,
    random_bytes,
    read_blob,
    start_upload,
)

pytestmark = pytest.mark.e2e

HTTP_SECRET_KEY = "moorage/http-secret"
MiB = 1024 * 1024


@pytest.fixture
def replicas(moorage_factory: MoorageFactory, s3_bucket: S3Bucket) -> tuple[RunningServer, RunningServer]:
    """Replicas A and B on one fresh bucket, started one after the other, without a configured secret."""
    a = moorage_factory(storage=s3_bucket.storage())
    b = moorage_factory(storage=s3_bucket.storage())
    return a, b


def assert_clean_bucket(bucket: S3Bucket, repo: str) -> None:
    """No upload session objects and no unfinished multipart upload left behind."""
    sessions = bucket.keys(f"docker/registry/v2/repositories/{repo}/_uploads/")
    assert sessions == [], f"upload session objects left behind: {sessions}"
    assert bucket.multipart_uploads() == [], f"multipart uploads left behind: {bucket.multipart_uploads()}"


def assert_one_correct_blob(bucket: S3Bucket, digest: str, data: bytes | None = None) -> None:
    keys = bucket.blob_data_keys().get(digest)
    assert keys == [bucket.data_key(digest)], f"{digest}: data objects {keys}"
    algorithm = digest.partition(":")[0]
    assert bucket.hash_object(keys[0], algorithm) == digest, f"{keys[0]} does not hash to {digest}"
    if data is not None:
        assert bucket.read(keys[0]) == data


@pytest.mark.parametrize("flow", ["put-on-b", "last-chunk-in-put-on-a"])
def test_chunked_upload_across_replicas(
    replicas: tuple[RunningServer, RunningServer], s3_bucket: S3Bucket, flow: str
) -> None:
    a, b = replicas
    repo = "e2e/replicas/chunked"
    # Chunk 1 is far below S3's 5 MiB part minimum; chunk 2 is above it (a multipart object of its own).
    chunk1 = random_bytes(MiB + 17, f"chunk1-{flow}")
    chunk2 = random_bytes(6 * MiB + 3, f"chunk2-{flow}")
    data = chunk1 + chunk2
    digest = digest_of(data)
    with client() as http:
        location = start_upload(http, a, repo)
        assert not location.startswith("http"), f"the Location is relative: {location}"
        location = patch_ok(http, b, location, chunk1, 0)
        # The session's state is in the bucket: A reports the chunk B received.
        status = http.get(on(a, location))
        assert status.status_code == 204, describe(status)
        assert status.headers["range"] == f"0-{len(chunk1) - 1}", describe(status)
        if flow == "put-on-b":
            location = patch_ok(http, a, location, chunk2, len(chunk1))
            response = finish(http, b, location, digest)
        else:
            response = finish(http, a, location, digest, chunk2)
        assert response.status_code == 201, describe(response)
        assert response.headers["docker-content-digest"] == digest
        assert response.headers["location"] == f"/v2/{repo}/blobs/{digest}"

        for server in (a, b):
            head = http.head(f"{server.url}/v2/{repo}/blobs/{digest}")
            assert head.status_code == 200, describe(head)
            assert head.headers["content-length"] == str(len(data))
            assert read_blob(http, server, repo, digest) == data
        # The session is gone on both replicas.
        for server in (a, b):
            gone = http.get(on(server, location))
            assert gone.status_code == 404, describe(gone)
            assert error_codes(gone) == ["BLOB_UPLOAD_UNKNOWN"]
    assert_one_correct_blob(s3_bucket, digest, data)
    assert_clean_bucket(s3_bucket, repo)


def test_sha512_upload_started_on_a_finishes_on_b(
    replicas: tuple[RunningServer, RunningServer], s3_bucket: S3Bucket
) -> None:
    a, b = replicas
    repo = "e2e/replicas/sha512"
    chunk1 = random_bytes(700 * 1024, "sha512-1")
    chunk2 = random_bytes(2 * MiB + 1, "sha512-2")
    data = chunk1 + chunk2
    digest = digest_of(data, "sha512")
    with client() as http:
        location = start_upload(http, a, repo, **{"digest-algorithm": "sha512"})
        location = patch_ok(http, b, location, chunk1, 0)
        location = patch_ok(http, a, location, chunk2, len(chunk1))
        response = finish(http, b, location, digest)
        assert response.status_code == 201, describe(response)
        assert response.headers["docker-content-digest"] == digest
        for server in (a, b):
            assert read_blob(http, server, repo, digest) == data
    assert_one_correct_blob(s3_bucket, digest, data)
    assert_clean_bucket(s3_bucket, repo)


def test_generated_secret_is_shared_through_the_bucket(moorage_factory: MoorageFactory, s3_bucket: S3Bucket) -> None:
    # Both replicas start at the same time: they race to create the secret, and must end up with the same one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(moorage_factory, storage=s3_bucket.storage()) for _ in range(2)]
        a, b = (future.result() for future in futures)
    for server in (a, b):
        assert "MOORAGE_HTTP__SECRET" not in server.moorage_env
    secret = s3_bucket.read(HTTP_SECRET_KEY)
    assert len(secret.strip()) >= 32, secret

    repo = "e2e/replicas/secret"
    data = random_bytes(300 * 1024, "secret")
    digest = digest_of(data)
    with client() as http:
        location = start_upload(http, a, repo)
        assert "_state=" in location, location
        location = patch_ok(http, b, location, data[:1000], 0)
        location = patch_ok(http, a, location, data[1000:], 1000)
        response = finish(http, b, location, digest)
        assert response.status_code == 201, describe(response)
        assert read_blob(http, a, repo, digest) == data

        # The state really is checked: a replica with another (configured) secret rejects A's session...
        other = moorage_factory(storage=s3_bucket.storage(), env={"MOORAGE_HTTP__SECRET": "another-secret-0123456789"})
        location = start_upload(http, a, repo)
        rejected = http.get(on(other, location))
        assert rejected.status_code == 400, describe(rejected)
        assert error_codes(rejected) == ["BLOB_UPLOAD_INVALID"]
        accepted = http.get(on(b, location))
        assert accepted.status_code == 204, describe(accepted)
    # ...and a configured secret does not replace the shared one in the bucket.
    assert s3_bucket.read(HTTP_SECRET_KEY) == secret


def finish_together(sessions: list[tuple[httpx.Client, RunningServer, str]], digest: str) -> list[httpx.Response]:
    """PUT `?digest=` for every (client, server, location) at the same instant (as near as threads get)."""
    barrier = threading.Barrier(len(sessions))

    def put(http: httpx.Client, server: RunningServer, location: str) -> httpx.Response:
        barrier.wait(timeout=10)
        return finish(http, server, location, digest)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        futures = [pool.submit(put, *session) for session in sessions]
        return [future.result() for future in futures]


@pytest.mark.parametrize("chunks", [1, 2], ids=["one-chunk", "two-chunks"])
def test_same_digest_committed_on_both_at_once(
    replicas: tuple[RunningServer, RunningServer], s3_bucket: S3Bucket, chunks: int
) -> None:
    """Two sessions with the same content, one per replica, completed at the same instant: both 201, one blob.

    One chunk: the chunk object is moved to `data` exclusively; two chunks: they are concatenated into an exclusive
    multipart `data` object. Either way the loser is a dedup hit. A few rounds, to give the race chances to bite.
    """
    a, b = replicas
    repo = "e2e/replicas/commit-race"
    with client() as http_a, client() as http_b:
        for round_ in range(3):
            data = random_bytes(6 * MiB + round_, f"race-{chunks}-{round_}")
            digest = digest_of(data)
            cut = len(data) // 2 if chunks == 2 else len(data)
            locations = {}
            for server, http in ((a, http_a), (b, http_b)):
                location = start_upload(http, server, repo)
                location = patch_ok(http, server, location, data[:cut], 0)
                if cut < len(data):
                    location = patch_ok(http, server, location, data[cut:], cut)
                locations[server.port] = location
            responses = finish_together([(http_a, a, locations[a.port]), (http_b, b, locations[b.port])], digest)
            for response in responses:
                assert response.status_code == 201, describe(response)
                assert response.headers["docker-content-digest"] == digest
            assert_one_correct_blob(s3_bucket, digest, data)
            for server in (a, b):
                assert read_blob(http_a, server, repo, digest) == data
    assert_clean_bucket(s3_bucket, repo)


def test_push_through_a_pull_through_b(
    replicas: tuple[RunningServer, RunningServer], s3_bucket: S3Bucket, skopeo: Skopeo, tmp_path: Path
) -> None:
    a, b = replicas
    src = OciLayout(tmp_path / "src")
    images = [small_image(src, name=f"replica-{i}", tag=f"v{i}") for i in range(2)]
    repo = "e2e/replicas/push-a-pull-b"
    for i in range(len(images)):
        skopeo.push(src.path, f"v{i}", a.ref(repo, f"v{i}"))

    out = tmp_path / "pulled"
    for i, image in enumerate(images):
        skopeo.pull(b.ref(repo, f"v{i}"), out, f"v{i}")
        pulled = OciLayout.open(out)
        assert pulled.ref(f"v{i}").digest == image.manifest.digest
        assert set(assert_same_blobs(src, pulled, image.manifest.digest)) == {
            image.manifest.digest,
            *image.blob_digests,
        }
        assert skopeo.inspect(b.ref(repo, f"v{i}"))["Digest"] == image.manifest.digest
    assert skopeo.list_tags(b.ref(repo)) == ["v0", "v1"]
    assert b.get_json("/v2/_catalog") == {"repositories": [repo]}
    assert_clean_bucket(s3_bucket, repo)


def test_concurrent_pushes_of_one_image_through_both(
    replicas: tuple[RunningServer, RunningServer], s3_bucket: S3Bucket, skopeo: Skopeo, tmp_path: Path
) -> None:
    a, b = replicas
    src = OciLayout(tmp_path / "src")
    big = src.add_large_layer(12 * MiB, seed=12)  # above the part size: multipart uploads on both sides
    small = src.add_layer({"etc/motd": b"pushed twice at once\n"}, compress=True)
    image = src.add_image([big, small], tag="v1")
    repo = "e2e/replicas/concurrent"

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(skopeo.push, src.path, "v1", server.ref(repo, "v1")) for server in (a, b)]
        for future in futures:
            future.result()  # both pushes succeed (a SkopeoError carries skopeo's stderr)

    expected = {image.manifest.digest, *image.blob_digests}
    data_keys = s3_bucket.blob_data_keys()
    assert set(data_keys) == expected, f"blobs in the bucket: {sorted(data_keys)}, pushed: {sorted(expected)}"
    for digest in expected:
        assert_one_correct_blob(s3_bucket, digest, src.read_blob(digest))
    assert_clean_bucket(s3_bucket, repo)

    for server in (a, b):
        out = tmp_path / f"pulled-{server.port}"
        skopeo.pull(server.ref(repo, "v1"), out, "v1")
        assert OciLayout.open(out).ref("v1").digest == image.manifest.digest
        assert_same_blobs(src, OciLayout.open(out), image.manifest.digest)
    assert skopeo.list_tags(a.ref(repo)) == ["v1"]
