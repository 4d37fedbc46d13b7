"""Races between what clients write and what GC or a repository deletion removes, forced into the interleavings
that lost data before: every tag a client was answered 201 for, and that no client removed, pulls completely."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.gc.collector import GarbageCollector, GcOptions
from registry.gc.settings import RetentionRule
from registry.store.registry import Registry
from tests.api.conftest import make_settings
from tests.api.gc_helpers import collect, pull_completely
from tests.api.helpers import OCI_MANIFEST, push_image

# Push-vs-delete races per test; on S3 (moto answers in milliseconds, not microseconds) fewer of them, each slower.
REPOSITORY_RACES = {"filesystem": 25, "s3": 12}


async def opened(storage_config: dict[str, Any]) -> Registry:
    """Another process's registry over the test's storage (a replica, or `moorage gc`)."""
    registry = Registry.from_settings(make_settings(storage_config))
    await registry.start()
    return registry


async def untagged_image(client: httpx.AsyncClient, name: str) -> bytes:
    _, body = await push_image(client, name, "old", seed=name)
    assert (await client.delete(f"/v2/{name}/manifests/old")).status_code == 202
    return body


async def test_a_tag_set_between_gcs_listing_and_its_delete_keeps_the_manifest(
    client: httpx.AsyncClient, storage_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = await untagged_image(client, "team/app")
    gc_registry = await opened(storage_config)
    looks = 0
    original = gc_registry.tags.tags_of

    async def client_tags_it_meanwhile(name: str, digest: Digest) -> list[str]:
        nonlocal looks
        found = await original(name, digest)
        looks += 1
        if looks == 1:  # right after GC's first look, before it deletes: the client re-tags the old manifest
            response = await client.put(
                "/v2/team/app/manifests/again", content=body, headers={"Content-Type": OCI_MANIFEST}
            )
            assert response.status_code == 201, response.text
        return found

    monkeypatch.setattr(gc_registry.tags, "tags_of", client_tags_it_meanwhile)
    try:
        report = await GarbageCollector(gc_registry, GcOptions(grace=0, settle=0, delete_untagged=True)).run()
    finally:
        await gc_registry.aclose()
    assert looks >= 2 and not report.manifests_removed, report.as_dict()
    await pull_completely(client, "team/app", "again")


async def test_a_tag_written_after_gc_deleted_the_manifest_never_dangles(
    client: httpx.AsyncClient, storage_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The push paused between its revision link and its tag while a whole GC run deletes the manifest as
    untagged and sweeps its blobs: the push then either stands whole or fails; no tag points at nothing."""
    body = await untagged_image(client, "team/app")
    pusher = await opened(storage_config)
    entered, resume = asyncio.Event(), asyncio.Event()
    set_tag = pusher.tags.point

    async def paused(name: str, tag: str, digest: Digest) -> None:
        entered.set()
        await resume.wait()
        await set_tag(name, tag, digest)

    monkeypatch.setattr(pusher.tags, "point", paused)
    push = asyncio.create_task(pusher.manifests.put("team/app", "again", body, OCI_MANIFEST))
    await asyncio.wait_for(entered.wait(), 10)
    report = await collect(storage_config, delete_untagged=True)
    assert report.manifests_removed  # GC saw it untagged and removed it
    resume.set()
    try:
        await push
        stood = True
    except RegistryError as e:
        assert e.code is ErrorCode.MANIFEST_BLOB_UNKNOWN
        stood = False
    finally:
        await pusher.aclose()
    if stood:
        await pull_completely(client, "team/app", "again")
    else:
        assert (await client.get("/v2/team/app/manifests/again")).status_code == 404


async def test_a_tag_retention_planned_to_remove_but_a_client_moved_is_kept(
    client: httpx.AsyncClient, storage_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    await push_image(client, "team/app", "stale", seed="one")
    gc_registry = await opened(storage_config)
    original = gc_registry.tags.delete_if_current

    async def client_moves_it_first(name: str, tag: str, digest: Digest) -> bool:
        await push_image(client, "team/app", "stale", seed="two")  # moved after GC planned on the old digest
        return await original(name, tag, digest)

    monkeypatch.setattr(gc_registry.tags, "delete_if_current", client_moves_it_first)
    rules = ({"repository": "team/*", "keep_last": 0},)
    options = GcOptions(grace=0, settle=0, retention=tuple(RetentionRule.model_validate(r) for r in rules))
    try:
        report = await GarbageCollector(gc_registry, options).run()
    finally:
        await gc_registry.aclose()
    assert not [r for r in report.removals if r.kind == "tag"], report.as_dict()
    await pull_completely(client, "team/app", "stale")


async def test_a_push_racing_a_repository_deletion_fails_or_comes_before_it(
    client: httpx.AsyncClient, storage_config: dict[str, Any]
) -> None:
    rng = random.Random(12)
    outcomes = {"pushed, then deleted": 0, "pushed, repository whole": 0, "push refused": 0}
    races = REPOSITORY_RACES["filesystem" if "filesystem" in storage_config else "s3"]
    for run in range(races):
        name = f"race/r{run}"
        _, body = await push_image(client, name, "base", seed=f"s{run}")

        async def put(name: str, body: bytes, delay: float) -> httpx.Response:
            await asyncio.sleep(delay)
            return await client.put(f"/v2/{name}/manifests/v", content=body, headers={"Content-Type": OCI_MANIFEST})

        async def delete(name: str, delay: float) -> httpx.Response:
            await asyncio.sleep(delay)
            return await client.delete(f"/api/v1/repositories/{name}")

        pushed, deleted = await asyncio.gather(
            put(name, body, rng.random() * 0.004), delete(name, rng.random() * 0.004)
        )
        assert pushed.status_code in (201, 400), pushed.text
        assert deleted.status_code in (202, 404), deleted.text
        tags = await client.get(f"/v2/{name}/tags/list")
        present = tags.json()["tags"] if tags.status_code == 200 else []
        for tag in present:
            await pull_completely(client, name, tag)  # whatever is left is whole
        if pushed.status_code == 400:
            assert pushed.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
            outcomes["push refused"] += 1
        elif "v" in present:
            outcomes["pushed, repository whole"] += 1
        else:
            outcomes["pushed, then deleted"] += 1
    print(f"\npush vs repository delete, {races} runs: {outcomes}")
