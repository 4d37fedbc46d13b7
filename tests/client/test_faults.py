"""Against a fake registry that misbehaves on purpose: a connection dropped mid-layer, a corrupted blob; and the
bearer-token flow, docker credentials and search."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.client.cli_runner import run_cli_async
from tests.client.fake_registry import FakeRegistry
from tests.e2e.images import OciLayout, small_image

pytestmark = pytest.mark.e2e


@pytest.fixture
async def fake() -> AsyncIterator[FakeRegistry]:
    registry = await FakeRegistry().start()
    yield registry
    await registry.stop()


def big_layout(path: Path, size: int = 3 * 1024 * 1024) -> tuple[OciLayout, str]:
    layout = OciLayout(path)
    layer = layout.add_large_layer(size, seed=7)
    image = layout.add_image([layer], tag="1.0")
    return layout, image.layers[0].digest


async def test_push_resumes_after_the_connection_drops_mid_layer(fake: FakeRegistry, tmp_path: Path) -> None:
    layout, layer_digest = big_layout(tmp_path / "src")
    fake.drop_patch_after = 1024 * 1024 + 17  # only the big layer is larger
    result = await run_cli_async(
        "push", str(layout.path), f"{fake.host}/team/big:1.0", docker_config=tmp_path / "docker"
    )
    result.ok()
    assert fake.dropped == 1
    assert layout.blob_path(layer_digest).read_bytes() == fake.blobs[layer_digest]
    size = len(fake.blobs[layer_digest])
    cut = 1024 * 1024 + 17
    patches = [line.rsplit(" ", 1)[1] for line in fake.log if line.startswith("PATCH")]
    # The cut one, then the rest from the server's offset (not from 0).
    assert f"0-{size - 1}" in patches and f"{cut}-{size - 1}" in patches, fake.log
    assert any(line.startswith("GET /v2/team/big/blobs/uploads/") for line in fake.log)
    assert fake.manifests[("team/big", "1.0")][1] == layout.read_blob(layout.ref("1.0").digest)


async def test_pull_of_a_corrupted_blob_fails_and_leaves_no_dest(fake: FakeRegistry, tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "src")
    small_image(layout, name="corrupt", tag="1")
    docker = tmp_path / "docker"
    (await run_cli_async("push", str(layout.path), f"{fake.host}/team/bad:1", docker_config=docker)).ok()
    fake.corrupt = True
    dest = tmp_path / "dest"
    result = (await run_cli_async("pull", f"{fake.host}/team/bad:1", str(dest), docker_config=docker)).failed()
    assert result.stderr.startswith("moorage: digest mismatch: blob team/bad@sha256:"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no temporary directory either  # noqa: ASYNC240
    archive = tmp_path / "dest.tar"
    (
        await run_cli_async(
            "pull", f"{fake.host}/team/bad:1", str(archive), "--format", "docker-archive", docker_config=docker
        )
    ).failed()
    assert not archive.exists()


async def test_bearer_token_flow_with_login_and_docker_config(tmp_path: Path) -> None:
    fake = await FakeRegistry(users={"ci": "s3cret"}).start()
    try:
        docker = tmp_path / "docker"
        layout = OciLayout(tmp_path / "src")
        small_image(layout, name="auth", tag="1")
        ref = f"{fake.host}/team/private:1"

        denied = (await run_cli_async("push", str(layout.path), ref, docker_config=docker)).failed()
        assert "unauthorized" in denied.stderr

        wrong = await run_cli_async(
            "login", fake.host, "-u", "ci", "--password-stdin", docker_config=docker, stdin="nope\n"
        )
        wrong.failed()
        assert not (docker / "config.json").exists()

        login = await run_cli_async(
            "login", fake.host, "-u", "ci", "--password-stdin", docker_config=docker, stdin="s3cret\n"
        )
        login.ok()
        config = json.loads((docker / "config.json").read_text())
        assert base64.b64decode(config["auths"][fake.host]["auth"]).decode() == "ci:s3cret"

        (await run_cli_async("push", str(layout.path), ref, docker_config=docker)).ok()
        assert any("repository:team/private:pull,push" in scopes for scopes in fake.token_scopes)
        tags = await run_cli_async("tags", f"{fake.host}/team/private", docker_config=docker)
        assert tags.ok().stdout.split() == ["1"]

        (await run_cli_async("logout", fake.host, docker_config=docker)).ok()
        assert fake.host not in json.loads((docker / "config.json").read_text())["auths"]
        env = {"MOORAGE_USERNAME": "ci", "MOORAGE_PASSWORD": "s3cret"}
        inspected = await run_cli_async("inspect", ref, "--json", docker_config=docker, env=env)
        assert json.loads(inspected.ok().stdout)["digest"] == layout.ref("1").digest
    finally:
        await fake.stop()


async def test_search(fake: FakeRegistry, tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "src")
    small_image(layout, name="search", tag="1")
    docker = tmp_path / "docker"
    for repo in ("team/web", "team/worker", "other/db"):
        (await run_cli_async("push", str(layout.path), f"{fake.host}/{repo}:1", docker_config=docker)).ok()
    result = (await run_cli_async("search", fake.host, "team/w", "--json", docker_config=docker)).ok()
    assert [r["name"] for r in json.loads(result.stdout)["results"]] == ["team/web", "team/worker"]
    text = (await run_cli_async("search", fake.host, "db", docker_config=docker)).ok()
    assert text.stdout.strip() == "other/db\tabout other/db"
    fake.legacy_search = True  # Docker's /v1/search only
    fake.log.clear()
    legacy = (await run_cli_async("search", fake.host, "web", docker_config=docker)).ok()
    assert legacy.stdout.split("\t")[0] == "team/web"
    assert [line.split("?")[0] for line in fake.log] == ["GET /api/v1/search", "GET /v1/search"]


async def test_pull_resumes_a_dropped_download_with_a_range_request(fake: FakeRegistry, tmp_path: Path) -> None:
    layout, layer_digest = big_layout(tmp_path / "src")
    docker = tmp_path / "docker"
    (await run_cli_async("push", str(layout.path), f"{fake.host}/team/big:1.0", docker_config=docker)).ok()
    fake.drop_blob_get_after = 1024 * 1024 + 5  # only the big layer is larger
    fake.log.clear()
    dest = tmp_path / "pulled"
    (await run_cli_async("pull", f"{fake.host}/team/big:1.0", str(dest), docker_config=docker)).ok()
    assert fake.dropped == 1
    assert (dest / "blobs" / "sha256" / layer_digest.split(":")[1]).read_bytes() == fake.blobs[layer_digest]
    gets = [line for line in fake.log if line.startswith(f"GET /v2/team/big/blobs/{layer_digest}")]
    assert gets == [f"GET /v2/team/big/blobs/{layer_digest}", f"GET /v2/team/big/blobs/{layer_digest} bytes=1048581-"]


def self_signed_certificate(directory: Path, address: str) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
         "-out", str(cert), "-subj", f"/CN={address}", "-addext", f"subjectAltName=IP:{address}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_tls_is_verified_and_ca_file_trusts_a_private_ca(tmp_path: Path) -> None:
    address = "127.0.0.2"  # loopback, but not a name the client treats as local: TLS by default
    cert, key = self_signed_certificate(tmp_path, address)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    fake = await FakeRegistry().start(address, tls=context)
    try:
        docker = tmp_path / "docker"
        layout = OciLayout(tmp_path / "src")
        small_image(layout, name="tls", tag="1")
        ref = f"{fake.host}/team/tls:1"
        refused = await run_cli_async("push", str(layout.path), ref, "--retries", "0", docker_config=docker)
        assert "CERTIFICATE_VERIFY_FAILED" in refused.failed().stderr
        (await run_cli_async("push", str(layout.path), ref, "--ca-file", str(cert), docker_config=docker)).ok()
        tags = await run_cli_async("tags", f"{fake.host}/team/tls", "--ca-file", str(cert), docker_config=docker)
        assert tags.ok().stdout.split() == ["1"]
    finally:
        await fake.stop()


async def test_chunked_push_resumes_mid_chunk(fake: FakeRegistry, tmp_path: Path) -> None:
    layout, layer_digest = big_layout(tmp_path / "src")
    size = layout.blob_path(layer_digest).stat().st_size
    cut = 512 * 1024 + 3  # only the layer's 1 MiB chunks are larger
    fake.drop_patch_after = cut
    argv = ["push", str(layout.path), f"{fake.host}/team/chunked:1", "--chunk-size", "1MiB"]
    (await run_cli_async(*argv, docker_config=tmp_path / "docker")).ok()
    assert fake.blobs[layer_digest] == layout.blob_path(layer_digest).read_bytes()
    mib = 1024 * 1024
    ranges = [line.rsplit(" ", 1)[1] for line in fake.log if line.startswith("PATCH") and "-" in line.rsplit(" ", 1)[1]]
    layer_ranges = [r for r in ranges if int(r.split("-")[1]) >= cut - 1]
    expected = [
        f"0-{mib - 1}",
        f"{cut}-{cut + mib - 1}",
        f"{cut + mib}-{cut + 2 * mib - 1}",
        f"{cut + 2 * mib}-{size - 1}",
    ]
    assert layer_ranges == expected, fake.log


async def test_cp_between_registries_resumes_with_a_range_read_from_the_source(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    layout, layer_digest = big_layout(tmp_path / "src")
    docker = tmp_path / "docker"
    (await run_cli_async("push", str(layout.path), f"{fake.host}/team/src:1", docker_config=docker)).ok()
    cut = 1024 * 1024 + 17
    destination = await FakeRegistry(drop_patch_after=cut).start()
    try:
        fake.log.clear()
        argv = ["cp", f"{fake.host}/team/src:1", f"{destination.host}/team/dst:1"]
        (await run_cli_async(*argv, docker_config=docker)).ok()
    finally:
        await destination.stop()
    assert destination.dropped == 1
    assert destination.blobs[layer_digest] == layout.blob_path(layer_digest).read_bytes()
    assert f"GET /v2/team/src/blobs/{layer_digest} bytes={cut}-" in fake.log
