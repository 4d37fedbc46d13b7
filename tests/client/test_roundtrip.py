"""Round trips with the `moorage` CLI against a live Moorage and a live Distribution (Debian's docker-registry)."""

from __future__ import annotations

import filecmp
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.client.cli_runner import CliResult, run_cli, run_cli_async
from tests.client.conftest import RunningServer, Skopeo
from tests.client.cutting_proxy import CuttingProxy
from tests.e2e.conftest import DistributionFactory, MoorageFactory
from tests.e2e.images import OciLayout, file_digest, make_tar, multiarch_index, small_image

pytestmark = pytest.mark.e2e

Cli = Callable[..., CliResult]


@pytest.fixture(params=["moorage", "distribution"])
def registry_server(
    request: pytest.FixtureRequest, moorage_factory: MoorageFactory, distribution_factory: DistributionFactory
) -> RunningServer:
    return moorage_factory() if request.param == "moorage" else distribution_factory()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    docker_config = tmp_path / "docker-config"

    def run(*argv: str, stdin: str | None = None, env: dict[str, str] | None = None) -> CliResult:
        return run_cli(*argv, docker_config=docker_config, stdin=stdin, env=env)

    return run


def tree(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def assert_identical_trees(expected: Path, actual: Path) -> None:
    want, got = tree(expected), tree(actual)
    assert sorted(got) == sorted(want)
    for name, path in want.items():
        assert filecmp.cmp(path, got[name], shallow=False), f"{name} differs"


def docker_save_tarball(layout: OciLayout, path: Path, repo_tag: str) -> dict[str, object]:
    """A tarball shaped like `docker save` (manifest.json, <config>.json, <id>/layer.tar) from a layout's image."""
    root = layout.read_index()["manifests"][0]
    manifest = layout.read_json_blob(root["digest"])
    config_hex = manifest["config"]["digest"].split(":")[1]
    files = {f"{config_hex}.json": layout.read_blob(manifest["config"]["digest"])}
    layer_names = []
    for i, layer in enumerate(manifest["layers"]):
        name = f"{i:064x}/layer.tar"
        files[name] = layout.read_blob(layer["digest"])
        layer_names.append(name)
    files["manifest.json"] = json.dumps(
        [{"Config": f"{config_hex}.json", "RepoTags": [repo_tag], "Layers": layer_names}]
    ).encode()
    path.write_bytes(make_tar(files))
    return manifest


def test_layout_push_pull_is_byte_identical(registry_server: RunningServer, cli: Cli, tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "src")
    small_image(layout, name="roundtrip", tag="1.0")
    ref = f"{registry_server.host}/team/app:1.0"

    pushed = cli("push", str(layout.path), ref, "--tag", "stable", "--tag", "v1").ok()
    digest = pushed.stdout.strip().rsplit("@", 1)[1]
    assert digest == layout.ref("1.0").digest
    assert "pushed" in pushed.stderr  # one line per blob when not on a terminal

    dest = tmp_path / "pulled"
    cli("pull", ref, str(dest)).ok()
    assert_identical_trees(layout.path, dest)

    again = cli("push", str(layout.path), ref, "--json").ok()
    events = [json.loads(line) for line in again.stdout.splitlines()]
    assert {e["event"] for e in events[:-1]} == {"exists"}
    assert events[-1]["digest"] == digest

    tags = json.loads(cli("tags", f"{registry_server.host}/team/app", "--json").ok().stdout)["tags"]
    assert sorted(tags) == ["1.0", "stable", "v1"]
    assert "team/app" in cli("catalog", registry_server.host).ok().stdout.split()

    info = json.loads(cli("inspect", f"{registry_server.host}/team/app:stable", "--json").ok().stdout)
    assert info["digest"] == digest
    assert info["platforms"] == ["linux/amd64"]
    assert info["config"]["config"]["Labels"] == {"e2e.name": "roundtrip"}
    assert "Digest:" in cli("inspect", ref).ok().stdout


def test_docker_save_tarball_push_then_skopeo_pull(
    registry_server: RunningServer, cli: Cli, skopeo: Skopeo, tmp_path: Path
) -> None:
    layout = OciLayout(tmp_path / "build")
    base = layout.add_layer({"etc/hostname": b"saved\n"}, compress=False)
    app = layout.add_layer({"app/run.sh": b"#!/bin/sh\necho saved\n"}, compress=False)
    layout.add_image([base, app], tag="latest")
    tarball = tmp_path / "image.tar"
    manifest = docker_save_tarball(layout, tarball, "team/saved:latest")

    cli("push", str(tarball), f"{registry_server.host}/team/saved:3.1").ok()

    dest = tmp_path / "skopeo-pulled"
    skopeo.pull(registry_server.ref("team/saved", "3.1"), dest, "3.1")
    pulled = OciLayout.open(dest)
    pulled_manifest = pulled.read_json_blob(pulled.ref("3.1").digest)
    assert pulled_manifest["config"]["digest"] == manifest["config"]["digest"]
    assert pulled.read_blob(manifest["config"]["digest"]) == layout.read_blob(manifest["config"]["digest"])
    assert [layer["digest"] for layer in pulled_manifest["layers"]] == [layer["digest"] for layer in manifest["layers"]]
    for layer in manifest["layers"]:
        assert pulled.read_blob(layer["digest"]) == layout.read_blob(layer["digest"])


def test_multiarch_push_and_platform_pull(
    registry_server: RunningServer, cli: Cli, skopeo: Skopeo, tmp_path: Path
) -> None:
    layout = OciLayout(tmp_path / "multi")
    index = multiarch_index(layout, name="multi", tag="2.0")
    ref = f"{registry_server.host}/team/multi:2.0"
    cli("push", str(layout.path), ref).ok()

    whole = tmp_path / "whole"
    cli("pull", ref, str(whole)).ok()
    assert_identical_trees(layout.path, whole)

    arm = tmp_path / "arm"
    cli("pull", ref, str(arm), "--platform", "linux/arm64").ok()
    arm_layout = OciLayout.open(arm)
    image = index.image_for("arm64")
    assert arm_layout.ref("2.0").digest == image.manifest.digest
    assert arm_layout.blob_digests() == {image.manifest.digest, *image.blob_digests}

    archive = tmp_path / "amd64.tar"
    cli("pull", ref, str(archive), "--platform", "linux/amd64", "--format", "docker-archive").ok()
    from_archive = tmp_path / "from-archive"
    skopeo.copy(f"docker-archive:{archive}", f"oci:{from_archive}:x")
    amd = index.image_for("amd64")
    loaded = OciLayout.open(from_archive)
    loaded_manifest = loaded.read_json_blob(loaded.ref("x").digest)
    assert loaded_manifest["config"]["digest"] == amd.config.digest
    # skopeo reads docker-archive layers uncompressed, as `docker load` does: their digests are the diff_ids.
    assert [layer["digest"] for layer in loaded_manifest["layers"]] == list(amd.diff_ids)

    refused = cli("pull", ref, str(tmp_path / "refused.tar"), "--format", "docker-archive").failed()
    assert "--platform" in refused.stderr
    info = json.loads(cli("inspect", ref, "--json").ok().stdout)
    assert info["platforms"] == ["linux/amd64", "linux/arm64"]


def test_cp_mounts_within_a_registry_and_streams_between_registries(
    moorage_factory: MoorageFactory, distribution_factory: DistributionFactory, cli: Cli, tmp_path: Path
) -> None:
    moorage, distribution = moorage_factory(), distribution_factory()
    layout = OciLayout(tmp_path / "src")
    index = multiarch_index(layout, name="copied", tag="1")
    cli("push", str(layout.path), f"{moorage.host}/team/a:1").ok()

    mounted = cli("cp", f"{moorage.host}/team/a:1", f"{moorage.host}/other/b:1").ok()
    assert "mounted" in mounted.stderr and "pushed" not in mounted.stderr
    streamed = cli("cp", f"{moorage.host}/other/b:1", f"{distribution.host}/team/c:copy").ok()
    assert "pushed" in streamed.stderr
    back = cli("cp", f"{distribution.host}/team/c:copy", f"{moorage.host}/back/d:2").ok()
    assert back.stdout.strip().endswith(index.index.digest)

    for ref in (f"{distribution.host}/team/c:copy", f"{moorage.host}/back/d:2"):
        dest = tmp_path / ref.replace("/", "_").replace(":", "_")
        cli("pull", ref, str(dest)).ok()
        for name, path in tree(layout.path).items():
            if name.startswith("blobs/"):
                assert file_digest(path) == file_digest(dest / name)


def test_tag_and_rm(registry_server: RunningServer, cli: Cli, tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "src")
    image = small_image(layout, name="tagged", tag="1")
    repo = f"{registry_server.host}/team/tagged"
    cli("push", str(layout.path), f"{repo}:1").ok()
    cli("tag", f"{repo}:1", "prod").ok()
    assert sorted(cli("tags", repo).ok().stdout.split()) == ["1", "prod"]

    removed = cli("rm", f"{repo}:prod").ok()
    assert image.manifest.digest in removed.stdout
    missing = cli("inspect", f"{repo}:1").failed()
    assert missing.stderr.strip() == "moorage: manifest unknown: team/tagged:1"


def test_oci_archive_push_quietly(registry_server: RunningServer, cli: Cli, tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "src")
    image = small_image(layout, name="archived", tag="7")
    archive = tmp_path / "image.oci.tar"
    archive.write_bytes(make_tar({str(p.relative_to(layout.path)): p.read_bytes() for p in tree(layout.path).values()}))
    ref = f"{registry_server.host}/team/archived:7"
    pushed = cli("push", str(archive), ref, "--quiet").ok()
    assert pushed.stderr == ""
    assert pushed.stdout == f"{registry_server.host}/team/archived@{image.manifest.digest}\n"
    dest = tmp_path / "pulled"
    cli("pull", ref, str(dest), "-q").ok()
    assert_identical_trees(layout.path, dest)


@pytest.mark.parametrize("chunking", [[], ["--chunk-size", "2MiB"]], ids=["one-request", "chunks"])
async def test_push_survives_a_dropped_connection_mid_layer(
    registry_server: RunningServer, tmp_path: Path, chunking: list[str]
) -> None:
    layout = OciLayout(tmp_path / "src")
    layer = layout.add_large_layer(8 * 1024 * 1024, seed=3)
    image = layout.add_image([layer], tag="1")
    proxy = await CuttingProxy(registry_server.port).start()
    try:
        proxy.cut_after = 5 * 1024 * 1024  # in the middle of the 8 MiB layer
        argv = ["push", str(layout.path), f"{proxy.host}/team/dropped:1", "--concurrency", "1", *chunking]
        pushed = (await run_cli_async(*argv, docker_config=tmp_path / "docker")).ok()
    finally:
        await proxy.stop()
    assert proxy.cuts == 1
    assert pushed.stdout.strip().endswith(image.manifest.digest)
    dest = tmp_path / "pulled"
    (await run_cli_async("pull", f"{registry_server.host}/team/dropped:1", str(dest), docker_config=tmp_path)).ok()
    assert_identical_trees(layout.path, dest)


def test_push_mounts_from_a_known_repository(moorage_factory: MoorageFactory, cli: Cli, tmp_path: Path) -> None:
    moorage = moorage_factory()
    layout = OciLayout(tmp_path / "src")
    index = multiarch_index(layout, name="mountable", tag="1")
    first = cli("push", str(layout.path), f"{moorage.host}/team/base:1").ok()
    assert "pushed" in first.stderr
    mounted = cli("push", str(layout.path), f"{moorage.host}/team/derived:1", "--mount-from", "team/base").ok()
    assert "mounted" in mounted.stderr and "pushed" not in mounted.stderr
    assert mounted.stdout.strip().endswith(index.index.digest)
    unknown = cli("push", str(layout.path), f"{moorage.host}/team/third:1", "--mount-from", "team/nothing").ok()
    assert "pushed" in unknown.stderr  # the registry answers 202: the client uploads instead
