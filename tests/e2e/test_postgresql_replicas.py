"""Replicas for real with the shared metadata index: three `moorage serve` processes on one S3 bucket (moto) and one
PostgreSQL database. A push through one is in the catalog and search of the others at once, a new replica with an
empty temporary directory is ready within two seconds whatever the registry holds, and the webhook events of a
replica that dies are delivered by another, once."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.postgres_server import PostgresServer
from tests.webhook_receiver import Receiver

from .conftest import MoorageFactory, RunningServer, S3Bucket, Skopeo, free_port
from .images import OciLayout, small_image
from .test_search import answers, eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
def database(postgres_server: PostgresServer) -> Any:
    """A fresh database, dropped after the test's servers have stopped (tests ask for it before them)."""
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)


def replica(
    moorage_factory: MoorageFactory,
    s3_bucket: S3Bucket,
    database: str,
    tmp: Path,
    extra: dict[str, str] | None = None,
) -> RunningServer:
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        "MOORAGE_DATABASE__URL": database,
        "MOORAGE_STORAGE__REDIRECT__DISABLE": "true",
        "TMPDIR": str(tmp),  # empty: nothing of the index may live here
        # Each replica's own file, to show the queue is not there: the database holds it.
        "MOORAGE_NOTIFICATIONS__QUEUE_PATH": str(tmp / "queue.sqlite3"),
        **(extra or {}),
    }
    return moorage_factory(storage=s3_bucket.storage(), env=env)


def found(server: RunningServer, q: str) -> list[str]:
    return [hit["name"] for hit in server.get("/api/v1/search", params={"q": q}).json()["results"]]


def test_three_replicas_share_one_index(
    database: str, moorage_factory: MoorageFactory, s3_bucket: S3Bucket, skopeo: Skopeo, tmp_path: Path
) -> None:
    a, b, c = (replica(moorage_factory, s3_bucket, database, tmp_path / f"tmp-{n}") for n in "abc")
    src = OciLayout(tmp_path / "src")
    small_image(src, name="app", tag="v1")
    skopeo.push(src.path, "v1", a.ref("e2e/shared/app", "v1"))
    # No poll interval to wait for: the replicas read the rows a's write put in the database.
    for other in (b, c):
        eventually(lambda o=other: o.get_json("/v2/_catalog")["repositories"] == ["e2e/shared/app"], "catalog", 3.0)
        eventually(lambda o=other: found(o, "app") == ["e2e/shared/app"], "search", 3.0)
    assert answers(a) == answers(b) == answers(c)
    assert not any(path.name.startswith("moorage-index") for path in (tmp_path / "tmp-a").iterdir())


def test_a_new_replica_is_ready_at_once(
    database: str, moorage_factory: MoorageFactory, s3_bucket: S3Bucket, skopeo: Skopeo, tmp_path: Path
) -> None:
    first = replica(moorage_factory, s3_bucket, database, tmp_path / "tmp-first")
    src = OciLayout(tmp_path / "src")
    for i in range(12):
        small_image(src, name=f"app-{i}", tag=f"v{i}")
    with ThreadPoolExecutor(4) as pool:  # the pushes are not the subject: four at a time
        list(pool.map(lambda i: skopeo.push(src.path, f"v{i}", first.ref(f"e2e/many/app-{i:02d}", "v1")), range(12)))

    def all_indexed() -> bool:  # each with its tag: a repository is listed from its first blob on
        for i in range(12):
            summary = first.get(f"/api/v1/repositories/e2e/many/app-{i:02d}")
            if summary.status_code != 200 or [t["tag"] for t in summary.json()["tags"]] != ["v1"]:
                return False
        return True

    eventually(all_indexed, "the first replica's index")
    expected = answers(first)

    started = time.monotonic()
    second = replica(moorage_factory, s3_bucket, database, tmp_path / "tmp-second")
    deadline = started + 2.0
    while second.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the new replica was not ready within 2 s"
        time.sleep(0.05)
    assert answers(second) == expected
    assert "building the metadata index" not in second.log()


def test_a_killed_replicas_webhook_events_are_delivered_by_another_once(
    database: str, moorage_factory: MoorageFactory, s3_bucket: S3Bucket, skopeo: Skopeo, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there until the receiver starts
    endpoint = {"name": "ci", "url": f"http://127.0.0.1:{port}/events", "timeout": "1s", "backoff": "500ms"}
    hooks = {"MOORAGE_NOTIFICATIONS__ENDPOINTS": json.dumps([endpoint])}
    a = replica(moorage_factory, s3_bucket, database, tmp_path / "tmp-a", hooks)
    b = replica(moorage_factory, s3_bucket, database, tmp_path / "tmp-b", hooks)
    src = OciLayout(tmp_path / "src")
    image = small_image(src, name="hooked", tag="v1")
    skopeo.push(src.path, "v1", a.ref("e2e/hooked", "v1"))
    eventually(lambda: "notifications: endpoint ci" in a.log() + b.log(), "a failed delivery attempt")
    os.killpg(a.proc.pid, signal.SIGKILL)  # dies with its events undelivered (perhaps mid-send)
    a.proc.wait(10)
    receiver = Receiver(port)
    try:
        (event,) = receiver.wait_for_blocking("push", "manifests")
        assert event["target"]["digest"] == image.manifest.digest and event["target"]["tag"] == "v1"
        time.sleep(3)  # anything sent twice would have arrived by now
        assert len(receiver.found("push", "manifests")) == 1
    finally:
        receiver.close()
    assert b.get("/v2/e2e/hooked/tags/list").json()["tags"] == ["v1"]
