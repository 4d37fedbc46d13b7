"""The metadata index stays in line with storage: through every kind of change, across replicas, after a crash,
after losing its file; and the registry keeps answering while it is built."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from registry.app import create_app
from registry.digests import Digest
from registry.index.changes import ChangeLog
from registry.index.local import LocalIndex
from registry.store.registry import Registry
from tests.api.conftest import IndexLocation, make_settings
from tests.api.helpers import OCI_MANIFEST, encode, error_code, image_manifest
from tests.api.test_search import DESCRIPTION, push, push_index

QUERIES = ["", "app", "team", "platform:linux/arm64", "label:team=core", "tag:v*", "label:" + DESCRIPTION]


INDEXES: dict[int, Any] = {}
"""The metadata index of each registry `serving` serves, by the registry's id."""


@contextlib.asynccontextmanager
async def serving(
    storage_config: dict[str, Any], index_path: Path | str, sections: dict[str, Any] | None = None, **index: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Registry]]:
    """An app over the test's storage with its index at `index_path` (an SQLite file, or a PostgreSQL URL; `index`
    overrides its settings, `sections` adds others), served in process."""
    where: dict[str, Any] = {"path": str(index_path)} if isinstance(index_path, Path) else {}
    index_settings = {**where, "poll_interval": 0.05, **index}
    database = {} if isinstance(index_path, Path) else {"database": {"url": index_path}}
    settings = make_settings(storage_config, {"index": index_settings, **database, **(sections or {})})
    app = create_app(settings)
    INDEXES[id(app.state.registry)] = app.state.index
    try:
        # Shutdown lets the index apply what it has queued, which on S3 under a loaded CI machine took more than
        # asgi-lifespan's default 5 s (once, in a random-writes test); what the tests check is the index, not that.
        async with LifespanManager(app, shutdown_timeout=30) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
                yield client, app.state.registry
    finally:
        del INDEXES[id(app.state.registry)]


def remove_index(path: Path, replace_with: bytes | None = None) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    if replace_with is not None:
        path.write_bytes(replace_with)


async def answers(client: httpx.AsyncClient) -> dict[str, Any]:
    """Everything the index answers: the catalog, searches, and every repository's summary. Without pull counts:
    they are the one thing storage does not hold (a lost index file loses them)."""
    catalog = (await client.get("/v2/_catalog")).json()["repositories"]
    found: dict[str, Any] = {"catalog": catalog}
    for q in QUERIES:
        response = await client.get("/api/v1/search", params={"q": q, "n": 100})
        assert response.status_code == 200, response.text
        found[f"search {q}"] = [{k: v for k, v in hit.items() if k != "pulls"} for hit in response.json()["results"]]
        found[f"docker search {q}"] = (await client.get("/v1/search", params={"q": q})).json()
    for name in catalog:
        found[name] = {
            k: v for k, v in (await client.get(f"/api/v1/repositories/{name}")).json().items() if k != "pulls"
        }
    return found


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 6.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"never happened: {what}")


async def catalog(client: httpx.AsyncClient) -> list[str]:
    return list((await client.get("/v2/_catalog")).json()["repositories"])


async def fill(client: httpx.AsyncClient) -> None:
    await push_index(client, "team/app", "v1", {DESCRIPTION: "the app"})
    await push(client, "team/app", "v2", "latest", seed="2")
    await push(client, "team/web", "v1", architecture="arm64", labels={"team": "core"})
    await push(client, "tools/lint", "stable", annotations={DESCRIPTION: "lints"})


