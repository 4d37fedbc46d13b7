"""The pull-through cache against a real upstream: Debian's docker-registry (CNCF Distribution 2.8) on 127.0.0.1.

skopeo pulls through Moorage under the upstream's prefix; what it gets is the upstream's content, digest for digest,
and what Moorage cached serves again with the upstream stopped.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.client.cli_runner import run_cli

from .auth_servers import PASSWORDS, start_auth_server
from .conftest import DistributionFactory, MoorageFactory, RunningServer, Skopeo
from .docker_daemon import Docker
from .docker_daemon import docker as docker  # the fixtures
from .docker_daemon import docker_daemon as docker_daemon
from .images import OciLayout, assert_same_blobs, multiarch_index, small_image
from .test_auth_tls import TlsServer
from .test_auth_tls import tls_server as tls_server  # the fixture
from .test_podman import Podman
from .test_podman import podman as podman  # the fixture

pytestmark = pytest.mark.e2e


def proxy_env(*upstreams: dict[str, Any]) -> dict[str, str]:
    return {"MOORAGE_PROXY__UPSTREAMS": json.dumps(list(upstreams))}


def pulled(skopeo: Skopeo, ref: str, out: Path, *extra: str) -> str:
    """Pull `ref` into the OCI layout `out`; the digest of what was pulled."""
    skopeo.pull(ref, out, "pulled", *extra)
    return OciLayout.open(out).ref("pulled").digest


def cache_of(moorage_factory: MoorageFactory, upstream: RunningServer, **options: Any) -> RunningServer:
    settings = {"name": "dist", "url": upstream.url, "prefix": "dist", **options}
    return moorage_factory(env=proxy_env(settings))


def test_skopeo_pulls_through_the_cache_digest_for_digest(
    distribution_factory: DistributionFactory, moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    upstream = distribution_factory()
    src = OciLayout(tmp_path / "src")
    image = small_image(src, name="app", tag="app")
    index = multiarch_index(src, name="multi", tag="multi")
    skopeo.push(src.path, "app", upstream.ref("team/app", "v1"))
    skopeo.push(src.path, "multi", upstream.ref("team/multi", "1.0"), "--all")
    cache = cache_of(moorage_factory, upstream)

    for n, (repo, tag, digest, extra) in enumerate(
        [
            ("team/app", "v1", image.manifest.digest, []),
            ("team/multi", "1.0", index.index.digest, ["--all"]),
        ]
    ):
        out = tmp_path / f"out-{n}"
        assert pulled(skopeo, cache.ref(f"dist/{repo}", tag), out, *extra) == digest, cache.describe()
        assert_same_blobs(src, OciLayout.open(out), digest)
        head = cache.get(f"/v2/dist/{repo}/manifests/{tag}", headers={"Accept": "*/*"})
        assert head.headers["Docker-Content-Digest"] == digest
        assert head.headers["Moorage-Cache"] == "hit"  # the tag was checked moments ago

    # The cached repositories are Moorage's own now: listed, and served without the upstream.
    upstream.stop()
    out = tmp_path / "offline"
    skopeo.pull(cache.ref("dist/team/multi", "1.0"), out, "pulled", "--all")
    assert OciLayout.open(out).ref("pulled").digest == index.index.digest
    catalog = cache.get_json("/v2/_catalog")["repositories"]
    assert {"dist/team/app", "dist/team/multi"} <= set(catalog)


def test_offline_serves_what_is_cached_and_refuses_the_rest_promptly(
    distribution_factory: DistributionFactory, moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    upstream = distribution_factory()
    src = OciLayout(tmp_path / "src")
    image = small_image(src, name="app", tag="app")
    skopeo.push(src.path, "app", upstream.ref("team/app", "v1"))
    skopeo.push(src.path, "app", upstream.ref("team/other", "v1"))
    cache = cache_of(moorage_factory, upstream, tag_ttl="1s", attempts=2)
    skopeo.pull(cache.ref("dist/team/app", "v1"), tmp_path / "warm", "pulled")
    upstream.stop()
    time.sleep(1.2)  # the tag is due for a check, which cannot reach the upstream

    assert pulled(skopeo, cache.ref("dist/team/app", "v1"), tmp_path / "cold") == image.manifest.digest
    stale = cache.get("/v2/dist/team/app/manifests/v1", headers={"Accept": "*/*"})
    assert stale.status_code == 200
    assert stale.headers["Moorage-Cache"] == "stale"

    started = time.monotonic()
    missing = cache.get("/v2/dist/team/other/manifests/v1", headers={"Accept": "*/*"})
    assert time.monotonic() - started < 10
    assert missing.status_code == 503, missing.text
    assert missing.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert upstream.url not in missing.text or "password" not in missing.text
    metrics = cache.get("/metrics").text
    assert 'moorage_proxy_requests_total{outcome="stale",upstream="dist"}' in metrics


def test_a_tag_moved_upstream_is_seen_after_its_ttl_not_before(
    distribution_factory: DistributionFactory, moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    upstream = distribution_factory()
    src = OciLayout(tmp_path / "src")
    first = small_image(src, name="first", tag="first")
    second = small_image(src, name="second", tag="second")
    skopeo.push(src.path, "first", upstream.ref("team/app", "latest"))
    cache = cache_of(moorage_factory, upstream, tag_ttl="3s")
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    assert cache.get("/v2/dist/team/app/manifests/latest", headers=accept).headers["Docker-Content-Digest"] == (
        first.manifest.digest
    )
    moved_at = time.monotonic()
    skopeo.push(src.path, "second", upstream.ref("team/app", "latest"))
    before = cache.get("/v2/dist/team/app/manifests/latest", headers=accept)
    if time.monotonic() - moved_at < 2.5:
        assert before.headers["Docker-Content-Digest"] == first.manifest.digest
    time.sleep(max(0.0, 3.2 - (time.monotonic() - moved_at)))
    after = cache.get("/v2/dist/team/app/manifests/latest", headers=accept)
    assert after.headers["Docker-Content-Digest"] == second.manifest.digest
    assert after.headers["Moorage-Cache"] == "miss"


def test_a_corrupt_upstream_blob_is_refused_and_not_cached(
    distribution_factory: DistributionFactory, moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    root = tmp_path / "upstream-root"
    upstream = distribution_factory(root)
    src = OciLayout(tmp_path / "src")
    image = small_image(src, name="app", tag="app")
    skopeo.push(src.path, "app", upstream.ref("team/app", "v1"))
    layer = image.layers[1].digest
    hexdigest = layer.split(":")[1]
    data = root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    body = bytearray(data.read_bytes())
    body[100] ^= 0xFF  # same size, other bytes: only the digest tells
    data.write_bytes(bytes(body))
    cache = cache_of(moorage_factory, upstream)

    cached = Path(cache.root) / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    for _ in range(2):  # refused each time: nothing was cached the first
        received = bytearray()
        url = f"{cache.url}/v2/dist/team/app/blobs/{layer}"
        # Cut short: the last bytes wait for the digest's check.
        with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url, timeout=30) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                received += chunk
        assert len(received) < len(body)
        assert not cached.exists()
    # Another client pulling the image gets an error, not the corrupt layer.
    out = f"oci:{tmp_path / 'out'}:pulled"
    failed = skopeo.run("copy", "--src-tls-verify=false", cache.ref("dist/team/app", "v1"), out, check=False)
    assert failed.returncode != 0
    assert not cached.exists()


def test_pushes_into_a_cached_prefix_are_refused(
    distribution_factory: DistributionFactory, moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    upstream = distribution_factory()
    cache = cache_of(moorage_factory, upstream)
    response = httpx.post(f"{cache.url}/v2/dist/team/app/blobs/uploads/")
    assert response.status_code == 405, response.text
    assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
    # Other names are the registry's own, as always.
    src = OciLayout(tmp_path / "src")
    small_image(src, name="app", tag="app")
    skopeo.push(src.path, "app", cache.ref("team/app", "v1"))


def test_a_moorage_upstream_with_token_auth_anonymous_and_with_credentials(
    moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    upstream = start_auth_server(moorage_factory, tmp_path, token=True, name="upstream")
    src = OciLayout(tmp_path / "src")
    image = small_image(src, name="app", tag="app")
    admin = ":".join(upstream.credentials("admin"))
    for repo in ("public/app", "team/app"):
        skopeo.push(src.path, "app", upstream.server.ref(repo, "v1"), "--dest-creds", admin)
    url = upstream.server.url
    alice, password = upstream.credentials("alice")
    cache = moorage_factory(
        env=proxy_env(
            {"name": "anonymous", "url": url, "prefix": "anon"},
            {"name": "alice", "url": url, "prefix": "authd", "username": alice, "password": password},
        )
    )
    # Anonymous upstream pulls: what anonymous may pull there, and nothing else.
    assert pulled(skopeo, cache.ref("anon/public/app", "v1"), tmp_path / "public") == image.manifest.digest
    refused = cache.get("/v2/anon/team/app/manifests/v1", headers={"Accept": "*/*"})
    assert refused.status_code == 404, refused.text
    assert refused.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    # With the upstream credentials of a user allowed there; the client never sees them.
    assert pulled(skopeo, cache.ref("authd/team/app", "v1"), tmp_path / "team") == image.manifest.digest
    assert password not in cache.log()


def upstream_blob_gets(server: RunningServer) -> float:
    total = 0.0
    for line in server.get("/metrics").text.splitlines():
        if (
            line.startswith("moorage_http_requests_total{")
            and 'method="GET"' in line
            and 'route="/v2/{name:path}/blobs/{digest}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_ten_concurrent_pulls_of_an_uncached_blob_make_one_upstream_get(
    moorage_factory: MoorageFactory, tmp_path: Path
) -> None:
    upstream = moorage_factory()
    data = os.urandom(100 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=upstream.url, timeout=60) as client:
        started = client.post("/v2/team/big/blobs/uploads/")
        assert started.status_code == 202
        location = started.headers["Location"]
        put = client.put(f"{location}{'&' if '?' in location else '?'}digest={digest}", content=data)
        assert put.status_code == 201, put.text
    cache = cache_of(moorage_factory, upstream)
    before = upstream_blob_gets(upstream)

    def pull() -> str:
        hasher = hashlib.sha256()
        with httpx.stream("GET", f"{cache.url}/v2/dist/team/big/blobs/{digest}", timeout=60) as response:
            assert response.status_code == 200, response.read()
            for chunk in response.iter_bytes():
                hasher.update(chunk)
        return "sha256:" + hasher.hexdigest()

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        digests = list(pool.map(lambda _: pull(), range(10)))
    assert digests == [digest] * 10
    assert upstream_blob_gets(upstream) - before == 1
    # Cached: served from Moorage's storage now, the upstream not asked again.
    assert pull() == digest
    assert upstream_blob_gets(upstream) - before == 1


def test_docker_and_podman_pull_docker_hub_names_through_the_mirror(
    distribution_factory: DistributionFactory,
    moorage_factory: MoorageFactory,
    skopeo: Skopeo,
    docker: Docker,
    podman: Podman,
    tmp_path: Path,
) -> None:
    hub = distribution_factory()  # stands in for Docker Hub: there is no network beyond 127.0.0.1
    src = OciLayout(tmp_path / "src")
    alpine = small_image(src, name="alpine", tag="alpine")
    own = small_image(src, name="own", tag="own")
    skopeo.push(src.path, "alpine", hub.ref("library/alpine", "latest"))
    cache = moorage_factory(env=proxy_env({"name": "hub", "url": hub.url, "prefix": ""}))
    # The registry's own repositories beside the mirror: pushed and pulled as before, never looked up upstream.
    skopeo.push(src.path, "own", cache.ref("team/app", "v1"))
    assert pulled(skopeo, cache.ref("team/app", "v1"), tmp_path / "own") == own.manifest.digest

    with docker.daemon.registry_mirror(cache.url):
        docker.run("pull", "alpine")
    try:
        digests = json.loads(docker.run("image", "inspect", "--format", "{{json .RepoDigests}}", "alpine").stdout)
        assert f"alpine@{alpine.manifest.digest}" in digests
    finally:
        docker.run("rmi", "alpine", check=False)
    assert "library/alpine" in cache.get_json("/v2/_catalog")["repositories"]

    conf = tmp_path / "registries.conf"
    conf.write_text(
        f'[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n\n'
        f'[[registry.mirror]]\nlocation = "{cache.host}"\ninsecure = true\n'
    )
    podman.registries_conf = conf
    hub.stop()  # podman is served from what docker's pull cached
    podman.run("pull", "docker.io/library/alpine:latest")
    (entry,) = json.loads(podman.run("image", "inspect", "docker.io/library/alpine:latest").stdout)
    assert entry["Digest"] == alpine.manifest.digest


def test_podman_pulls_through_a_prefix(
    distribution_factory: DistributionFactory,
    moorage_factory: MoorageFactory,
    skopeo: Skopeo,
    podman: Podman,
    tmp_path: Path,
) -> None:
    upstream = distribution_factory()
    src = OciLayout(tmp_path / "src")
    index = multiarch_index(src, name="multi", tag="multi")
    skopeo.push(src.path, "multi", upstream.ref("team/multi", "1.0"), "--all")
    cache = cache_of(moorage_factory, upstream)
    ref = f"{cache.host}/dist/team/multi:1.0"
    podman.run("pull", "--tls-verify=false", "--arch", "arm64", ref)
    (entry,) = json.loads(podman.run("image", "inspect", ref).stdout)
    assert entry["Architecture"] == "arm64"
    assert entry["Digest"] == index.index.digest


def test_moorage_mirror_warms_the_cache_for_offline_use_and_copies(
    distribution_factory: DistributionFactory,
    moorage_factory: MoorageFactory,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    upstream = distribution_factory()
    src = OciLayout(tmp_path / "src")
    index = multiarch_index(src, name="multi", tag="multi")
    image = small_image(src, name="app", tag="app")
    skopeo.push(src.path, "multi", upstream.ref("team/multi", "1.0"), "--all")
    skopeo.push(src.path, "app", upstream.ref("team/app", "v1"))
    cache = cache_of(moorage_factory, upstream, tag_ttl="1s")
    refs = tmp_path / "refs.txt"
    refs.write_text(f"# what the offline site needs\n{cache.host}/dist/team/app:v1\n")
    warmed = run_cli(
        "mirror", "--insecure", "--all", "--json", f"{cache.host}/dist/team/multi:1.0", "--file", str(refs),
        docker_config=tmp_path / "docker-config",
    ).ok()  # fmt: skip
    results = json.loads(warmed.stdout.splitlines()[-1])  # after a line per blob
    assert [r["digest"] for r in results] == [index.index.digest, image.manifest.digest]
    copied = run_cli(
        "mirror", "--insecure", "--json", f"{cache.host}/dist/team/app:v1", "--to", f"{cache.host}/offline",
        docker_config=tmp_path / "docker-config",
    ).ok()  # fmt: skip
    assert json.loads(copied.stdout.splitlines()[-1])[0]["copied_to"].endswith("/offline/dist/team/app:v1")

    upstream.stop()
    time.sleep(1.1)  # the tags are due for a check the upstream cannot answer: served from the cache
    skopeo.pull(cache.ref("dist/team/multi", "1.0"), tmp_path / "multi", "pulled", "--all")
    layout = OciLayout.open(tmp_path / "multi")
    assert layout.ref("pulled").digest == index.index.digest
    assert_same_blobs(src, layout, index.index.digest)
    assert pulled(skopeo, cache.ref("offline/dist/team/app", "v1"), tmp_path / "offline") == image.manifest.digest


def test_an_https_upstream_with_its_own_ca_token_auth_and_a_password_file(
    tls_server: TlsServer, moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    src = OciLayout(tmp_path / "src")
    image = small_image(src, name="tls", tag="v1")
    cert_dir = tmp_path / "certs.d"
    cert_dir.mkdir()
    (cert_dir / "ca.crt").write_bytes(tls_server.cert.read_bytes())
    alice = f"alice:{PASSWORDS['alice']}"
    ref = f"docker://{tls_server.host}/team/app:v1"
    skopeo.run(
        "copy", "--preserve-digests", "--dest-cert-dir", str(cert_dir), "--dest-creds", alice, f"oci:{src.path}:v1", ref
    )
    password_file = tmp_path / "upstream-password"
    password_file.write_text(PASSWORDS["alice"] + "\n")
    upstream = {"url": f"https://{tls_server.host}", "username": "alice", "password_file": str(password_file)}
    cache = moorage_factory(
        env=proxy_env(
            {"name": "tls", "prefix": "tls", "ca_file": str(tls_server.cert), **upstream},
            {"name": "untrusted", "prefix": "untrusted", **upstream},  # the system's CAs do not know it
        )
    )
    assert pulled(skopeo, cache.ref("tls/team/app", "v1"), tmp_path / "out") == image.manifest.digest
    refused = cache.get("/v2/untrusted/team/app/manifests/v1", headers={"Accept": "*/*"})
    assert refused.status_code == 503, refused.text
    assert PASSWORDS["alice"] not in cache.log()
