from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from registry.app import create_app
from registry.settings import Settings

ClientFactory = Callable[..., Awaitable[httpx.AsyncClient]]


def make_settings(root: Path, **storage: Any) -> Settings:
    return Settings.model_validate(
        {"storage": {"filesystem": {"root": str(root), "fsync": False}, **storage}, "http": {"access_log": False}}
    )


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def client_factory(storage_root: Path) -> AsyncIterator[ClientFactory]:
    """Clients of separate app instances over one storage root: stand-ins for workers or replicas."""
    managers: list[LifespanManager] = []
    clients: list[httpx.AsyncClient] = []

    async def factory(**storage: Any) -> httpx.AsyncClient:
        app: Starlette = create_app(make_settings(storage_root, **storage))
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
