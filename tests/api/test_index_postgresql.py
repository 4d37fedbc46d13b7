"""The metadata index in PostgreSQL (`database.url`): replicas share it, a new replica is ready without rebuilding
whatever the registry's size, and a database that cannot be reached does not stop the registry from serving."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from registry.database import postgres_engine
from registry.index.database import SCHEMA_VERSION, Database, SchemaNewer
from registry.index.local import LocalIndex
from tests.api.helpers import OCI_MANIFEST, error_code
from tests.api.test_search import DESCRIPTION, push
from tests.api.test_search_index import INDEXES, answers, catalog, eventually, serving
from tests.e2e.tcp_proxy import TcpProxy
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
    async with serving(storage_config, database) as (client, first):
        # The pushes are not the subject: all at once, then until the index has them all (a query waits for this
        # process's own writes only OWN_WRITES_WAIT_SECONDS, which 20 at once on a loaded machine outlast).
        await asyncio.gather(*(push(client, f"team/app{i:02d}", "v1", seed=str(i)) for i in range(20)))
        await INDEXES[id(first)].settled()
        before = await answers(client)

    rebuilds: list[str] = []

    async def no_rebuild(self: LocalIndex, *args: Any, **kwargs: Any) -> int:
        rebuilds.append(self.where)
        raise AssertionError("a replica on a built database must not rebuild it")

    monkeypatch.setattr(LocalIndex, "rebuild", no_rebuild)
    started = time.monotonic()
    async with serving(storage_config, database) as (client, registry):
        # The start waits for the index only START_WAIT_SECONDS (3 s); a loaded CI machine took 3.3 s on S3 to
        # connect and replay, so readiness is awaited here. The bound only catches a start that waits on something
        # (a retry after a failed rebuild sleeps 5 s, a timeout); it is not a speed test.
        ready = await INDEXES[id(registry)].wait_ready(10.0)
        ready_after = time.monotonic() - started
        assert not rebuilds, rebuilds
        assert ready and ready_after < 10.0, ready_after
        assert (await client.get("/readyz")).status_code == 200
        assert await answers(client) == before


async def test_an_unreachable_database_refuses_writes_and_keeps_pulls(
    storage_config: dict[str, Any], tmp_path: Path
) -> None:
    async with serving(storage_config, tmp_path / "before.sqlite") as (client, _):
        await push(client, "team/app", "v1")  # in storage before the registry below starts
    unreachable = "postgresql://moorage@127.0.0.1:9/nothing"  # the discard port: nothing listens there
    async with serving(storage_config, unreachable) as (client, registry):
        assert not INDEXES[id(registry)].ready
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "metadata database cannot be reached" in ready.text, ready.text
        refused = await client.put(
            "/v2/team/app/manifests/v2", content=b"{}", headers={"Content-Type": "application/json"}
        )
        assert refused.status_code == 503 and error_code(refused) == "UNAVAILABLE", refused.text
        assert "metadata database cannot be reached" in refused.json()["errors"][0]["detail"]
        assert refused.headers["Retry-After"]
        started = await client.post("/v2/team/other/blobs/uploads/")
        assert started.status_code == 503 and error_code(started) == "UNAVAILABLE"
        # Content storage holds is pulled as before; the catalog walks storage meanwhile.
        assert (await client.get("/v2/team/app/tags/list")).json()["tags"] == ["v1"]
        manifest = await client.get("/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert manifest.status_code == 200
        assert await catalog(client) == ["team/app"]


async def test_writes_wait_while_the_database_is_down_and_resume_by_themselves(
    storage_config: dict[str, Any], database: str
) -> None:
    server = urlsplit(database)
    assert server.hostname is not None and server.port is not None
    with TcpProxy(server.hostname, server.port) as proxy:
        through_proxy = database.replace(f":{server.port}/", f":{proxy.port}/")
        async with serving(storage_config, through_proxy) as (client, _):
            await push(client, "team/app", "v1")
            assert (await client.get("/readyz")).json() == {"status": "ready"}

            proxy.down()

            async def refused() -> bool:
                # Starting an upload is a write that changes nothing a pull sees (until the outage is noticed,
                # within the pool's connect timeout, writes still go to storage; the index catches up after).
                return (await client.post("/v2/team/app/blobs/uploads/")).status_code == 503

            await eventually(refused, "writes refused while the database is down", seconds=15.0)
            deleting = await client.delete("/v2/team/app/manifests/v1")
            assert deleting.status_code == 503 and error_code(deleting) == "UNAVAILABLE", deleting.text
            readiness = await client.get("/readyz")
            assert readiness.status_code == 200, readiness.text  # still serving pulls: not taken out of service
            assert readiness.json()["status"] == "degraded"
            assert "metadata database cannot be reached" in readiness.json()["writes"]
            pulled = await client.get("/v2/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert pulled.status_code == 200
            assert (await client.get("/v2/team/app/tags/list")).json()["tags"] == ["v1"]

            proxy.up()

            async def taken() -> bool:
                return (await client.get("/readyz")).json() == {"status": "ready"}

            await eventually(taken, "writes taken again once the database answers", seconds=15.0)
            await push(client, "team/app", "v2", seed="2")
            assert (await client.delete("/v2/team/app/manifests/v1")).status_code == 202

            async def indexed() -> bool:
                response = await client.get("/api/v1/repositories/team/app")
                return response.status_code == 200 and [t["tag"] for t in response.json()["tags"]] == ["v2"]

            await eventually(indexed, "the index follows the writes after the outage")


async def test_a_database_upgraded_by_a_newer_release_is_left_alone(
    storage_config: dict[str, Any], database: str
) -> None:
    upgraded = Database.connect(database)
    upgraded.set_meta({"schema": str(SCHEMA_VERSION + 1)})
    upgraded.close()
    with pytest.raises(SchemaNewer, match="upgrade this replica"):
        Database.connect(database)
    async with serving(storage_config, database) as (client, registry):
        assert not INDEXES[id(registry)].ready
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "newer than this release" in ready.text, ready.text
        refused = await client.post("/v2/team/app/blobs/uploads/")
        assert refused.status_code == 503 and "newer than this release" in refused.text
    engine = postgres_engine(database)  # the newer release's tables stand: nothing was dropped
    try:
        assert engine.read("SELECT value FROM meta WHERE key = 'schema'") == [(str(SCHEMA_VERSION + 1),)]
    finally:
        engine.close()


@pytest.mark.parametrize("storage_config", ["filesystem"], indirect=True)
async def test_queries_holding_a_nul_answer_as_on_sqlite(storage_config: dict[str, Any], database: str) -> None:
    """PostgreSQL's text cannot hold NUL: a search holding one failed in the database, and was answered 503 as if the
    index were being built. It now finds what it would on SQLite (nothing); a `last` that names no repository is
    refused."""
    async with serving(storage_config, database) as (client, registry):
        await push(client, "team/app", "v1")
        await INDEXES[id(registry)].settled()
        for path in ("/api/v1/search?q=%00", "/api/v1/search?q=a%00b", "/v1/search?q=%00", "/ui/?q=label:%00=%00"):
            found = await client.get(path)
            assert found.status_code == 200, (path, found.text[:300])
        assert (await client.get("/api/v1/search?q=app")).json()["results"][0]["name"] == "team/app"
        for last in ("%00", "team/app%00", "Team"):
            refused = await client.get(f"/api/v1/search?q=app&last={last}")
            assert refused.status_code == 400 and error_code(refused) == "PAGINATION_NUMBER_INVALID", refused.text
