"""Webhooks for real: skopeo pushes while the receiver is down; Moorage restarts; the event still arrives."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.webhook_receiver import Receiver

from .conftest import MoorageFactory, Skopeo, free_port
from .images import MT_MANIFEST, OciLayout, small_image

pytestmark = pytest.mark.e2e


def test_push_event_survives_a_down_receiver_and_a_restart(
    moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there until the receiver starts
    endpoint = {"name": "ci", "url": f"http://127.0.0.1:{port}/events", "timeout": "1s", "backoff": "500ms"}
    env = {
        "MOORAGE_NOTIFICATIONS__ENDPOINTS": json.dumps([endpoint]),
        "MOORAGE_NOTIFICATIONS__QUEUE_PATH": str(tmp_path / "notifications.sqlite3"),
    }
    first = moorage_factory(env=env)
    src = OciLayout(tmp_path / "src")
    image = small_image(src, name="hooked", tag="v1")
    skopeo.push(src.path, "v1", first.ref("e2e/hooked", "v1"))
    time.sleep(1.5)  # delivery fails a few times
    first.stop()
    assert "notifications: endpoint ci" in first.log()

    receiver = Receiver(port)
    try:
        second = moorage_factory(first.root, env=env)
        (event,) = receiver.wait_for_blocking("push", "manifests")
        assert set(event) == {"id", "timestamp", "action", "target", "request", "actor", "source"}
        assert event["id"] and event["timestamp"].endswith("Z")
        assert event["target"] == {
            "mediaType": MT_MANIFEST,
            "digest": image.manifest.digest,
            "size": image.manifest.size,
            "length": image.manifest.size,
            "repository": "e2e/hooked",
            "url": f"{first.url}/v2/e2e/hooked/manifests/{image.manifest.digest}",
            "tag": "v1",
        }
        request = event["request"]
        assert request["method"] == "PUT" and request["host"] == first.host
        assert request["addr"].startswith("127.0.0.1:") and "skopeo" in request["useragent"].lower()
        assert request["id"]
        assert event["actor"] == {"name": ""}
        assert event["source"]["instanceID"] and event["source"]["addr"].endswith(f":{first.port}")
        headers, _ = receiver.envelopes[0]
        assert headers["Content-Type"] == "application/vnd.docker.distribution.events.v1+json"
        time.sleep(1.0)
        assert len(receiver.found("push", "manifests")) == 1, "delivered more than once"
        second.stop()
    finally:
        receiver.close()
