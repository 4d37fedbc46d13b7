"""Webhook notifications: Distribution's envelope, filters, retries until the receiver answers."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.durations import parse_duration
from registry.notifications.notifier import Notifier
from registry.notifications.queue import DeliveryQueue
from registry.settings import NotificationsSettings
from registry.store.events import Event, EventBus, EventType
from tests.api.conftest import ClientFactory, filesystem_storage
from tests.api.helpers import OCI_MANIFEST, push_blob, push_image
from tests.webhook_receiver import Receiver


@pytest.fixture
def storage_config(tmp_path: Path) -> dict[str, Any]:
    return filesystem_storage(tmp_path)  # nothing here depends on the storage backend


EVENTS_TYPE = "application/vnd.docker.distribution.events.v1+json"


def notifications(receiver: Receiver, tmp_path: Path, **endpoint: Any) -> dict[str, Any]:
    settings = {
        "endpoints": [
            {
                "name": "ci",
                "url": receiver.url,
                "timeout": "2s",
                "threshold": 2,
                "backoff": "300ms",
                "headers": {"Authorization": ["Bearer hook-token"]},
                **endpoint,
            }
        ],
        "queue_path": str(tmp_path / "notifications.sqlite3"),
    }
    return {"notifications": settings}


async def test_push_pull_delete_events_carry_every_field(
    client_factory: ClientFactory, receiver: Receiver, tmp_path: Path
) -> None:
    client = await client_factory(sections=notifications(receiver, tmp_path))
    headers = {"X-Request-ID": "push-1", "User-Agent": "ci-pusher/1.0"}
    digest, body = await push_image(client, "team/app", "v1")
    put = await client.put("/v2/team/app/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST, **headers})
    assert put.status_code == 201

    (first, second) = await receiver.wait_for("push", "manifests", 2)
    assert second["request"]["id"] == "push-1"
    event = second
    assert set(event) == {"id", "timestamp", "action", "target", "request", "actor", "source"}
    assert event["id"] != first["id"]
    assert event["timestamp"].endswith("Z") and event["timestamp"][10] == "T"
    assert event["target"] == {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": len(body),
        "length": len(body),
        "repository": "team/app",
        "url": f"http://registry.test/v2/team/app/manifests/{digest}",
        "tag": "v1",
    }
    request = event["request"]
    assert request["method"] == "PUT" and request["useragent"] == "ci-pusher/1.0"
    assert request["host"] == "registry.test" and request["addr"]
    assert event["actor"] == {"name": ""}
    assert set(event["source"]) == {"addr", "instanceID"} and event["source"]["instanceID"]
    sent_headers, _ = receiver.envelopes[0]
    assert sent_headers["Content-Type"] == EVENTS_TYPE
    assert sent_headers["Authorization"] == "Bearer hook-token"
    # Blob events are off by default: manifests only.
    assert all("/manifests/" in e["target"]["url"] for e in receiver.events())

    pulled = await client.get(f"/v2/team/app/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
    assert pulled.status_code == 200
    (pull,) = await receiver.wait_for("pull", "manifests")
    assert pull["target"]["digest"] == digest and "tag" not in pull["target"]
    assert (await client.head("/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})).status_code == 200

    assert (await client.delete(f"/v2/team/app/manifests/{digest}")).status_code == 202
    (delete,) = await receiver.wait_for("delete", "manifests")
    assert delete["target"]["digest"] == digest and delete["target"]["repository"] == "team/app"
    assert len(await receiver.wait_for("pull", "manifests")) == 1  # HEAD is not a pull


async def test_blob_events_and_ignore_filters(
    client_factory: ClientFactory, receiver: Receiver, tmp_path: Path
) -> None:
    sections = notifications(receiver, tmp_path, ignore={"actions": ["pull"]})
    sections["notifications"]["blobs"] = True
    client = await client_factory(sections=sections)
    data = b"layer bytes" * 100
    digest = await push_blob(client, "team/app", data)
    (push,) = await receiver.wait_for("push", "blobs")
    assert push["target"]["digest"] == digest and push["target"]["size"] == len(data)
    assert (await client.post(f"/v2/other/app/blobs/uploads/?mount={digest}&from=team/app")).status_code == 201
    (mount,) = await receiver.wait_for("mount", "blobs")
    assert mount["target"]["repository"] == "other/app"
    assert (await client.get(f"/v2/team/app/blobs/{digest}")).status_code == 200
    # Events go out in order: once a later push arrived, an unfiltered pull would have arrived before it.
    await push_blob(client, "team/app", b"later")
    assert len(await receiver.wait_for("push", "blobs", 2)) == 2
    assert [e for e in receiver.events() if e["action"] == "pull"] == []


async def test_events_wait_for_a_receiver_that_is_down(
    client_factory: ClientFactory, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.status = 503
    client = await client_factory(sections=notifications(receiver, tmp_path))
    digest, _ = await push_image(client, "team/app", "v1")
    await asyncio.sleep(1.0)  # several failed attempts
    assert receiver.events() == []
    receiver.status = 200
    (push,) = await receiver.wait_for("push", "manifests")
    assert push["target"]["digest"] == digest
    await asyncio.sleep(0.5)
    assert len(receiver.events()) == 1, "delivered more than once"


async def test_no_endpoints_no_events(client: httpx.AsyncClient) -> None:
    await push_image(client, "team/app", "v1")  # nothing to set up, nothing fails


def test_durations_in_distributions_format() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2s") == 2.0
    assert parse_duration("1.5m") == 90.0
    assert parse_duration(3) == 3


def claimed(path: Path) -> bool:
    db = sqlite3.connect(path)
    try:
        return bool(db.execute("SELECT count(*) FROM deliveries WHERE claimed_until > 0").fetchone()[0])
    finally:
        db.close()


async def test_a_notifier_stopped_mid_send_gives_its_deliveries_back(tmp_path: Path) -> None:
    """Stopping while a delivery is on its way (the endpoint has not answered) must not leave it claimed for the
    lease (timeout + 30 s): the next process sends it at once."""
    released = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await released.wait()
        writer.close()
        await writer.wait_closed()

    hanging = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = hanging.sockets[0].getsockname()[1]
    settings = NotificationsSettings.model_validate(
        {
            "endpoints": [{"name": "slow", "url": f"http://127.0.0.1:{port}/events", "timeout": "30s"}],
            "queue_path": str(tmp_path / "queue.sqlite3"),
        }
    )
    queue = DeliveryQueue.open(tmp_path / "queue.sqlite3")
    queue.add([("slow", '{"action":"push"}')])
    notifier = Notifier(settings)
    await notifier.start()
    try:
        for _ in range(200):  # until the delivery is claimed and on its way
            if claimed(tmp_path / "queue.sqlite3"):
                break
            await asyncio.sleep(0.02)
        assert claimed(tmp_path / "queue.sqlite3")
    finally:
        await notifier.aclose()
        released.set()
        hanging.close()
        await hanging.wait_closed()
        for writer in writers:  # every connection closed before the loop is: nothing left for the GC to warn of
            if not writer.is_closing():
                writer.close()
        await asyncio.sleep(0.05)
    assert [d.event for d in queue.claim("slow", 10, 60.0)] == ['{"action":"push"}']
    queue.close()


async def test_events_being_queued_when_the_notifier_stops_are_kept(tmp_path: Path) -> None:
    """Stopping cancels the flush. An addition it had handed to the notifier's one executor thread, not yet begun,
    was cancelled with it and its events lost (an admin command's GC events, once, on a loaded CI machine)."""
    settings = NotificationsSettings.model_validate(
        {"endpoints": [{"name": "hook", "url": "http://127.0.0.1:9/"}], "queue_path": str(tmp_path / "q.sqlite3")}
    )
    notifier = Notifier(settings, deliver=False)
    events = EventBus()
    notifier.follow(events)
    await notifier.start()
    busy = threading.Event()
    holding = asyncio.ensure_future(notifier._run(busy.wait))  # the executor's only thread, taken for now
    try:
        events.emit(Event(EventType.TAG_DELETED, "team/app", "sha256:" + "a" * 64, "v1"))
        await asyncio.sleep(0.3)  # the flush has taken the event; its addition waits for the thread
        closing = asyncio.ensure_future(notifier.aclose())
        await asyncio.sleep(0.2)  # the flush is cancelled
    finally:
        busy.set()
    await closing
    await holding
    queue = DeliveryQueue.open(tmp_path / "q.sqlite3")
    try:
        queued = queue.claim("hook", 10, 60.0)
    finally:
        queue.close()
    assert [json.loads(d.event)["target"]["tag"] for d in queued] == ["v1"]
