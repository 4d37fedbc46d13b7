"""Probes and metrics: `/healthz` (the process answers), `/readyz` (storage answers, the metadata index is built),
`/metrics`."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from registry.errors import ErrorCode, RegistryError
from registry.handlers.common import index_of, json_response, registry_of
from registry.metrics import CONTENT_TYPE, WWW_AUTHENTICATE, Metrics, basic_auth_ok
from registry.settings import MetricsSettings
from registry.store.registry import Registry
from storage_backends import StorageError, StorageUnavailable

logger = logging.getLogger("moorage")
READINESS_CACHE_SECONDS = 1.0
READINESS_TIMEOUT_SECONDS = 2.0


class Readiness:
    """Whether storage answers, checked at most once per READINESS_CACHE_SECONDS however often probes come."""

    def __init__(self, cache_seconds: float = READINESS_CACHE_SECONDS) -> None:
        self.cache_seconds = cache_seconds
        self._checked_at = -float("inf")
        self._problem: str | None = None
        self._lock = asyncio.Lock()

    async def problem(self, registry: Registry) -> str | None:
        """None when ready, else why not."""
        if time.monotonic() - self._checked_at < self.cache_seconds:
            return self._problem
        async with self._lock:
            if time.monotonic() - self._checked_at >= self.cache_seconds:
                self._problem = await self._check(registry)
                self._checked_at = time.monotonic()
            return self._problem

    @staticmethod
    async def _check(registry: Registry) -> str | None:
        try:
            await asyncio.wait_for(registry.check_storage(), READINESS_TIMEOUT_SECONDS)
        except TimeoutError:
            return f"the storage backend did not answer within {READINESS_TIMEOUT_SECONDS:g}s"
        except StorageUnavailable as e:
            logger.warning("not ready: storage check failed: %s", e)
            return f"the storage backend is unavailable: {e.reason}"
        except (StorageError, OSError) as e:
            logger.warning("not ready: storage check failed: %s", e)
            return f"the storage backend is unavailable: {e.__class__.__name__}"
        return None


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    readiness: Readiness = request.app.state.readiness
    registry = registry_of(request)
    problem = await readiness.problem(registry)
    index = index_of(request)
    if problem is None and index is not None and not index.ready:
        problem = index.refuses_writes() or "the metadata index is being built from storage"
    if problem is not None:
        raise RegistryError(ErrorCode.UNAVAILABLE, detail=problem, message="not ready", headers={"Retry-After": "1"})
    refused = index.refuses_writes() if index is not None else None
    if refused is not None:
        # Pulls of what storage holds keep working, so the process stays in service; pushes answer 503 meanwhile.
        return json_response({"status": "degraded", "writes": f"refused: {refused}"})
    return json_response({"status": "ready"})


async def metrics(request: Request) -> Response:
    collected: Metrics = request.app.state.metrics
    settings: MetricsSettings = request.app.state.settings.metrics
    if settings.username is not None and settings.password is not None:
        password = settings.password.get_secret_value()
        if not basic_auth_ok(request.headers.get("authorization"), settings.username, password):
            raise RegistryError(ErrorCode.UNAUTHORIZED, headers={"WWW-Authenticate": WWW_AUTHENTICATE})
    # The storage gauges as of this scrape (the probe is cached, so frequent scrapes cost the store nothing more).
    readiness: Readiness = request.app.state.readiness
    await readiness.problem(registry_of(request))
    collected.flush()
    body = await run_in_threadpool(collected.exposition)
    return Response(body, media_type=CONTENT_TYPE)
