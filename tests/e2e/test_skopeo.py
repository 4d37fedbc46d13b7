"""skopeo against a live `moorage serve`: push, pull, inspect, list-tags, delete, multi-arch, mount, big layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import RunningServer, Skopeo
from .images import MT_INDEX, OciLayout, assert_same_blobs, file_digest, multiarch_index, small_image
from .server_logs import access_log, access_log_once

pytestmark = pytest.mark.e2e

LARGE_LAYER_SIZE = 256 * 1024 * 1024
LARGE_TIMEOUT = 300.0
UPLOADS_ROUTE = "/v2/{name:path}/blobs/uploads/"


def storage_blob(server: RunningServer, digest: str) -> Path:
    """Where a blob lives in the Distribution-compatible filesystem layout under the server's root."""
    algorithm, _, hexdigest = digest.partition(":")
    return server.root / "docker" / "registry" / "v2" / "blobs" / algorithm / hexdigest[:2] / hexdigest / "data"


@pytest.mark.parametrize("moorage", [1, 2], indirect=True, ids=["workers-1", "workers-2"])
def test_push_pull_round_trip(moorage: RunningServer, skopeo: Skopeo, tmp_path: Path) -> None:
    src = OciLayout(tmp_path / "src")
    # Several images, so that with two workers the requests of one push are spread over both processes.
    images = [small_image(src, name=f"round-trip-{i}", tag=f"v{i}") for i in range(3)]
    for i, _ in enumerate(images):
        skopeo.push(src.path, f"v{i}", moorage.ref("e2e/round-trip", f"v{i}"))

    out = tmp_path / "pulled"
    for i, image in enumerate(images):
        skopeo.pull(moorage.ref("e2e/round-trip", f"v{i}"), out, f"v{i}")
        pulled = OciLayout.open(out)
        assert pulled.ref(f"v{i}").digest == image.manifest.digest
        compared = assert_same_blobs(src, pulled, image.manifest.digest)
        assert set(compared) == {image.manifest.digest, *image.blob_digests}
        # Every blob is also stored where Distribution would put it.
        for digest in image.blob_digests:
            assert storage_blob(moorage, digest).read_bytes() == src.read_blob(digest)

    # By digest too.
    first = images[0].manifest.digest
    skopeo.pull(moorage.ref("e2e/round-trip", first), out, "by-digest")
    assert OciLayout.open(out).ref("by-digest").digest == first
    assert skopeo.list_tags(moorage.ref("e2e/round-trip")) == ["v0", "v1", "v2"]
    workers = int(moorage.argv[moorage.argv.index("--workers") + 1]) if "--workers" in moorage.argv else 1
    started = moorage.log().count("Started server process")
    assert started == workers, f"{started} worker processes started, {workers} asked for: {moorage.describe()}"


def test_inspect_and_list_tags(moorage: RunningServer, skopeo: Skopeo, tmp_path: Path) -> None:
    src = OciLayout(tmp_path / "src")
    v1 = small_image(src, name="inspect-v1", tag="v1")
    v2 = small_image(src, name="inspect-v2", architecture="arm64", tag="v2")
    repo = "e2e/inspect"
    skopeo.push(src.path, "v1", moorage.ref(repo, "v1"))
    skopeo.push(src.path, "v1", moorage.ref(repo, "latest"))
    skopeo.push(src.path, "v2", moorage.ref(repo, "v2"))

    info = skopeo.inspect(moorage.ref(repo, "v1"))
    assert info["Digest"] == v1.manifest.digest
    assert info["Layers"] == [layer.digest for layer in v1.layers]
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    assert info["Labels"] == {"e2e.name": "inspect-v1"}
    assert sorted(info["RepoTags"]) == ["latest", "v1", "v2"]
    assert skopeo.inspect(moorage.ref(repo, "latest"))["Digest"] == v1.manifest.digest

    by_digest = skopeo.inspect(moorage.ref(repo, v2.manifest.digest))
    assert by_digest["Digest"] == v2.manifest.digest
    assert by_digest["Architecture"] == "arm64"
    assert by_digest["Layers"] == [layer.digest for layer in v2.layers]

    # --raw gives the bytes that were pushed, for the manifest and (with --config) the config.
    assert skopeo.inspect_raw(moorage.ref(repo, "v1")) == src.read_blob(v1.manifest.digest)
    raw_config = skopeo.inspect_raw(moorage.ref(repo, "v2"), "--config")
    assert raw_config == src.read_blob(v2.config.digest)

    assert skopeo.list_tags(moorage.ref(repo)) == ["latest", "v1", "v2"]
    assert moorage.get_json(f"/v2/{repo}/tags/list") == {"name": repo, "tags": ["latest", "v1", "v2"]}
    assert moorage.get_json("/v2/_catalog") == {"repositories": [repo]}


