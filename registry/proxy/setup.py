"""Wiring the pull-through cache into the app (called by registry.app.create_app)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.proxy.cache import CACHE_STATUS_HEADER, ProxyCache, cache_status
from registry.routing import WRITE_REFUSALS_STATE
from registry.services import Service
from registry.settings import Settings

if TYPE_CHECKING:
    from registry.metrics import Metrics

_HEADER = CACHE_STATUS_HEADER.lower().encode()


def read_through(settings: Settings, metrics: Metrics | None) -> ProxyCache:
    """The cache the store reads through (the app builds it when upstreams are configured)."""
    return ProxyCache(settings.proxy, metrics, settings.http.workers)


class _CacheService:
    def __init__(self, cache: ProxyCache) -> None:
        self.cache = cache

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        await self.cache.aclose()


class CacheStatusHeader:
    """Says in `Moorage-Cache` what the cache did for a request: `hit`, `miss`, or `stale` (served from the cache
    while the upstream could not answer)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        said: list[str] = []
        token = cache_status.set(said)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and said:
                status = "stale" if "stale" in said else "miss" if "miss" in said else said[-1]
                message["headers"] = [*message.get("headers", []), (_HEADER, status.encode())]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            cache_status.reset(token)


def install(app: Starlette, cache: ProxyCache) -> Service:
    """Refuse clients' writes into cached repositories, say what the cache did, close upstream connections."""
    getattr(app.state, WRITE_REFUSALS_STATE).append(cache.refusal)
    app.add_middleware(CacheStatusHeader)
    return _CacheService(cache)
