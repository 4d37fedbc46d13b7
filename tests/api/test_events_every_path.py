"""Every write path emits the store's events, whoever writes: the API, GC, retention, `moorage repo rm` and the
admin API. Checked where users see them: at a webhook receiver, in Distribution's envelope. Admin commands only
queue their events; the running server delivers them."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from registry.gc.cli import run_gc
from registry.store.cli import run_repo_rm
from tests.api.conftest import ClientFactory, make_settings
from tests.api.helpers import OCI_MANIFEST, digest_of, encode, image_manifest, push_blob, push_image
from tests.webhook_receiver import Receiver

WAIT = 15.0
Seen = tuple[str, str, str, str, str]
"""(action, repository, what: "blob"/"manifest"/"tag"/"repository", digest or tag, actor)"""


def sections(receiver: Receiver, tmp_path: Path, **more: Any) -> dict[str, Any]:
    endpoint = {"name": "hook", "url": receiver.url, "timeout": "2s", "backoff": "200ms"}
    queue = str(tmp_path / "notifications.sqlite3")
    return {"notifications": {"endpoints": [endpoint], "blobs": True, "queue_path": queue}, **more}


def seen(event: dict[str, Any]) -> Seen:
    target = event["target"]
    url = target.get("url", "")
    if "url" not in target:
        what, key = ("tag", target["tag"]) if "tag" in target else ("repository", "")
    else:
        what, key = ("blob" if "/blobs/" in url else "manifest"), target["digest"]
        if target.get("tag"):
            key = f"{key}:{target['tag']}"
    return (event["action"], target["repository"], what, key, event["actor"]["name"])


async def received(receiver: Receiver, expected: list[Seen]) -> Counter[Seen]:
    """What the receiver got, once it has at least everything expected (or the wait ran out)."""
    deadline = time.monotonic() + WAIT
    want = Counter(expected)
    while True:
        got = Counter(seen(e) for e in receiver.events())
        if not want - got or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


async def test_api_writes_and_reads_emit_their_events(
    client_factory: ClientFactory, receiver: Receiver, tmp_path: Path
) -> None:
    client = await client_factory(sections(receiver, tmp_path))
    digest, body = await push_image(client, "team/app", "v1", seed="a")
    manifest = json.loads(body)
    config, layer = manifest["config"]["digest"], manifest["layers"][0]["digest"]
    tagged = await client.put(
        f"/v2/team/app/manifests/{digest}?tag=a&tag=b", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert tagged.status_code == 201
    mounted = await client.post(f"/v2/other/app/blobs/uploads/?mount={layer}&from=team/app")
    assert mounted.status_code == 201
    assert (await client.get("/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})).status_code == 200
    assert (await client.head("/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})).status_code == 200
    assert (await client.get(f"/v2/team/app/blobs/{config}")).status_code == 200
    assert (await client.head(f"/v2/team/app/blobs/{config}")).status_code == 200
    assert (await client.delete("/v2/team/app/manifests/a")).status_code == 202
    assert (await client.delete(f"/v2/team/app/manifests/{digest}")).status_code == 202
    assert (await client.delete(f"/v2/other/app/blobs/{layer}")).status_code == 202

    expected: list[Seen] = [
        ("push", "team/app", "blob", config, ""),
        ("push", "team/app", "blob", layer, ""),
        ("push", "team/app", "manifest", f"{digest}:v1", ""),
        ("push", "team/app", "manifest", f"{digest}:a", ""),
        ("push", "team/app", "manifest", f"{digest}:b", ""),
        ("mount", "other/app", "blob", layer, ""),
        ("pull", "team/app", "manifest", f"{digest}:v1", ""),
        ("pull", "team/app", "blob", config, ""),
        ("delete", "team/app", "tag", "a", ""),
        # A DELETE by digest untags what pointed at it (v1 and b), then removes the manifest.
        ("delete", "team/app", "tag", "v1", ""),
        ("delete", "team/app", "tag", "b", ""),
        ("delete", "team/app", "manifest", digest, ""),
        ("delete", "other/app", "blob", layer, ""),
    ]
    got = await received(receiver, expected)
    await asyncio.sleep(0.3)  # anything more (a HEAD counted as a pull, a duplicate) would arrive by now
    assert Counter(seen(e) for e in receiver.events()) == Counter(expected), got
    events = receiver.events()
    mount = next(e for e in events if e["action"] == "mount")
    assert mount["target"]["fromRepository"] == "team/app"
    push = next(e for e in events if e["action"] == "push" and e["target"].get("tag") == "v1")
    assert push["target"]["mediaType"] == OCI_MANIFEST and push["target"]["size"] == len(body)
    assert push["request"]["method"] == "PUT" and push["request"]["id"]
    assert push["target"]["url"] == f"http://registry.test/v2/team/app/manifests/{digest}"


async def test_gc_retention_repo_rm_and_the_admin_api_emit_delete_events(
    client_factory: ClientFactory, storage_config: dict[str, Any], receiver: Receiver, tmp_path: Path
) -> None:
    retention = {"retention": [{"repository": "team/*", "keep_last": 1}], "gc": {"grace": "0s", "settle": "0s"}}
    settings_sections = sections(receiver, tmp_path, **retention)
    client = await client_factory(settings_sections)  # the server that delivers what the admin commands queue
    # Retention orders tags by their last push, then by name (S3 times are to the second): `b-new` is the newest.
    old, _ = await push_image(client, "team/app", "a-old", seed="old")
    new, _ = await push_image(client, "team/app", "b-new", seed="new")
    untagged_body = await _untagged(client, "team/app")
    untagged = digest_of(untagged_body)
    put = await client.put(
        f"/v2/team/app/manifests/{untagged}", content=untagged_body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert put.status_code == 201
    await push_image(client, "team/doomed", "v1", seed="doomed")
    await push_image(client, "team/gone", "v1", seed="gone")
    receiver.envelopes.clear()
    await asyncio.sleep(0.3)
    receiver.envelopes.clear()  # only what follows counts

    settings = make_settings(storage_config, settings_sections)
    gc = argparse.Namespace(dry_run=False, delete_untagged=True, grace=0.0, settle=0.0, json=True)
    assert await run_gc(gc, settings) == 0
    rm = argparse.Namespace(name="team/doomed", force=False)
    assert await run_repo_rm(rm, settings) == 0
    assert (await client.delete("/api/v1/repositories/team/gone")).status_code == 202

    # Retention keeps the newest tag of each team/* repository: team/app loses `a-old`; then the manifests no tag
    # reaches go (the one `a-old` named and the one pushed untagged), and the blob links only they used (the GC
    # sweep takes their blobs). Repository deletions: one event each.
    expected: list[Seen] = [
        ("delete", "team/app", "tag", "a-old", "moorage:gc"),
        ("delete", "team/app", "manifest", old, "moorage:gc"),
        ("delete", "team/app", "manifest", untagged, "moorage:gc"),
        ("delete", "team/doomed", "repository", "", "moorage:admin"),
        ("delete", "team/gone", "repository", "", ""),
    ]
    got = await received(receiver, expected)
    assert not Counter(expected) - got, got
    assert ("delete", "team/app", "tag", "b-new", "moorage:gc") not in got
    assert all(e[2] != "manifest" or e[3] != new for e in got)
    deletions = [e for e in receiver.events() if e["actor"]["name"] == "moorage:gc"]
    assert all(e["request"]["method"] == "" for e in deletions)  # no request caused them


async def _untagged(client: httpx.AsyncClient, name: str) -> bytes:
    """An image manifest over fresh blobs, pushed by the caller by digest only."""
    config, layer = b'{"architecture":"amd64","os":"linux","seed":"untagged"}', b"untagged layer" * 10
    await push_blob(client, name, config)
    await push_blob(client, name, layer)
    return encode(image_manifest(config, [layer]))
