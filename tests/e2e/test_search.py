"""Search and the metadata index for real: `moorage serve --workers 2` sharing one index file, the docker CLI's exact
requests, the companion client's `moorage search`, `moorage index rebuild` beside a live server, a restart without
the index file, and replicas over one bucket that each keep their own index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import REPO_ROOT, MoorageFactory, RunningServer, S3Bucket, Skopeo
from .images import OciLayout, multiarch_index, small_image

pytestmark = pytest.mark.e2e

# What the docker CLI sends for `docker search 127.0.0.1:PORT/TERM` (moby registry/search_session.go), sent as it
# would send them over many queries; the real CLI through a real daemon is in tests/e2e/test_docker.py.
DOCKER_HEADERS = {"User-Agent": "docker/27.5.1 go/go1.22.10 git-commit/4c9b3b0 os/linux arch/amd64"}
QUERIES = ["", "e2e", "app", "platform:linux/arm64", "label:e2e.name=app-v1", "tag:v*"]


def answers(server: RunningServer) -> dict[str, Any]:
    catalog = server.get_json("/v2/_catalog")["repositories"]
    found: dict[str, Any] = {"catalog": catalog}
    for q in QUERIES:
        response = server.get("/api/v1/search", params={"q": q, "n": 100})
        assert response.status_code == 200, response.text
        found[q] = [{k: v for k, v in hit.items() if k != "pulls"} for hit in response.json()["results"]]
    for name in catalog:
        summary = server.get_json(f"/api/v1/repositories/{name}")
        found[name] = {k: v for k, v in summary.items() if k != "pulls"}
    return found


def moorage_cli(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env.update(server.moorage_env)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "registry", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"never happened within {timeout:g}s: {what}")


def test_search_with_two_workers_rebuild_and_restart(
    moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    server = moorage_factory(root, workers=2)
    src = OciLayout(tmp_path / "src")
    small_image(src, name="app-v1", tag="v1")
    small_image(src, name="tool", architecture="arm64", tag="tool")
    multiarch_index(src, name="multi", tag="multi")
    skopeo.push(src.path, "v1", server.ref("e2e/app", "v1"))
    skopeo.push(src.path, "v1", server.ref("e2e/app", "latest"))
    skopeo.push(src.path, "tool", server.ref("e2e/tools/arm-tool", "v2"))
    skopeo.push(src.path, "multi", server.ref("e2e/multi", "1.0"), "--all")
    # Either worker answers; both read the one index file: the one that took a push knows it at once, the other
    # as soon as it is applied (milliseconds). Six answers in a row, whichever worker gives them, list everything.
    listed = {"repositories": ["e2e/app", "e2e/multi", "e2e/tools/arm-tool"]}
    eventually(lambda: all(server.get_json("/v2/_catalog") == listed for _ in range(6)), "both workers list it all")

    ping = server.get("/v1/_ping", headers=DOCKER_HEADERS)
    assert ping.status_code == 200 and ping.headers["X-Docker-Registry-Standalone"] == "true"
    search = server.get(
        "/v1/search", params={"q": "app", "n": "25"}, headers={**DOCKER_HEADERS, "X-Docker-Token": "true"}
    )
    assert search.status_code == 200
    assert search.json() == {
        "query": "app",
        "num_results": 1,
        "results": [
            {"name": "e2e/app", "description": "", "star_count": 0, "is_official": False, "is_automated": False}
        ],
    }
    arm = server.get_json("/api/v1/search?q=platform:linux/arm64")["results"]
    assert [hit["name"] for hit in arm] == ["e2e/multi", "e2e/tools/arm-tool"]
    assert server.get_json("/api/v1/search?q=label:e2e.name=app-v1")["results"][0]["tags"] == ["latest", "v1"]

    found = moorage_cli(server, "search", server.host, "arm", "--json")
    assert found.returncode == 0, found.stderr
    assert [r["name"] for r in json.loads(found.stdout)["results"]] == ["e2e/tools/arm-tool"]

    skopeo.delete(server.ref("e2e/app", "latest"))  # by tag here means by digest: v1 goes too
    untagged = lambda: all(server.get_json("/api/v1/repositories/e2e/app")["tags"] == [] for _ in range(6))  # noqa: E731
    eventually(untagged, "both workers drop the deleted tags")
    before = answers(server)

    rebuilt = moorage_cli(server, "index", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "indexed 3 repositories" in rebuilt.stdout
    assert answers(server) == before

    server.stop()
    index_file = root / "moorage" / "index.sqlite"
    assert index_file.exists()
    for suffix in ("", "-wal", "-shm"):
        index_file.with_name(index_file.name + suffix).unlink(missing_ok=True)
    restarted = moorage_factory(root, workers=2)
    eventually(lambda: restarted.get("/readyz").status_code == 200, "the index is rebuilt")
    assert answers(restarted) == before


def test_replicas_with_their_own_index_files(
    moorage_factory: MoorageFactory, s3_bucket: S3Bucket, skopeo: Skopeo, tmp_path: Path
) -> None:
    fast = {"MOORAGE_INDEX__POLL_INTERVAL": "0.2"}
    a = moorage_factory(storage=s3_bucket.storage(), env={**fast, "MOORAGE_INDEX__PATH": str(tmp_path / "a.sqlite")})
    b = moorage_factory(storage=s3_bucket.storage(), env={**fast, "MOORAGE_INDEX__PATH": str(tmp_path / "b.sqlite")})
    src = OciLayout(tmp_path / "src")
    small_image(src, name="app-v1", tag="v1")
    skopeo.push(src.path, "v1", a.ref("e2e/replicated", "v1"))
    assert a.get_json("/v2/_catalog") == {"repositories": ["e2e/replicated"]}

    def b_finds_it() -> bool:
        hits = b.get_json("/api/v1/search?q=replicated")["results"]
        return [(hit["name"], hit["tags"]) for hit in hits] == [("e2e/replicated", ["v1"])]

    eventually(b_finds_it, "replica b's index has what a pushed")
    assert b.get_json("/v2/_catalog") == {"repositories": ["e2e/replicated"]}
    skopeo.delete(b.ref("e2e/replicated", "v1"))
    eventually(lambda: a.get_json("/api/v1/repositories/e2e/replicated")["tags"] == [], "replica a drops the tag")
    assert httpx.get(f"{a.url}/v2/e2e/replicated/tags/list").json()["tags"] == []
