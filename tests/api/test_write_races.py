"""Writes racing writes, and writes failing half-way, after which storage, the index and the events must still
agree: each case once found by an attack review. Through the app's API; interleavings are forced by pausing one
storage call of a request while another request runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry import paths
from registry.digests import Digest
from registry.gc.collector import GarbageCollector, GcOptions
from registry.store.events import Event, EventType
from registry.store.registry import Registry
from storage_backends import StorageUnavailable
from tests.api.helpers import OCI_MANIFEST, descriptor, push_blob, push_image
from tests.api.test_index_incremental import rebuilt, rows
from tests.api.test_search_index import INDEXES
from tests.api.test_search_index import serving as served

pytestmark = pytest.mark.parametrize("storage_config", ["filesystem"], indirect=True)


def serving(
    storage_config: dict[str, Any], tmp_path: Path, index: dict[str, Any] | None = None, **sections: Any
) -> contextlib.AbstractAsyncContextManager[tuple[httpx.AsyncClient, Registry]]:
    return served(storage_config, tmp_path / "index.sqlite", sections, **(index or {}))


def pause_after(
    registry: Registry, method: str, when: Callable[[str], bool], meanwhile: Callable[[], Awaitable[Any]]
) -> Callable[[], bool]:
    """Wrap `registry.backend.<method>`: the first call whose path matches `when` runs, then `meanwhile` runs before
    the call returns to its caller (another request in between two storage calls of one request)."""
    backend = registry.backend
    original = getattr(backend, method)
    fired = False

    async def wrapped(path: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal fired
        result = await original(path, *args, **kwargs)
        if not fired and when(path):
            fired = True
            await meanwhile()
        return result

    setattr(backend, method, wrapped)
    return lambda: fired


def pause_before(
    registry: Registry, method: str, when: Callable[[str], bool], meanwhile: Callable[[], Awaitable[Any]]
) -> Callable[[], bool]:
    backend = registry.backend
    original = getattr(backend, method)
    fired = False

    async def wrapped(path: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal fired
        if not fired and when(path):
            fired = True
            await meanwhile()
        return await original(path, *args, **kwargs)

    setattr(backend, method, wrapped)
    return lambda: fired


def events_of(registry: Registry) -> list[Event]:
    seen: list[Event] = []
    registry.events.subscribe(seen.append)
    return seen


# -- 1. The revision's tag marks deleted after a racing push re-created the revision and its marks ----------------


async def test_a_retag_racing_a_delete_by_digest_keeps_its_mark_so_a_later_delete_takes_the_tag(
    storage_config: dict[str, Any], tmp_path: Path
) -> None:
    async with serving(storage_config, tmp_path) as (client, registry):
        digest, body = await push_image(client, "team/app", "v1")
        d = Digest.parse(digest)

        async def retag() -> None:
            # The revision is gone (the DELETE's second step); a client pushes the same manifest as `keep`.
            response = await client.put(
                "/v2/team/app/manifests/keep", content=body, headers={"Content-Type": OCI_MANIFEST}
            )
            assert response.status_code == 201, response.text

        pause_after(registry, "delete", lambda p: p == paths.manifest_revision_dir("team/app", d), retag)
        assert (await client.delete(f"/v2/team/app/manifests/{digest}")).status_code == 202
        # The push won: its tag and revision are in storage (a 201 the client relies on).
        assert (await client.get("/v2/team/app/manifests/keep", headers={"Accept": OCI_MANIFEST})).status_code == 200
        assert (
            await client.head(f"/v2/team/app/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
        ).status_code == 200
        # Now a plain DELETE by digest must take `keep` with the revision ...
        assert (await client.delete(f"/v2/team/app/manifests/{digest}")).status_code == 202
        tags = (await client.get("/v2/team/app/tags/list")).json().get("tags") or []
        assert "keep" not in tags, "a tag is left naming a deleted revision"


async def test_a_push_racing_gcs_untagged_removal_keeps_its_manifest_and_mark(
    storage_config: dict[str, Any], tmp_path: Path
) -> None:
    async with serving(storage_config, tmp_path) as (client, registry):
        digest, body = await push_image(client, "team/app", "v1")
        d = Digest.parse(digest)
        assert (await client.delete("/v2/team/app/manifests/v1")).status_code == 202  # untagged: GC's to remove

        async def push() -> None:
            # GC found the manifest untagged and deleted its revision; the push lands before GC looks again.
            response = await client.put(
                "/v2/team/app/manifests/keep", content=body, headers={"Content-Type": OCI_MANIFEST}
            )
            assert response.status_code == 201, response.text

        revision = paths.manifest_revision_dir("team/app", d)
        fired = pause_after(registry, "delete", lambda p: p == revision, push)
        await GarbageCollector(registry, GcOptions(grace=0.0, settle=0.0, delete_untagged=True)).run()
        assert fired()
        assert (await client.get("/v2/team/app/manifests/keep", headers={"Accept": OCI_MANIFEST})).status_code == 200
        assert (await client.delete(f"/v2/team/app/manifests/{digest}")).status_code == 202
        tags = (await client.get("/v2/team/app/tags/list")).json().get("tags") or []
        assert "keep" not in tags, "a tag is left naming a deleted revision"


# -- 2. Leftovers that resurrect a deleted repository --------------------------------------------------------------


async def test_a_push_taken_back_under_a_repository_deletion_leaves_no_repository(
    storage_config: dict[str, Any], tmp_path: Path
) -> None:
    # The push's announcement is read back once settled: that is how the index learns the push was taken back.
    async with serving(storage_config, tmp_path, {"settle": 0.3, "poll_interval": 0.05}) as (client, registry):
        _, body = await push_image(client, "team/app", "v1")

        async def remove_repository() -> None:
            assert (await client.delete("/api/v1/repositories/team/app")).status_code == 202

        # The push passed its checks; the repository goes just before it writes its tag's mark.
        pause_before(registry, "put_content", lambda p: "/_manifests/revision-tags/" in p, remove_repository)
        response = await client.put("/v2/team/app/manifests/v2", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert response.status_code == 400, response.text  # the push noticed and took back its tag and revision
        assert not await registry.repositories.exists("team/app")
        assert (await client.get("/v2/team/app/tags/list")).status_code == 404
        for _ in range(100):
            if "team/app" not in (await client.get("/v2/_catalog")).json()["repositories"]:
                break
            await asyncio.sleep(0.05)
        assert "team/app" not in (await client.get("/v2/_catalog")).json()["repositories"]


async def test_gc_after_a_repository_deletion_neither_revives_it_nor_reports_a_delete(
    storage_config: dict[str, Any], tmp_path: Path
) -> None:
    async with serving(storage_config, tmp_path) as (client, registry):
        await push_image(client, "team/app", "v1")
        assert (await client.delete("/v2/team/app/manifests/v1")).status_code == 202  # untagged: GC's to remove
        seen = events_of(registry)
        original = registry.manifests.delete_if_untagged

        async def after_repository_deletion(name: str, d: Digest, subject: Digest | None) -> bool:
            # GC read its inventory; a client deletes the repository before GC acts on it.
            assert (await client.delete(f"/api/v1/repositories/{name}")).status_code == 202
            return await original(name, d, subject)

        registry.manifests.delete_if_untagged = after_repository_deletion  # type: ignore[method-assign,assignment]
        await GarbageCollector(registry, GcOptions(grace=0.0, settle=0.0, delete_untagged=True)).run()
        deleted = [e for e in seen if e.type is EventType.MANIFEST_DELETED]
        problems = []
        if deleted:
            problems.append(f"manifest.deleted for a revision already gone with its repository: {deleted}")
        if "team/app" in (await client.get("/v2/_catalog")).json()["repositories"]:
            problems.append("the deleted repository is listed again")
        if await registry.repositories.exists("team/app"):
            problems.append(
                "storage holds team/app again: "
                + str([i.path async for i in registry.backend.walk(paths.repository("team/app"))])
            )
        assert not problems, problems


# -- 3. A refused request writes a change record every replica then reads and applies ------------------------------


async def change_records(registry: Registry) -> int:
    return len([info async for info in registry.backend.walk(paths.INDEX_CHANGES)])


async def test_a_refused_delete_by_digest_writes_no_change_record(
    storage_config: dict[str, Any], tmp_path: Path
) -> None:
    immutable: dict[str, Any] = {"immutable_tags": [{"repository": "team/*", "tags": ["v*"]}]}
    async with serving(storage_config, tmp_path, **immutable) as (client, registry):
        digest, _ = await push_image(client, "team/app", "v1")
        await asyncio.sleep(0.1)  # the push's "done" record is written in the background
        before = await change_records(registry)
        for _ in range(5):
            response = await client.delete(f"/v2/team/app/manifests/{digest}")
            assert response.status_code == 403, response.text
        assert await change_records(registry) == before


# -- 4. tag.set never says what the tag named before ---------------------------------------------------------------


# -- 5. An announcement retired by the first events of its write, before the write is done -------------------------


async def test_a_delete_failing_half_way_is_repaired_in_the_index_as_it_fails(
    storage_config: dict[str, Any], tmp_path: Path
) -> None:
    # Settled announcements are read back only after 30 s: what repairs the index here is the failure itself.
    fast = {"settle": 30.0, "poll_interval": 0.05}
    async with serving(storage_config, tmp_path, index=fast) as (client, registry):
        _, subject_body = await push_image(client, "team/app", "v1", seed="a")
        signature, _ = await push_image(
            client, "team/app", "sig", seed="b", subject=descriptor(OCI_MANIFEST, subject_body)
        )
        await asyncio.sleep(0.2)
        revision = paths.manifest_revision_dir("team/app", Digest.parse(signature))
        # Slow storage: the index applies the DELETE's tag.deleted (naming the manifest too) before the revision goes.
        pause_before(registry, "delete", lambda p: p == revision, lambda: asyncio.sleep(0.3))
        backend, original = registry.backend, registry.backend.delete

        async def failing(path: str) -> None:
            if "/_manifests/referrers/" in path:
                raise StorageUnavailable("storage answered 503 (injected)")
            await original(path)

        backend.delete = failing  # type: ignore[method-assign]
        response = await client.delete(f"/v2/team/app/manifests/{signature}")
        assert response.status_code >= 500, response.text  # the revision is gone; the request failed after that
        backend.delete = original  # type: ignore[method-assign]
        assert (await client.head(f"/v2/team/app/manifests/{signature}")).status_code == 404
        # The write was abandoned part-way: the index re-reads what it named as it fails.
        fresh = await rebuilt(storage_config, tmp_path / "fresh.sqlite")
        for _ in range(100):
            if rows(tmp_path / "index.sqlite") == fresh:
                break
            await asyncio.sleep(0.05)
        incremental = rows(tmp_path / "index.sqlite")
    assert incremental == fresh


# -- 6. Keys of this process's own records that nothing ever forgets ----------------------------------------------


async def test_announcements_read_back_are_not_remembered_for_good(
    storage_config: dict[str, Any], tmp_path: Path
) -> None:
    immutable: dict[str, Any] = {"immutable_tags": [{"repository": "team/*", "tags": ["v*"]}]}
    fast = {"settle": 0.2, "poll_interval": 0.05}
    async with serving(storage_config, tmp_path, index=fast, **immutable) as (client, registry):
        index = INDEXES[id(registry)]
        digest, body = await push_image(client, "team/app", "v1")
        for _ in range(20):  # refused (403): each announcement stays in LocalIndex._announced
            assert (await client.delete(f"/v2/team/app/manifests/{digest}")).status_code == 403
        await asyncio.sleep(0.6)  # settled: the poll read them back and moved its position past them
        # Any later write naming the same manifest "covers" them: their keys go into ChangeLog._own, behind the
        # position, where the walk that would discard them never looks again.
        response = await client.put(
            "/v2/team/app/manifests/other", content=body, headers={"Content-Type": OCI_MANIFEST}
        )
        assert response.status_code == 201
        await asyncio.sleep(0.6)
        assert len(index.changes._own) < 5, len(index.changes._own)


# -- 7. Tags written without a mark after the once-per-repository backfill (a replica of the previous release) -----


# -- 8. The index does not follow blob events: a repository holding only blobs (pre-existing) ----------------------


async def test_a_repository_with_only_blobs_is_indexed_as_a_rebuild_would(
    storage_config: dict[str, Any], tmp_path: Path
) -> None:
    async with serving(storage_config, tmp_path) as (client, _):
        await push_image(client, "team/app", "v1")
        await push_blob(client, "solo", b"only a blob")
        await asyncio.sleep(0.2)
        catalog = (await client.get("/v2/_catalog")).json()["repositories"]
        incremental = rows(tmp_path / "index.sqlite")
    assert incremental == await rebuilt(storage_config, tmp_path / "fresh.sqlite")
    assert "solo" in catalog
