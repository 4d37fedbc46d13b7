"""GC racing live pushes: a real `moorage serve` with two workers, clients pushing images that share layers,
re-pushing (re-tagging) and deleting them, while `moorage gc --grace 0s --delete-untagged` runs in a loop.
Afterwards every image pulls completely, every stored blob hashes to its name, and no client ever saw
MANIFEST_BLOB_UNKNOWN or BLOB_UNKNOWN."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import REPO_ROOT, MoorageFactory, RunningServer, S3Bucket
from tests.postgres_server import PostgresServer

# The race goes on until GC has removed blobs in GC_RUNS runs, each overlapping pushes, and the clients did at
# least twice LEAST of each kind of write; at most RACE_SECONDS (moto answers each call in milliseconds, not
# microseconds; "postgresql": the filesystem, the index in PostgreSQL).
RACE_SECONDS = {"filesystem": 25.0, "s3": 40.0, "postgresql": 20.0}
SETTLE = {"filesystem": "2s", "s3": "8s", "postgresql": "2s"}
"""GC's settle period here, with a grace period of 0: a client's blob may be set aside as soon as it is uploaded, and
only what its manifest PUT restores within the settle period survives, so the settle period must outlast a push's
gap from its first upload to its manifest. On moto under CI's load an upload's PUT takes up to 2 s (a single chunk
is copied twice since 167619f): a push of two new blobs took 5 s there, and 2 s lost a blob (CI, 2026-12-07)."""
GC_RUNS = 3
# Enough of each kind of write for the race to mean something (S3 through moto manages fewer per second).
LEAST = {"filesystem": (20, 5, 3), "s3": (15, 4, 2), "postgresql": (15, 4, 2)}
CLIENTS = 4
SHARED_LAYERS = 8
LAYER_SIZE = 32 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
GC_TIMEOUT = 60.0


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}


@dataclass
class Image:
    repository: str
    tag: str
    blobs: list[bytes]
    manifest: bytes = b""

    def __post_init__(self) -> None:
        config, *layers = self.blobs
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer) for layer in layers],
        }
        self.manifest = json.dumps(body).encode()


@dataclass
class Outcome:
    errors: Counter[str] = field(default_factory=Counter)
    pushes: int = 0
    repushes: int = 0
    deletes: int = 0
    mounts: int = 0
    redirect_retries: int = 0
    live: dict[tuple[str, str], Image] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    """Each refusal, when and what it said: what a failed run prints beside GC's reports."""


def record(outcome: Outcome, response: httpx.Response) -> None:
    if response.status_code >= 400 and response.request.method != "HEAD":
        try:
            codes = [e["code"] for e in response.json()["errors"]]
        except (ValueError, KeyError, TypeError):
            codes = [f"HTTP {response.status_code}"]
        outcome.errors.update(codes)
        outcome.failures.append(
            f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {response.request.method} "
            f"{response.request.url.path} {response.status_code}: {response.text[:400]}"
        )


def explained(outcome: Outcome, reports: list[dict[str, Any]]) -> str:
    """The refusals, and what GC did to the blobs they name (each run's start and end, wall clock)."""
    named = {word.strip('"{}[],') for failure in outcome.failures for word in failure.split() if "sha256:" in word}
    named = {word[word.index("sha256:") :][:71] for word in named}
    lines = [*outcome.failures, "GC runs touching those blobs:"]
    for number, report in enumerate(reports):
        removed = {b["digest"] for b in report.get("blobs_removed", [])} & named
        restored = set(report.get("blobs_restored", [])) & named
        if removed or restored:
            lines.append(
                f"run {number} {report.get('_started', '?')}..{report.get('_ended', '?')}: "
                f"removed {sorted(removed)} restored {sorted(restored)}"
            )
    return "\n".join(lines)


