"""The metadata index in PostgreSQL (`database.url`): replicas share it, a new replica is ready without rebuilding
whatever the registry's size, and a database that cannot be reached does not stop the registry from serving."""

from __future__ import annotations

import time
from typing import Any

import pytest

from registry.index.local import LocalIndex
from tests.api.test_search import DESCRIPTION, push
from tests.api.test_search_index import INDEXES, answers, catalog, eventually, serving
from tests.postgres_server import PostgresServer


@pytest.fixture
def database(postgres_server: PostgresServer) -> Any:
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)


async def test_replicas_share_one_index(storage_config: dict[str, Any], database: str) -> None:
    async with serving(storage_config, database) as (a, _), serving(storage_config, database) as (b, _):
        await push(a, "team/app", "v1", annotations={DESCRIPTION: "pushed on a"})

        async def b_sees_it() -> bool:
            hits = (await b.get("/api/v1/search?q=app")).json()["results"]
            return await catalog(b) == ["team/app"] and [h["description"] for h in hits] == ["pushed on a"]

        await eventually(b_sees_it, "replica b answers what a pushed")
        assert (await b.delete("/v2/team/app/manifests/v1")).status_code == 202

        async def a_sees_no_tags() -> bool:
            return (await a.get("/api/v1/repositories/team/app")).json()["tags"] == []

        await eventually(a_sees_no_tags, "replica a answers b's delete")


async def test_a_new_replica_is_ready_without_rebuilding(
    storage_config: dict[str, Any], database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(storage_config, database) as (client, _):
        for i in range(20):
            await push(client, f"team/app{i:02d}", "v1", seed=str(i))
        before = await answers(client)

    async def no_rebuild(self: LocalIndex, *args: Any, **kwargs: Any) -> int:
        raise AssertionError("a replica on a built database must not rebuild it")

    monkeypatch.setattr(LocalIndex, "rebuild", no_rebuild)
    started = time.monotonic()
    async with serving(storage_config, database) as (client, registry):
        ready_after = time.monotonic() - started
        assert INDEXES[id(registry)].ready and ready_after < 2.0, ready_after
        assert (await client.get("/readyz")).status_code == 200
        assert await answers(client) == before


async def test_an_unreachable_database_leaves_the_registry_serving(storage_config: dict[str, Any]) -> None:
    unreachable = "postgresql://moorage@127.0.0.1:9/nothing"  # the discard port: nothing listens there
    async with serving(storage_config, unreachable) as (client, registry):
        assert not INDEXES[id(registry)].ready
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "index" in ready.text
        await push(client, "team/app", "v1")  # pushes and pulls do not need the index
        assert (await client.get("/v2/team/app/tags/list")).json()["tags"] == ["v1"]
        assert await catalog(client) == ["team/app"]  # walks storage meanwhile