def test_delete_manifest(moorage: RunningServer, skopeo: Skopeo, tmp_path: Path) -> None:
    src = OciLayout(tmp_path / "src")
    doomed = small_image(src, name="doomed", tag="doomed")
    kept = small_image(src, name="kept", tag="kept")
    repo = "e2e/delete"
    skopeo.push(src.path, "doomed", moorage.ref(repo, "doomed"))
    skopeo.push(src.path, "kept", moorage.ref(repo, "kept"))
    assert skopeo.inspect(moorage.ref(repo, "doomed"))["Digest"] == doomed.manifest.digest

    # skopeo resolves the tag to a digest and sends DELETE /v2/<name>/manifests/<digest>.
    skopeo.delete(moorage.ref(repo, "doomed"))
    entries = access_log_once(moorage, lambda e: e["method"] == "DELETE")
    deletes = [(e["path"], e["status"]) for e in entries if e["method"] == "DELETE"]
    assert deletes == [(f"/v2/{repo}/manifests/{doomed.manifest.digest}", 202)], deletes

    for reference in ("doomed", doomed.manifest.digest):
        stderr = skopeo.inspect_fails(moorage.ref(repo, reference))
        assert "manifest unknown" in stderr, stderr
    response = moorage.get(f"/v2/{repo}/manifests/{doomed.manifest.digest}")
    assert response.status_code == 404, response.text
    assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"

    # The other image in the repository is untouched, and the deleted manifest's tag is gone (as in Distribution).
    assert skopeo.inspect(moorage.ref(repo, "kept"))["Digest"] == kept.manifest.digest
    assert skopeo.list_tags(moorage.ref(repo)) == ["kept"]
    out = tmp_path / "pulled"
    skopeo.pull(moorage.ref(repo, "kept"), out, "kept")
    assert_same_blobs(src, OciLayout.open(out), kept.manifest.digest)


def test_multiarch_index_push_and_single_platform_pull(moorage: RunningServer, skopeo: Skopeo, tmp_path: Path) -> None:
    src = OciLayout(tmp_path / "src")
    index = multiarch_index(src, name="multi", tag="multi")
    amd64, arm64 = index.image_for("amd64"), index.image_for("arm64")
    repo = "e2e/multi-arch"
    skopeo.push(src.path, "multi", moorage.ref(repo, "latest"), "--all")

    raw = skopeo.inspect_raw(moorage.ref(repo, "latest"))
    assert raw == src.read_blob(index.index.digest)
    response = moorage.get(f"/v2/{repo}/manifests/latest", headers={"Accept": MT_INDEX})
    assert response.status_code == 200, response.text
    assert response.headers["docker-content-digest"] == index.index.digest
    assert response.headers["content-type"] == MT_INDEX
    assert response.content == src.read_blob(index.index.digest)

    # The whole index back.
    everything = tmp_path / "pulled-all"
    skopeo.pull(moorage.ref(repo, "latest"), everything, "latest", "--all")
    pulled_all = OciLayout.open(everything)
    assert pulled_all.ref("latest").digest == index.index.digest
    assert_same_blobs(src, pulled_all, index.index.digest)

    # One platform out of it: the arm64 image, and nothing of the amd64 one.
    arm_dir = tmp_path / "pulled-arm64"
    skopeo.pull(moorage.ref(repo, "latest"), arm_dir, "latest", platform="linux/arm64")
    pulled = OciLayout.open(arm_dir)
    assert pulled.ref("latest").digest == arm64.manifest.digest
    config = pulled.read_json_blob(arm64.config.digest)
    assert (config["os"], config["architecture"]) == ("linux", "arm64")
    assert_same_blobs(src, pulled, arm64.manifest.digest)
    assert not set(amd64.blob_digests) & pulled.blob_digests()

    info = skopeo.inspect(moorage.ref(repo, "latest"), platform="linux/arm64")
    assert info["Architecture"] == "arm64"
    assert info["Layers"] == [layer.digest for layer in arm64.layers]
    info = skopeo.inspect(moorage.ref(repo, "latest"), platform="linux/amd64")
    assert info["Architecture"] == "amd64"
    assert info["Layers"] == [layer.digest for layer in amd64.layers]


