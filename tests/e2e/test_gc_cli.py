"""`moorage du`, `moorage repo rm` and `moorage gc` beside a live server, and the `gc.interval` schedule on two
replicas sharing one storage (one of them runs each slot)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO_ROOT, MoorageFactory, RunningServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
COMMAND_TIMEOUT = 60.0
SCHEDULE_TIMEOUT = 20.0


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def moorage(server: RunningServer, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **server.moorage_env, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "registry", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def push(client: httpx.Client, name: str, tag: str, blobs: list[bytes]) -> bytes:
    for blob in blobs:
        response = client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest_of(blob)}, content=blob)
        assert response.status_code == 201, response.text
    config, *layers = blobs
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(b), "size": len(b)}
                for b in layers
            ],
        }
    ).encode()
    response = client.put(f"/v2/{name}/manifests/{tag}", content=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 201, response.text
    return manifest


def stored_digests(server: RunningServer) -> set[str]:
    root = server.root / "docker/registry/v2/blobs/sha256"
    return {f"sha256:{path.parent.name}" for path in root.glob("*/*/data")}


def test_admin_commands_beside_a_live_server(moorage_factory: MoorageFactory, tmp_path: Path) -> None:
    server = moorage_factory()
    shared, unique_a, unique_b = b"shared " * 4000, b"only a " * 1000, b"only b " * 500
    config_a, config_b = b'{"a": 1}', b'{"b": 2}'
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        manifest_a = push(client, "team/a", "v1", [config_a, shared, unique_a])
        manifest_b = push(client, "team/b", "v1", [config_b, shared, unique_b])

    du = moorage(server, tmp_path, "du", "--json")
    assert du.returncode == 0, du.stderr
    usage = json.loads(du.stdout)
    logical_a = len(config_a) + len(shared) + len(unique_a) + len(manifest_a)
    logical_b = len(config_b) + len(shared) + len(unique_b) + len(manifest_b)
    assert [(r["name"], r["logical_bytes"]) for r in usage["repositories"]] == [
        ("team/a", logical_a),
        ("team/b", logical_b),
    ]
    assert usage["physical_bytes"] == logical_a + logical_b - len(shared)
    assert usage["dedup_saved_bytes"] == len(shared)
    text = moorage(server, tmp_path, "du", "team/b")
    assert text.returncode == 0 and "team/b" in text.stdout and "team/a" not in text.stdout, text.stdout
    missing = moorage(server, tmp_path, "du", "team/none")
    assert missing.returncode == 1 and "team/none" in missing.stderr

    removed = moorage(server, tmp_path, "repo", "rm", "team/a")
    assert removed.returncode == 0, removed.stderr
    assert "deleted team/a: 1 tags, 1 manifests" in removed.stdout
    again = moorage(server, tmp_path, "repo", "rm", "team/a")
    assert again.returncode == 1 and "not known" in again.stderr
    assert server.get_json("/v2/_catalog")["repositories"] == ["team/b"]

    before = stored_digests(server)
    dry = moorage(server, tmp_path, "gc", "--dry-run", "--grace", "0s", "--json")
    assert dry.returncode == 0, dry.stderr
    unique_to_a = {digest_of(config_a), digest_of(unique_a), digest_of(manifest_a)}
    assert {b["digest"] for b in json.loads(dry.stdout)["blobs_removed"]} == unique_to_a
    assert stored_digests(server) == before

    collected = moorage(server, tmp_path, "gc", "--grace", "0s", "--settle", "0s")
    assert collected.returncode == 0, collected.stderr
    assert re.search(r"^3 blobs, .* reclaimed", collected.stdout, re.MULTILINE), collected.stdout
    assert f"({len(unique_a)} bytes)" in collected.stdout
    assert stored_digests(server) == before - unique_to_a
    assert digest_of(shared) in stored_digests(server)
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        for blob in (config_b, shared, unique_b):
            response = client.get(f"/v2/team/b/blobs/{digest_of(blob)}")
            assert response.status_code == 200 and response.content == blob

    bad = moorage(server, tmp_path, "gc", "--grace", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr


def gc_runs(server: RunningServer) -> float:
    text = server.get("/metrics").text
    match = re.search(r'^moorage_gc_runs_total\{outcome="ok"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("mode", ["database", "full"])
def test_scheduled_gc_runs_on_one_replica_per_slot(moorage_factory: MoorageFactory, tmp_path: Path, mode: str) -> None:
    # database: the slot is taken by moving the database's slot counter; full: by a lease object in storage.
    env = {
        "MOORAGE_GC__INTERVAL": "1s",
        "MOORAGE_GC__GRACE": "0s",
        "MOORAGE_GC__SETTLE": "0s",
        "MOORAGE_GC__MODE": mode,
    }
    root = tmp_path / "shared-root"
    first_slot = int(time.time()) + 1
    first = moorage_factory(root, env=env)
    second = moorage_factory(root, env=env)
    orphan = b"nobody references this"
    with httpx.Client(base_url=first.url, timeout=30.0) as client:
        response = client.post("/v2/team/app/blobs/uploads/", params={"digest": digest_of(orphan)}, content=orphan)
        assert response.status_code == 201
    deadline = time.monotonic() + SCHEDULE_TIMEOUT
    while digest_of(orphan) in stored_digests(first):
        assert time.monotonic() < deadline, "the scheduled GC never collected the orphan"
        time.sleep(0.2)

    runs = gc_runs(first) + gc_runs(second)
    assert runs >= 1
    if mode == "full":
        leases = list((root / "moorage/gc/leases").iterdir())
        # Each slot's lease is created exclusively: two replicas never both run one slot.
        assert runs <= len(leases), (runs, sorted(p.name for p in leases))
        owners = {json.loads(p.read_text())["owner"] for p in leases}
        assert owners, "every lease names the replica that ran the slot"
        return
    with contextlib.closing(sqlite3.connect(root / "moorage/index.sqlite")) as index:
        (last_slot,) = index.execute("SELECT value FROM meta WHERE key = 'gc_slot'").fetchone()
    # One run per slot at most, across both replicas (each of them wakes at every slot).
    assert 1 <= runs <= int(last_slot) - first_slot + 1, (runs, first_slot, last_slot)
    assert not (root / "moorage/gc/leases").exists()
