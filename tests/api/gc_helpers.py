"""Shared by the GC tests: run GC as a separate process would, push multi-arch images, pull everything back."""

from __future__ import annotations

from typing import Any

import httpx

from registry.gc.collector import GarbageCollector, GcOptions, GcReport
from registry.store.events import Event, EventBus, EventType
from registry.store.registry import Registry
from storage_backends import StorageBackend
from tests.api.conftest import make_settings
from tests.api.helpers import OCI_INDEX, OCI_MANIFEST, descriptor, digest_of, encode, push_image


class EventRecorder:
    """Follows a registry's events, as the metadata index and webhooks do: records them."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def follow(self, events: EventBus) -> None:
        events.subscribe(self.events.append)

    @property
    def changed(self) -> list[str]:
        """The repositories whose tags, manifests or existence changed, in order, each once."""
        kinds = {EventType.TAG_DELETED, EventType.MANIFEST_DELETED, EventType.REPOSITORY_DELETED}
        return list(dict.fromkeys(e.repository for e in self.events if e.type in kinds))


async def collect(storage_config: dict[str, Any], recorder: EventRecorder | None = None, **options: Any) -> GcReport:
    """One GC run from a separate process's point of view: its own registry over the test's storage."""
    registry = Registry.from_settings(make_settings(storage_config))
    if recorder is not None:
        recorder.follow(registry.events)
    await registry.start()
    try:
        return await GarbageCollector(registry, GcOptions(**{"grace": 0.0, "settle": 0.0, **options})).run()
    finally:
        await registry.aclose()


def blob_digests(data_paths: list[str]) -> set[str]:
    return {f"{p.split('/')[-4]}:{p.split('/')[-2]}" for p in data_paths}


async def snapshot(storage: StorageBackend) -> dict[str, int]:
    return {info.path: info.size async for info in storage.walk("docker/registry/v2")}


async def put_manifest(client: httpx.AsyncClient, name: str, reference: str, body: bytes, media_type: str) -> str:
    response = await client.put(f"/v2/{name}/manifests/{reference}", content=body, headers={"Content-Type": media_type})
    assert response.status_code == 201, response.text
    return digest_of(body)


async def push_index(client: httpx.AsyncClient, name: str, tag: str, seeds: list[str]) -> tuple[str, list[str]]:
    """A multi-arch index whose children are pushed by digest first, as clients do."""
    children = []
    for seed in seeds:
        digest, body = await push_image(client, name, f"tmp-{seed}", seed=seed)
        await client.delete(f"/v2/{name}/manifests/tmp-{seed}")  # untag: the child is reached only via the index
        children.append((digest, body))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            descriptor(OCI_MANIFEST, body, platform={"os": "linux", "architecture": s})
            for s, (_, body) in zip(seeds, children, strict=True)
        ],
    }
    digest = await put_manifest(client, name, tag, encode(index), OCI_INDEX)
    return digest, [d for d, _ in children]


async def pull_completely(client: httpx.AsyncClient, name: str, reference: str) -> None:
    """GET the manifest, every child and every blob; each blob must hash to its digest."""
    response = await client.get(f"/v2/{name}/manifests/{reference}", headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
    assert response.status_code == 200, response.text
    body = response.json()
    for child in body.get("manifests", []):
        await pull_completely(client, name, child["digest"])
    for item in [body.get("config"), *body.get("layers", [])]:
        if item is None:
            continue
        blob = await client.get(f"/v2/{name}/blobs/{item['digest']}")
        assert blob.status_code == 200, (item, blob.text)
        assert digest_of(blob.content) == item["digest"]
