"""skopeo against a live `moorage serve` on S3 (moto's standalone server over HTTP, a fresh bucket per test).

Blob GETs answer 307 to a presigned URL of the store unless `storage.redirect.disable` is set: the round trip runs
both ways, and the presigned GETs must really reach moto (its request log shows them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from .conftest import MoorageFactory, RunningServer, S3Bucket, Skopeo
from .images import OciLayout, assert_same_blobs, file_digest, multiarch_index, small_image
from .server_logs import statuses
from .uploads import client, describe, monolithic_upload, random_bytes

pytestmark = pytest.mark.e2e

REDIRECT_DISABLED = {"MOORAGE_STORAGE__REDIRECT__DISABLE": "true"}
LARGE_LAYER_SIZE = 64 * 1024 * 1024
LARGE_TIMEOUT = 240.0


@pytest.fixture
def s3_moorage(request: pytest.FixtureRequest, moorage_factory: MoorageFactory, s3_bucket: S3Bucket) -> RunningServer:
    """A moorage server on a fresh bucket. Parametrize indirectly with "redirect" (default) or "no-redirect"."""
    mode: str = getattr(request, "param", "redirect")
    assert mode in ("redirect", "no-redirect")
    return moorage_factory(storage=s3_bucket.storage(), env=REDIRECT_DISABLED if mode == "no-redirect" else None)


def redirects_enabled(server: RunningServer) -> bool:
    return server.moorage_env.get("MOORAGE_STORAGE__REDIRECT__DISABLE") != "true"


def presigned_gets(bucket: S3Bucket, digest: str) -> int:
    """How many presigned GETs (signature in the query, i.e. from a registry client) moto served for a blob."""
    path = f"/{bucket.name}/{bucket.data_key(digest)}?"
    pattern = re.compile(r'"GET (\S+) HTTP/[\d.]+" 200')
    log = bucket.server.log_path.read_text(errors="replace")
    return sum(
        1
        for m in pattern.finditer(log)
        if m.group(1).startswith(path) and "X-Amz-Signature" in parse_qs(urlsplit(m.group(1)).query)
    )


def assert_stored(bucket: S3Bucket, src: OciLayout, digests: list[str]) -> None:
    """Each blob is exactly one object in the Distribution layout of the bucket, holding exactly the pushed bytes."""
    data_keys = bucket.blob_data_keys()
    for digest in digests:
        assert data_keys.get(digest) == [bucket.data_key(digest)], f"{digest}: {data_keys.get(digest)}"
        assert bucket.read(bucket.data_key(digest)) == src.read_blob(digest), f"{digest}: stored bytes differ"


@pytest.mark.parametrize("s3_moorage", ["redirect", "no-redirect"], indirect=True)
def test_push_pull_round_trip(s3_moorage: RunningServer, s3_bucket: S3Bucket, skopeo: Skopeo, tmp_path: Path) -> None:
    src = OciLayout(tmp_path / "src")
    images = [small_image(src, name=f"s3-round-trip-{i}", tag=f"v{i}") for i in range(2)]
    repo = "e2e/s3-round-trip"
    for i in range(len(images)):
        skopeo.push(src.path, f"v{i}", s3_moorage.ref(repo, f"v{i}"))

    out = tmp_path / "pulled"
    for i, image in enumerate(images):
        skopeo.pull(s3_moorage.ref(repo, f"v{i}"), out, f"v{i}")
        pulled = OciLayout.open(out)
        assert pulled.ref(f"v{i}").digest == image.manifest.digest
        compared = assert_same_blobs(src, pulled, image.manifest.digest)
        assert set(compared) == {image.manifest.digest, *image.blob_digests}
        assert_stored(s3_bucket, src, [image.manifest.digest, *image.blob_digests])
    first = images[0].manifest.digest
    skopeo.pull(s3_moorage.ref(repo, first), out, "by-digest")
    assert OciLayout.open(out).ref("by-digest").digest == first
    assert skopeo.list_tags(s3_moorage.ref(repo)) == ["v0", "v1"]

    # How the blobs travelled: through the presigned URL (307, then a signed GET at moto), or through moorage.
    gets = statuses(s3_moorage, "GET", "blob", repo)
    blobs = {digest for image in images for digest in image.blob_digests}
    assert len(gets) >= len(blobs), f"blob GETs answered: {gets}"
    assert set(gets) == ({307} if redirects_enabled(s3_moorage) else {200}), f"blob GETs answered: {gets}"
    for digest in blobs:
        if redirects_enabled(s3_moorage):
            assert presigned_gets(s3_bucket, digest) >= 1, f"skopeo did not follow the redirect for {digest}"
        else:
            assert presigned_gets(s3_bucket, digest) == 0, f"a presigned GET of {digest} with redirects off"


def test_inspect_list_tags_and_delete(
    s3_moorage: RunningServer, s3_bucket: S3Bucket, skopeo: Skopeo, tmp_path: Path
) -> None:
    src = OciLayout(tmp_path / "src")
    v1 = small_image(src, name="s3-inspect-v1", tag="v1")
    v2 = small_image(src, name="s3-inspect-v2", architecture="arm64", tag="v2")
    repo = "e2e/s3-inspect"
    skopeo.push(src.path, "v1", s3_moorage.ref(repo, "v1"))
    skopeo.push(src.path, "v1", s3_moorage.ref(repo, "latest"))
    skopeo.push(src.path, "v2", s3_moorage.ref(repo, "v2"))

    info = skopeo.inspect(s3_moorage.ref(repo, "v1"))
    assert info["Digest"] == v1.manifest.digest
    assert info["Layers"] == [layer.digest for layer in v1.layers]
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    assert info["Labels"] == {"e2e.name": "s3-inspect-v1"}
    assert sorted(info["RepoTags"]) == ["latest", "v1", "v2"]
    assert skopeo.inspect(s3_moorage.ref(repo, v2.manifest.digest))["Architecture"] == "arm64"
    assert skopeo.inspect_raw(s3_moorage.ref(repo, "v1")) == src.read_blob(v1.manifest.digest)
    # The config is a blob: with redirects on, skopeo fetches it from the presigned URL.
    assert skopeo.inspect_raw(s3_moorage.ref(repo, "v2"), "--config") == src.read_blob(v2.config.digest)
    assert skopeo.list_tags(s3_moorage.ref(repo)) == ["latest", "v1", "v2"]
    assert s3_moorage.get_json("/v2/_catalog") == {"repositories": [repo]}

    # Deleting v2's manifest (by digest) removes it and its tag; v1 under two tags is untouched.
    skopeo.delete(s3_moorage.ref(repo, "v2"))
    assert statuses(s3_moorage, "DELETE", "manifest", repo) == [202]
    for reference in ("v2", v2.manifest.digest):
        assert "manifest unknown" in skopeo.inspect_fails(s3_moorage.ref(repo, reference))
    response = s3_moorage.get(f"/v2/{repo}/manifests/{v2.manifest.digest}")
    assert response.status_code == 404, response.text
    assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert skopeo.list_tags(s3_moorage.ref(repo)) == ["latest", "v1"]
    revision = f"docker/registry/v2/repositories/{repo}/_manifests/revisions/sha256/{v2.manifest.digest[7:]}/link"
    assert revision not in s3_bucket.keys(f"docker/registry/v2/repositories/{repo}/")
    out = tmp_path / "pulled"
    skopeo.pull(s3_moorage.ref(repo, "latest"), out, "latest")
    assert_same_blobs(src, OciLayout.open(out), v1.manifest.digest)


def test_multiarch_push_and_single_platform_pull(
    s3_moorage: RunningServer, s3_bucket: S3Bucket, skopeo: Skopeo, tmp_path: Path
) -> None:
    src = OciLayout(tmp_path / "src")
    index = multiarch_index(src, name="s3-multi", tag="multi")
    amd64, arm64 = index.image_for("amd64"), index.image_for("arm64")
    repo = "e2e/s3-multi-arch"
    skopeo.push(src.path, "multi", s3_moorage.ref(repo, "latest"), "--all")
    assert skopeo.inspect_raw(s3_moorage.ref(repo, "latest")) == src.read_blob(index.index.digest)
    assert_stored(s3_bucket, src, [index.index.digest, *(d for i in index.images for d in i.blob_digests)])

    everything = tmp_path / "pulled-all"
    skopeo.pull(s3_moorage.ref(repo, "latest"), everything, "latest", "--all")
    assert OciLayout.open(everything).ref("latest").digest == index.index.digest
    assert_same_blobs(src, OciLayout.open(everything), index.index.digest)

    arm_dir = tmp_path / "pulled-arm64"
    skopeo.pull(s3_moorage.ref(repo, "latest"), arm_dir, "latest", platform="linux/arm64")
    pulled = OciLayout.open(arm_dir)
    assert pulled.ref("latest").digest == arm64.manifest.digest
    assert_same_blobs(src, pulled, arm64.manifest.digest)
    assert not set(amd64.blob_digests) & pulled.blob_digests()
    assert skopeo.inspect(s3_moorage.ref(repo, "latest"), platform="linux/amd64")["Layers"] == [
        layer.digest for layer in amd64.layers
    ]


def test_large_layer_round_trip(
    moorage_factory: MoorageFactory,
    s3_bucket: S3Bucket,
    skopeo: Skopeo,
    tmp_path: Path,
    cleanup_paths: Callable[[Path], Path],
) -> None:
    """64 MiB (13 parts of 5 MiB): pushed in one PATCH, pulled through the redirect and through moorage itself."""
    redirecting = moorage_factory(storage=s3_bucket.storage())
    direct = moorage_factory(storage=s3_bucket.storage(), env=REDIRECT_DISABLED)
    src = OciLayout(cleanup_paths(tmp_path / "src"))
    big, big_diff_id = src.add_large_layer(LARGE_LAYER_SIZE, seed=64)
    small = src.add_layer({"etc/motd": b"a big image on S3\n"}, compress=True)
    image = src.add_image([(big, big_diff_id), small], tag="big")
    repo = "e2e/s3-large"

    skopeo.push(src.path, "big", redirecting.ref(repo, "big"), timeout=LARGE_TIMEOUT)
    key = s3_bucket.data_key(big.digest)
    head = s3_bucket.client().head_object(Bucket=s3_bucket.name, Key=key)
    assert head["ContentLength"] == LARGE_LAYER_SIZE
    assert s3_bucket.hash_object(key) == big.digest
    assert s3_bucket.multipart_uploads() == [], "multipart uploads left behind"
    assert not s3_bucket.keys(f"docker/registry/v2/repositories/{repo}/_uploads/"), "upload session left behind"

    # Through the redirect, the layer comes from moto (one presigned GET); through the other server, from moorage.
    for server, name, presigned in ((redirecting, "via-redirect", 1), (direct, "via-moorage", 1)):
        out = cleanup_paths(tmp_path / f"pulled-{name}")
        skopeo.pull(server.ref(repo, "big"), out, "big", timeout=LARGE_TIMEOUT)
        pulled = OciLayout.open(out)
        assert pulled.ref("big").digest == image.manifest.digest
        assert pulled.blob_path(big.digest).stat().st_size == LARGE_LAYER_SIZE
        assert file_digest(pulled.blob_path(big.digest)) == big.digest
        assert_same_blobs(src, pulled, image.manifest.digest)
        assert presigned_gets(s3_bucket, big.digest) == presigned, name
    assert set(statuses(redirecting, "GET", "blob", repo)) == {307}
    assert set(statuses(direct, "GET", "blob", repo)) == {200}


def test_blob_get_redirects_to_presigned_url(
    moorage_factory: MoorageFactory, s3_bucket: S3Bucket, s3_moorage: RunningServer
) -> None:
    data = random_bytes(3 * 1024 * 1024 + 5, "redirect-check")
    repo = "e2e/s3-redirect"
    with client() as http:
        digest = monolithic_upload(http, s3_moorage, repo, data)
        url = f"{s3_moorage.url}/v2/{repo}/blobs/{quote(digest)}"

        response = http.get(url)
        assert response.status_code == 307, describe(response)
        assert response.headers["docker-content-digest"] == digest
        location = response.headers["location"]
        expected_prefix = f"{s3_bucket.server.endpoint_url}/{s3_bucket.name}/{s3_bucket.data_key(digest)}?"
        assert location.startswith(expected_prefix), location
        query = parse_qs(urlsplit(location).query)
        assert "X-Amz-Signature" in query and "X-Amz-Expires" in query, location
        # The presigned URL needs no credentials: a plain GET gets the exact bytes.
        fetched = httpx.get(location, timeout=30.0)
        assert fetched.status_code == 200, describe(fetched)
        assert fetched.content == data
        # HEAD is answered by moorage itself.
        head = http.head(url)
        assert head.status_code == 200, describe(head)
        assert head.headers["content-length"] == str(len(data))
        assert head.headers["docker-content-digest"] == digest

        # A second server on the same bucket with redirects off serves the bytes itself, ranges included.
        direct = moorage_factory(storage=s3_bucket.storage(), env=REDIRECT_DISABLED)
        url = f"{direct.url}/v2/{repo}/blobs/{quote(digest)}"
        response = http.get(url)
        assert response.status_code == 200, describe(response)
        assert response.headers["docker-content-digest"] == digest
        assert response.headers["content-length"] == str(len(data))
        assert response.content == data
        ranged = http.get(url, headers={"Range": "bytes=1048570-2097160"})
        assert ranged.status_code == 206, describe(ranged)
        assert ranged.headers["content-range"] == f"bytes 1048570-2097160/{len(data)}"
        assert ranged.content == data[1048570:2097161]

        # Unknown blobs are 404 either way, never a redirect to a missing object.
        missing = "sha256:" + "0" * 64
        for server in (s3_moorage, direct):
            response = http.get(f"{server.url}/v2/{repo}/blobs/{missing}")
            assert response.status_code == 404, describe(response)
            assert response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
