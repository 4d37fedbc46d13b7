"""Review findings on the store-events / revision-tag-marker change (5e295b7..): each test reproduces one, through
the app's API; interleavings are forced by pausing one storage call of a request while another request runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from registry import paths
from registry.app import create_app
from registry.digests import Digest
from registry.gc.collector import GarbageCollector, GcOptions
from registry.index.local import LocalIndex
from registry.store.events import Event, EventType
from registry.store.registry import Registry
from storage_backends import StorageUnavailable
from tests.api.conftest import make_settings
from tests.api.helpers import OCI_MANIFEST, descriptor, push_blob, push_image
from tests.api.test_index_incremental import rebuilt, rows

pytestmark = pytest.mark.parametrize("storage_config", ["filesystem"], indirect=True)
INDEXES: dict[int, LocalIndex] = {}


@contextlib.asynccontextmanager
async def serving(
    storage_config: dict[str, Any], tmp_path: Path, index: dict[str, Any] | None = None, **sections: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Registry]]:
    index = {"path": str(tmp_path / "index.sqlite"), **(index or {})}
    settings = make_settings(storage_config, {"index": index, **sections})
    app = create_app(settings)
    INDEXES[id(app.state.registry)] = app.state.index
    try:
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
                yield client, app.state.registry
    finally:
        del INDEXES[id(app.state.registry)]


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


@pytest.mark.xfail(strict=True, reason="finding 1: DELETE by digest drops revision-tags/ a racing push rewrote")
async def test_delete_by_digest_racing_a_retag_loses_the_mark_then_a_later_delete_leaves_the_tag(
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


@pytest.mark.xfail(strict=True, reason="finding 1: GC's untagged removal drops revision-tags/ after a racing push")
async def test_gc_untagged_removal_racing_a_push_loses_the_mark(storage_config: dict[str, Any], tmp_path: Path) -> None:
    async with serving(storage_config, tmp_path) as (client, registry):
        digest, body = await push_image(client, "team/app", "v1")
        d = Digest.parse(digest)
        assert (await client.delete("/v2/team/app/manifests/v1")).status_code == 202  # untagged: GC's to remove

        async def push() -> None:
            # GC has deleted the revision and looked again (no tag yet); the push lands before its last delete.
            response = await client.put(
                "/v2/team/app/manifests/keep", content=body, headers={"Content-Type": OCI_MANIFEST}
            )
            assert response.status_code == 201, response.text

        fired = pause_before(registry, "delete", lambda p: p == paths.revision_tags_dir("team/app", d), push)
        await GarbageCollector(registry, GcOptions(grace=0.0, settle=0.0, delete_untagged=True)).run()
        assert fired()
        assert (await client.get("/v2/team/app/manifests/keep", headers={"Accept": OCI_MANIFEST})).status_code == 200
        assert (await client.delete(f"/v2/team/app/manifests/{digest}")).status_code == 202
        tags = (await client.get("/v2/team/app/tags/list")).json().get("tags") or []
        assert "keep" not in tags, "a tag is left naming a deleted revision"


# -- 2. Leftovers that resurrect a deleted repository --------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="finding 2: a push failing under a repository deletion leaves revision-tags/")
async def test_push_racing_repository_deletion_leaves_a_zombie_repository(
    storage_config: dict[str, Any], tmp_path: Path
) -> None:
    async with serving(storage_config, tmp_path) as (client, registry):
        _, body = await push_image(client, "team/app", "v1")

        async def remove_repository() -> None:
            assert (await client.delete("/api/v1/repositories/team/app")).status_code == 202

        # The push passed its checks; the repository goes just before it writes its tag's mark.
        pause_before(registry, "put_content", lambda p: "/_manifests/revision-tags/" in p, remove_repository)
        response = await client.put("/v2/team/app/manifests/v2", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert response.status_code == 400, response.text  # the push noticed and took back its tag and revision
        assert "team/app" not in (await client.get("/v2/_catalog")).json()["repositories"]
        assert (await client.get("/v2/team/app/tags/list")).status_code == 404


@pytest.mark.xfail(strict=True, reason="finding 2: GC's removal after a repository deletion: backfill + false event")
async def test_gc_removal_after_repository_deletion_resurrects_it_and_emits_a_false_delete(
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


@pytest.mark.xfail(strict=True, reason="finding 3: a DELETE by digest refused (immutable tag) still writes a record")
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


@pytest.mark.xfail(strict=True, reason="finding 4: Event.previous is documented for tag.set but never filled in")
async def test_tag_set_names_the_previous_digest(storage_config: dict[str, Any], tmp_path: Path) -> None:
    async with serving(storage_config, tmp_path) as (client, registry):
        first, _ = await push_image(client, "team/app", "v1", seed="a")
        seen = events_of(registry)
        await push_image(client, "team/app", "v1", seed="b")
        moved = [e for e in seen if e.type is EventType.TAG_SET]
        assert [e.previous for e in moved] == [first]


# -- 5. An announcement retired by the first events of its write, before the write is done -------------------------


@pytest.mark.xfail(strict=True, reason="finding 5: _covered retires an announcement on a partial write's first events")
async def test_a_delete_failing_after_its_tag_events_leaves_this_process_index_wrong_for_good(
    storage_config: dict[str, Any], tmp_path: Path
) -> None:
    fast = {"settle": 0.3, "poll_interval": 0.05}
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
        await asyncio.sleep(1.0)  # well past settle: the announcement would have been read back by now
        incremental = rows(tmp_path / "index.sqlite")
    assert incremental == await rebuilt(storage_config, tmp_path / "fresh.sqlite")


# -- 6. Keys of this process's own records that nothing ever forgets ----------------------------------------------


@pytest.mark.xfail(
    strict=True, reason="finding 6: _covered marks read-back announcements applied: ChangeLog._own leaks"
)
async def test_announcements_read_back_then_covered_stay_in_memory_for_good(
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


@pytest.mark.xfail(strict=True, reason="finding 7: revision-tags-complete trusted for good: unmarked tags missed")
async def test_a_tag_written_by_a_previous_release_after_the_backfill_survives_a_delete_by_digest(
    storage_config: dict[str, Any], tmp_path: Path
) -> None:
    async with serving(storage_config, tmp_path) as (client, registry):
        digest, _ = await push_image(client, "team/app", "v1")
        other, _ = await push_image(client, "team/app", "v2", seed="other")
        assert (await client.delete(f"/v2/team/app/manifests/{other}")).status_code == 202  # backfill done
        assert await registry.backend.exists(paths.revision_tags_complete("team/app"))
        # During a rolling upgrade a replica still on 5e295b7 tags the manifest the way it always did: no mark.
        d = Digest.parse(digest)
        await registry.backend.put_content(paths.tag_index_link("team/app", "old", d), digest.encode())
        await registry.backend.put_content(paths.tag_current_link("team/app", "old"), digest.encode())
        assert (await client.delete(f"/v2/team/app/manifests/{digest}")).status_code == 202
        tags = (await client.get("/v2/team/app/tags/list")).json().get("tags") or []
        assert "old" not in tags, "a tag is left naming a deleted revision"


# -- 8. The index does not follow blob events: a repository holding only blobs (pre-existing) ----------------------


@pytest.mark.xfail(strict=True, reason="finding 8 (pre-existing): blob-only repositories are in a rebuild only")
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