async def push(client: httpx.AsyncClient, image: Image, outcome: Outcome, mount_from: str | None) -> bool:
    """What docker and skopeo do: HEAD each blob, upload (or mount) the missing ones, PUT the manifest."""
    name = image.repository
    for blob in image.blobs:
        digest = digest_of(blob)
        head = await client.head(f"/v2/{name}/blobs/{digest}")
        if head.status_code == 200:
            continue
        if mount_from is not None:
            mounted = await client.post(f"/v2/{name}/blobs/uploads/", params={"mount": digest, "from": mount_from})
            record(outcome, mounted)
            if mounted.status_code == 201:
                outcome.mounts += 1
                continue
        started = await client.post(f"/v2/{name}/blobs/uploads/")
        record(outcome, started)
        if started.status_code != 202:
            return False
        location = started.headers["location"]  # keeps its signed _state: the digest goes beside it
        finished = await client.put(f"{location}&digest={digest}", content=blob)
        record(outcome, finished)
        if finished.status_code != 201:
            return False
    response = await client.put(
        f"/v2/{name}/manifests/{image.tag}", content=image.manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    record(outcome, response)
    return response.status_code == 201


async def pull(client: httpx.AsyncClient, image: Image, outcome: Outcome) -> list[str]:
    """Problems found pulling the image completely (empty when every blob came back intact)."""
    problems = []
    response = await client.get(f"/v2/{image.repository}/manifests/{image.tag}", headers={"Accept": OCI_MANIFEST})
    record(outcome, response)
    if response.status_code != 200 or response.content != image.manifest:
        return [f"{image.repository}:{image.tag}: manifest {response.status_code}"]
    for blob in image.blobs:
        url = f"/v2/{image.repository}/blobs/{digest_of(blob)}"
        got = await client.get(url)
        if got.status_code == 404 and got.history and got.history[0].status_code == 307:
            # The registry checked the blob in place, then GC moved it before the client reached the bucket (S3's
            # move is a copy then a delete; no conditional delete closes that window). Docker and skopeo ask the
            # registry again, which restores the blob from quarantine: so does this client, and counts it.
            outcome.redirect_retries += 1
            got = await client.get(url)
        record(outcome, got)
        if got.status_code != 200 or got.content != blob:
            problems.append(f"{image.repository}:{image.tag}: blob {digest_of(blob)} {got.status_code}")
    return problems


async def client_loop(
    server: RunningServer, number: int, shared: list[bytes], outcome: Outcome, finished: Callable[[], bool]
) -> None:
    rng = random.Random(number)
    own: list[Image] = []
    deleted: list[Image] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0, follow_redirects=True) as client:
        count = 0
        while not finished():
            count += 1
            choice = rng.random()
            stored = bool(own) and choice < 0.25
            if stored:
                image = rng.choice(own)  # re-push: every blob is there, the client skips them all
                outcome.repushes += 1
            elif deleted and choice < 0.45:
                image = deleted.pop()  # push again what was deleted: its blobs may be garbage by now
                own.append(image)
                outcome.repushes += 1
            else:
                repository = rng.choice(["race/one", "race/two"])
                config = json.dumps({"client": number, "image": count}).encode()
                unique = os.urandom(LAYER_SIZE // 4)
                image = Image(repository, f"c{number}-{count}", [config, *rng.sample(shared, 2), unique])
                own.append(image)
                outcome.pushes += 1
            other = "race/two" if image.repository == "race/one" else "race/one"
            if not await push(client, image, outcome, mount_from=other if rng.random() < 0.5 else None):
                if not stored:  # never stored: not expected to pull (the failure is in outcome.errors)
                    own.remove(image)
                continue
            problems = await pull(client, image, outcome)
            assert not problems, problems
            if len(own) > 3 and rng.random() < 0.3:
                victim = own.pop(rng.randrange(len(own)))
                digest = digest_of(victim.manifest)
                response = await client.delete(f"/v2/{victim.repository}/manifests/{digest}")
                record(outcome, response)
                if response.status_code == 202:
                    outcome.deletes += 1
                    deleted.append(victim)
        for image in own:
            outcome.live[(image.repository, image.tag)] = image


def assert_blobs_hash_to_their_names(server: RunningServer, bucket: S3Bucket | None) -> None:
    if bucket is None:
        stored = list((server.root / "docker/registry/v2/blobs/sha256").glob("*/*/data"))
        assert stored
        for data in stored:
            assert hashlib.sha256(data.read_bytes()).hexdigest() == data.parent.name, data
        return
    client = bucket.client()
    stored = bucket.blob_data_keys()
    assert stored
    for digest, keys in stored.items():
        assert len(keys) == 1, keys
        body = client.get_object(Bucket=bucket.name, Key=keys[0])["Body"].read()
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest, keys


def gc_loop(
    server: RunningServer, cwd: Path, stop: threading.Event, reports: list[dict[str, Any]], settle: str
) -> None:
    env = {**os.environ, **server.moorage_env, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "registry", "gc", "--grace", "0s", "--settle", settle, "--delete-untagged"]
    while not stop.is_set():
        started = time.strftime("%H:%M:%S")
        result = subprocess.run(
            [*command, "--json"],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=GC_TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        report["_started"], report["_ended"] = started, time.strftime("%H:%M:%S")
        reports.append(report)


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)


@pytest.mark.parametrize("store", ["filesystem", "s3", "postgresql"])
def test_gc_loses_nothing_while_clients_push(
    tmp_path: Path, request: pytest.FixtureRequest, store: str, database: str, moorage_factory: MoorageFactory
) -> None:
    # GC deletes untagged manifests while clients re-tag old ones: two workers on the filesystem; on S3, one
    # bucket whose listings and deletes are not atomic; two workers whose index is a PostgreSQL database (GC's
    # deletions reach it through the store's events, like every write).
    bucket: S3Bucket | None = request.getfixturevalue("s3_bucket") if store == "s3" else None
    if store == "postgresql":
        server = moorage_factory(workers=2, env={"MOORAGE_DATABASE__URL": database})
    elif bucket is None:
        server = moorage_factory(workers=2)
    else:
        server = moorage_factory(storage=bucket.storage())
    shared = [os.urandom(LAYER_SIZE) for _ in range(SHARED_LAYERS)]
    outcome = Outcome()
    reports: list[dict[str, Any]] = []
    stop_gc = threading.Event()
    gc_thread = threading.Thread(target=gc_loop, args=(server, tmp_path, stop_gc, reports, SETTLE[store]))

    deadline = time.monotonic() + RACE_SECONDS[store]
    pushes, repushes, deletes = LEAST[store]

    def finished() -> bool:
        if time.monotonic() >= deadline:
            return True
        removing_runs = sum(1 for report in list(reports) if report["blobs_removed"])
        return (
            removing_runs >= GC_RUNS
            and outcome.pushes > 2 * pushes
            and outcome.repushes > 2 * repushes
            and outcome.deletes > 2 * deletes
        )

    async def race() -> None:
        await asyncio.gather(*(client_loop(server, n, shared, outcome, finished) for n in range(CLIENTS)))

    gc_thread.start()
    try:
        asyncio.run(race())
    finally:
        stop_gc.set()
        gc_thread.join(GC_TIMEOUT)
    assert reports, "GC never completed a run"

    async def check() -> list[str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0, follow_redirects=True) as client:
            problems = []
            for image in outcome.live.values():
                problems += await pull(client, image, outcome)
            return problems

    # One more collection now that nothing is pushing, then everything still tagged must pull intact.
    final = subprocess.run(
        [sys.executable, "-m", "registry", "gc", "--grace", "0s", "--settle", "0s", "--json"],
        cwd=tmp_path,
        env={**os.environ, **server.moorage_env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=GC_TIMEOUT,
        check=True,
    )
    reports.append(json.loads(final.stdout))
    assert asyncio.run(check()) == []
    assert outcome.errors["MANIFEST_BLOB_UNKNOWN"] == 0 and outcome.errors["BLOB_UNKNOWN"] == 0, explained(
        outcome, reports
    )
    assert not outcome.errors, explained(outcome, reports)
    removed = sum(len(r["blobs_removed"]) for r in reports)
    assert removed > 0, "the race must make GC delete something"
    assert outcome.pushes > pushes and outcome.repushes > repushes and outcome.deletes > deletes, outcome

    assert_blobs_hash_to_their_names(server, bucket)
    print(
        f"\nrace: {outcome.pushes} pushes, {outcome.repushes} re-pushes, {outcome.deletes} deletes, "
        f"{outcome.mounts} mounts, {outcome.redirect_retries} redirects retried; {len(reports)} GC runs removed "
        f"{removed} blobs, restored "
        f"{sum(len(r['blobs_restored']) for r in reports)}"
    )