@pytest.mark.parametrize(
    ("storage_config", "index_location"),
    [("filesystem", "sqlite"), ("filesystem", "postgresql"), ("s3", "postgresql")],  # as the random writes' matrix
    indirect=True,
)
async def test_results_stay_right_through_push_retag_delete_and_rebuild(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    async with serving(storage_config, index_location()) as (client, registry):
        await fill(client)
        assert await catalog(client) == ["team/app", "team/web", "tools/lint"]
        assert [hit["name"] for hit in (await client.get("/api/v1/search?q=app")).json()["results"]] == ["team/app"]

        # Retag: v1 moves to another manifest; a new tag on an existing manifest.
        moved = await push(client, "team/app", "v1", seed="moved")
        body = (await client.get("/v2/tools/lint/manifests/stable", headers={"Accept": OCI_MANIFEST})).content
        response = await client.put("/v2/tools/lint/manifests/v9", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert response.status_code == 201
        summary = (await client.get("/api/v1/repositories/team/app")).json()
        assert {t["tag"]: t["digest"] for t in summary["tags"]}["v1"] == moved["digest"]
        assert summary["manifests"] == 5  # the index, its two children, v2 and the moved v1
        hits = (await client.get("/api/v1/search?q=tag:v9")).json()["results"]
        assert [(h["name"], h["tags"]) for h in hits] == [("tools/lint", ["v9"])]

        # Tag delete, then manifest delete (by digest: its tags go too).
        assert (await client.delete("/v2/tools/lint/manifests/v9")).status_code == 202
        assert (await client.get("/api/v1/search?q=tag:v9")).json()["results"] == []
        assert (
            await client.delete(f"/v2/team/web/manifests/{await _digest(client, 'team/web', 'v1')}")
        ).status_code == 202
        hits = (await client.get("/api/v1/search?q=label:team=core")).json()["results"]
        assert [(h["name"], h["tags"]) for h in hits] == [("team/app", [])]  # only the untagged index is left
        web = (await client.get("/api/v1/repositories/team/web")).json()
        assert (web["tags"], web["manifests"]) == ([], 0)
        # Like Distribution, a repository whose manifests are all gone is still listed (its blobs are not).
        assert await catalog(client) == ["team/app", "team/web", "tools/lint"]

        before = await answers(client)
        index = INDEXES[id(registry)]
        assert isinstance(index, LocalIndex)
        assert await index.rebuild(reread=True) == 3
        assert await answers(client) == before


async def _digest(client: httpx.AsyncClient, name: str, tag: str) -> str:
    response = await client.head(f"/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    return response.headers["Docker-Content-Digest"]


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
async def test_a_lost_or_corrupt_index_file_is_rebuilt_with_identical_answers(
    storage_config: dict[str, Any], tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "index.sqlite"
    async with serving(storage_config, path) as (client, _):
        await fill(client)
        before = await answers(client)
    remove_index(path, replace_with=b"\x00garbage" * 4096 if damage == "corrupt" else None)
    async with serving(storage_config, path) as (client, _):
        assert await answers(client) == before


async def test_a_replica_with_its_own_index_follows_the_other(storage_config: dict[str, Any], tmp_path: Path) -> None:
    async with (
        serving(storage_config, tmp_path / "a.sqlite") as (a, registry_a),
        serving(storage_config, tmp_path / "b.sqlite") as (b, _),
    ):
        await push(a, "team/app", "v1", annotations={DESCRIPTION: "pushed on a"})

        async def b_sees_it() -> bool:
            hits = (await b.get("/api/v1/search?q=app")).json()["results"]
            return await catalog(b) == ["team/app"] and [h["description"] for h in hits] == ["pushed on a"]

        await eventually(b_sees_it, "replica b lists what a pushed")
        assert (await a.delete("/v2/team/app/manifests/v1")).status_code == 202

        async def b_sees_no_tags() -> bool:
            return (await b.get("/api/v1/repositories/team/app")).json()["tags"] == []

        await eventually(b_sees_no_tags, "replica b drops the deleted tag")

        # A repository deleted outside the API (as `moorage repo rm` or GC do it): the store's events say so.
        await registry_a.repositories.delete("team/app")
        assert await catalog(a) == []
        assert (await a.get("/api/v1/repositories/team/app")).status_code == 404

        async def b_forgets_it() -> bool:
            return await catalog(b) == [] and (await b.get("/api/v1/search?q=app")).json()["results"] == []

        await eventually(b_forgets_it, "replica b drops the deleted repository")


async def test_a_crash_between_the_storage_write_and_the_index_write_is_repaired(
    storage_config: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "index.sqlite"
    async with serving(storage_config, path) as (client, registry):
        await push(client, "team/app", "v1")
        # What a manifest PUT does, minus the index write: record the change, write storage, then "crash".
        body = (await client.get("/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})).content
        await ChangeLog(registry.backend, 30, 3600).append("team/app")
        await registry.manifests.put("team/app", "v2", body, OCI_MANIFEST)
        # (This process's once-a-second poll may already have read the change record: it is what repairs.)
    async with serving(storage_config, path) as (client, _):
        tags = (await client.get("/api/v1/repositories/team/app")).json()["tags"]
        assert [t["tag"] for t in tags] == ["v1", "v2"]


async def test_the_registry_answers_while_the_index_is_built(
    storage_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "index.sqlite"
    async with serving(storage_config, path) as (client, _):
        await push(client, "team/app", "v1")
    remove_index(path)
    release = asyncio.Event()
    original = LocalIndex.rebuild

    async def slow_rebuild(self: LocalIndex, epoch: str | None = None, *, reread: bool = False) -> int:
        await release.wait()
        return await original(self, epoch, reread=reread)

    monkeypatch.setattr(LocalIndex, "rebuild", slow_rebuild)
    monkeypatch.setattr("registry.index.local.START_WAIT_SECONDS", 0.01)
    async with serving(storage_config, path) as (client, _):
        response = await client.get("/readyz")
        assert response.status_code == 503 and "index" in response.json()["errors"][0]["detail"]
        assert await catalog(client) == ["team/app"]  # from storage meanwhile
        response = await client.get("/api/v1/search?q=app")
        assert response.status_code == 503 and error_code(response) == "UNAVAILABLE"
        assert response.headers["Retry-After"]
        release.set()

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(ready, "the index is built")
        assert [h["name"] for h in (await client.get("/api/v1/search?q=app")).json()["results"]] == ["team/app"]


async def test_rejected_pushes_change_nothing(storage_config: dict[str, Any], tmp_path: Path) -> None:
    async with serving(storage_config, tmp_path / "index.sqlite") as (client, _):
        response = await client.put(
            "/v2/team/bad/manifests/v1", content=encode({"schemaVersion": 2}), headers={"Content-Type": OCI_MANIFEST}
        )
        assert response.status_code == 400
        assert await catalog(client) == []


async def test_a_rebuild_keeps_what_was_pushed_after_it_listed_storage(
    storage_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(storage_config, tmp_path / "index.sqlite") as (client, registry):
        await push(client, "team/early", "v1")
        await push(client, "team/late", "v1")
        index = INDEXES[id(registry)]
        assert isinstance(index, LocalIndex)

        async def listed_before_the_late_push() -> list[str]:
            return ["team/early"]

        monkeypatch.setattr(registry.repositories, "names", listed_before_the_late_push)
        assert await index.rebuild() == 1
        assert await catalog(client) == ["team/early", "team/late"]
        await registry.backend.delete("docker/registry/v2/repositories/team/late")
        await index.rebuild()
        assert await catalog(client) == ["team/early"]


async def test_repositories_written_around_the_index_are_reconciled(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    """Another tool (here: a store no index follows, so no change records) removes one repository and writes
    another: the periodic reconciliation compares names with storage and re-reads the two."""
    async with serving(storage_config, index_location(), reconcile_interval=1) as (client, _):
        await push(client, "team/old", "v1")
        assert await catalog(client) == ["team/old"]
        bare = Registry.from_settings(make_settings(storage_config))
        await bare.start()
        try:
            await bare.repositories.delete("team/old")
            config, layer = b'{"architecture":"amd64","os":"linux"}', b"a layer written around the index"
            for blob in (config, layer):
                digest = Digest.of(blob)
                await bare.blobs.put_small(digest, blob)
                await bare.blobs.link("team/new", digest)
            body = encode(image_manifest(config, [layer]))
            await bare.manifests.put("team/new", "v1", body, OCI_MANIFEST)
        finally:
            await bare.aclose()

        async def reconciled() -> bool:
            return await catalog(client) == ["team/new"]

        await eventually(reconciled, "the index drops team/old and lists team/new")
