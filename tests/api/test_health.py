"""`/healthz` and `/readyz`: the probes of a container orchestrator."""

from __future__ import annotations

import httpx
import pytest

from registry.handlers.health import Readiness
from registry.store.registry import Registry
from storage_backends import StorageUnavailable
from tests.api.conftest import ClientFactory
from tests.api.helpers import error_code


async def test_healthz_answers_without_storage(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_storage(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready"}


async def test_readyz_answers_503_with_the_spec_error_when_storage_fails(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(self: Registry) -> None:
        raise StorageUnavailable("connection refused")

    monkeypatch.setattr(Registry, "check_storage", unreachable)
    monkeypatch.setattr(Readiness, "problem", _uncached_problem)
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert error_code(response) == "UNAVAILABLE"
    assert "unavailable" in response.json()["errors"][0]["detail"]
    assert response.headers["Retry-After"] == "1"
    # Liveness does not depend on storage: restarting the process would not help.
    assert (await client.get("/healthz")).status_code == 200


async def _uncached_problem(self: Readiness, registry: Registry) -> str | None:
    return await Readiness._check(registry)


async def test_readiness_is_cached_for_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0

    class CountingRegistry:
        async def check_storage(self) -> None:
            nonlocal calls
            calls += 1
            raise StorageUnavailable("down")

    now = [1000.0]
    monkeypatch.setattr("registry.handlers.health.time.monotonic", lambda: now[0])
    readiness = Readiness()
    registry = CountingRegistry()
    assert await readiness.problem(registry) is not None  # type: ignore[arg-type]
    assert await readiness.problem(registry) is not None  # type: ignore[arg-type]
    assert calls == 1
    now[0] += 1.5
    await readiness.problem(registry)  # type: ignore[arg-type]
    assert calls == 2


async def test_probes_work_in_read_only_mode(client_factory: ClientFactory) -> None:
    client = await client_factory(sections={"maintenance": {"read_only": True}})
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
