from __future__ import annotations

import itertools
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from registry.app import create_app
from registry.settings import Settings
from registry.store.registry import Registry
from storage_backends import StorageBackend
from tests.webhook_receiver import Receiver

ClientFactory = Callable[..., Awaitable[httpx.AsyncClient]]


def make_settings(storage: dict[str, Any], sections: dict[str, Any] | None = None, **overrides: Any) -> Settings:
    """`overrides` go into the storage section; `sections` adds or replaces other sections (`{"maintenance": ...}`)."""
    merged = {**storage, **overrides}
    return Settings.model_validate({"storage": merged, "http": {"access_log": False}, **(sections or {})})


def filesystem_storage(tmp_path: Path) -> dict[str, Any]:
    """The `storage` settings of a fresh directory: for test modules whose subject does not depend on the storage
    backend, which override `storage_config` with it (the S3 variants of the storage-facing modules cover S3)."""
    return {"filesystem": {"root": str(tmp_path / "data"), "fsync": False}}


@pytest.fixture(params=["filesystem", "s3"])
def storage_config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The `storage` settings of one test: a fresh directory, or a fresh bucket on the session's S3 server."""
    if request.param == "filesystem":
        yield filesystem_storage(tmp_path)
        return
    server = request.getfixturevalue("s3_server")
    bucket = server.new_bucket()
    # API tests read blobs through the registry; redirects to the store have a test of their own.
    yield {**server.storage_settings(bucket), "redirect": {"disable": True}}
    server.drop_bucket(bucket)
    # On S3 the metadata index's file defaults to one per bucket in the temporary directory: drop it too.
    for leftover in (Path(tempfile.gettempdir()) / "moorage-index").glob(f"{bucket}-*"):
        leftover.unlink(missing_ok=True)


@pytest.fixture
async def storage(storage_config: dict[str, Any]) -> AsyncIterator[StorageBackend]:
    """A separate handle on the test's storage, for looking at what the registry wrote."""
    backend = Registry.from_settings(make_settings(storage_config)).backend
    yield backend
    await backend.aclose()


async def blob_data_paths(storage: StorageBackend) -> list[str]:
    return [info.path async for info in storage.walk("docker/registry/v2/blobs") if info.path.endswith("/data")]


@pytest.fixture
async def client_factory(storage_config: dict[str, Any]) -> AsyncIterator[ClientFactory]:
    """Clients of separate app instances over one storage: stand-ins for workers or replicas."""
    managers: list[LifespanManager] = []
    clients: list[httpx.AsyncClient] = []

    async def factory(sections: dict[str, Any] | None = None, **overrides: Any) -> httpx.AsyncClient:
        app: Starlette = create_app(make_settings(storage_config, sections, **overrides))
        manager = LifespanManager(app)
        await manager.__aenter__()
        managers.append(manager)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://registry.test")
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()
    for manager in reversed(managers):
        await manager.__aexit__(None, None, None)


@pytest.fixture
async def client(client_factory: ClientFactory) -> httpx.AsyncClient:
    return await client_factory()


IndexLocation = Callable[[], Path | str]


@pytest.fixture(params=["sqlite", "postgresql"])
def index_location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexLocation]:
    """Where a test's metadata indexes live: a new SQLite file, or a new PostgreSQL database, at each call."""
    made: list[str] = []
    files = itertools.count()

    def new() -> Path | str:
        if request.param == "sqlite":
            return tmp_path / f"index-{next(files)}.sqlite"
        server = request.getfixturevalue("postgres_server")
        url: str = server.new_database()
        made.append(url)
        return url

    yield new
    for url in made:
        request.getfixturevalue("postgres_server").drop_database(url)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 (tests/webhook_receiver.py)."""
    made = Receiver()
    yield made
    made.close()