def test_cross_repository_mount(moorage: RunningServer, skopeo: Skopeo, tmp_path: Path) -> None:
    src = OciLayout(tmp_path / "src")
    image = small_image(src, name="mounted", tag="v1")
    source, target = "e2e/mount-source", "e2e/mount-target"
    skopeo.push(src.path, "v1", moorage.ref(source, "v1"))
    before = len(access_log(moorage))

    # Registry to registry: skopeo knows the blobs are in `source` on this registry, so it asks to mount them.
    skopeo.copy(moorage.ref(source, "v1"), moorage.ref(target, "v1"))
    # skopeo's last request is the manifest PUT to the target.
    requests = access_log_once(
        moorage, lambda e: e["method"] == "PUT" and e["repository"] == target and "/manifests/" in str(e["path"])
    )[before:]
    # A mount answers the POST with 201 (the blob is there); an upload would answer 202, then PATCH and PUT.
    to_target = [(e["method"], e["route"], e["status"]) for e in requests if e["repository"] == target]
    mounts = [status for method, route, status in to_target if method == "POST" and route == UPLOADS_ROUTE]
    layers = {layer.digest for layer in image.layers}
    assert mounts.count(201) >= len(layers), f"skopeo did not mount every layer from {source}; requests: {requests}"
    # Only what was not mounted (the config, which skopeo does not try to mount) may be uploaded.
    not_layers = len(image.blob_digests) - len(layers)
    assert mounts.count(202) <= not_layers, f"layers uploaded to {target} despite the mounts: {to_target}"

    out = tmp_path / "pulled"
    skopeo.pull(moorage.ref(target, "v1"), out, "v1")
    pulled = OciLayout.open(out)
    assert pulled.ref("v1").digest == image.manifest.digest
    assert_same_blobs(src, pulled, image.manifest.digest)
    for digest in layers:
        response = moorage.get(f"/v2/{target}/blobs/{digest}")
        assert response.status_code == 200, response.text
        assert response.content == src.read_blob(digest)
    assert moorage.get_json("/v2/_catalog") == {"repositories": [source, target]}


def test_large_layer_round_trip(
    moorage: RunningServer, skopeo: Skopeo, tmp_path: Path, cleanup_paths: Callable[[Path], Path]
) -> None:
    cleanup_paths(moorage.root)
    src = OciLayout(cleanup_paths(tmp_path / "src"))
    big, big_diff_id = src.add_large_layer(LARGE_LAYER_SIZE, seed=256)
    assert big.size == LARGE_LAYER_SIZE
    small = src.add_layer({"etc/motd": b"a big image\n"}, compress=True)
    image = src.add_image([(big, big_diff_id), small], tag="big")

    skopeo.push(src.path, "big", moorage.ref("e2e/large", "big"), timeout=LARGE_TIMEOUT)
    stored = storage_blob(moorage, big.digest)
    assert stored.stat().st_size == LARGE_LAYER_SIZE
    assert file_digest(stored) == big.digest

    out = cleanup_paths(tmp_path / "pulled")
    skopeo.pull(moorage.ref("e2e/large", "big"), out, "big", timeout=LARGE_TIMEOUT)
    pulled = OciLayout.open(out)
    assert pulled.ref("big").digest == image.manifest.digest
    pulled_big = pulled.blob_path(big.digest)
    assert pulled_big.stat().st_size == LARGE_LAYER_SIZE
    assert file_digest(pulled_big) == big.digest
    assert_same_blobs(src, pulled, image.manifest.digest)
