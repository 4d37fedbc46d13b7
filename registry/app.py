"""The ASGI application: routes, error handlers, the API version header, and the registry's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from starlette.applications import Starlette

from registry.auth import setup as auth_setup
from registry.gc import setup as gc_setup
from registry.handlers import routes
from registry.handlers.common import API_VERSION_HEADER, EXCEPTION_HANDLERS
from registry.handlers.health import Readiness
from registry.index import setup as index_setup
from registry.instrumented_storage import InstrumentedBackend
from registry.logs import ACCESS_LOGGER
from registry.metrics import Metrics, mark_process_dead
from registry.middleware import RequestObserver
from registry.policy import setup as policy_setup
from registry.routing import WRITE_BLOCKERS_STATE, WRITE_REFUSALS_STATE, check_declared
from registry.services import Service
from registry.settings import Settings, load_settings
from registry.store.registry import Registry, backend_from_settings
from registry.store.upload_state import UploadStateSigner, shared_secret
from registry.ui import setup as ui_setup

if TYPE_CHECKING:
    from registry.proxy.cache import ProxyCache

IO_THREADS = 32
_VERSION_HEADER = (API_VERSION_HEADER[0].lower().encode(), API_VERSION_HEADER[1].encode())


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    shows_names = settings.metrics.shows_repository_names(auth=settings.auth is not None)
    metrics = Metrics(repository_names=shows_names) if settings.metrics.enabled else None
    backend = backend_from_settings(settings)
    if metrics is not None:
        backend = InstrumentedBackend(backend, metrics)
    proxy: ProxyCache | None = None
    if settings.proxy.upstreams:
        # An optional feature (and its HTTP client's imports, ~10 MiB a process, only where it is used).
        from registry.proxy import setup as proxy_setup

        proxy = proxy_setup.read_through(settings, metrics)
    registry = Registry.from_settings(settings, backend=backend, read_through=proxy)
    if metrics is not None:
        metrics.follow(registry.events)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # File I/O and large hashes run on threads; the default pool (cores + 4) is too small for many
        # concurrent uploads on a 2-core machine.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=IO_THREADS))
        await registry.start()
        secret = await shared_secret(registry.backend, settings.http.secret)
        app.state.upload_signer = UploadStateSigner(secret)
        ui_setup.start(app, secret)
        if notifier is not None:
            await notifier.start()
        if metrics is not None:
            await metrics.start()
        for service in services:
            await service.start()
        try:
            yield
        finally:
            for service in reversed(services):
                await service.aclose()
            if metrics is not None:
                await metrics.aclose()
            if notifier is not None:
                await notifier.aclose()
            await registry.aclose()
            mark_process_dead(os.getpid())

    metrics_here = metrics is not None and settings.metrics.port is None
    app = Starlette(routes=routes(metrics=metrics_here), exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.readiness = Readiness()
    setattr(app.state, WRITE_BLOCKERS_STATE, [])  # features that may refuse writes for a while add to it
    setattr(app.state, WRITE_REFUSALS_STATE, [])  # features that refuse clients' writes to some repositories
    notifier = None
    if settings.notifications.endpoints:
        # An optional feature: it follows the store's events.
        from registry.notifications import follow as follow_notifications

        notifier = follow_notifications(settings, registry)
    # Features behind their seams; each may add state, middleware or a background service.
    services: list[Service] = []
    for feature in (index_setup, gc_setup, policy_setup):
        service = feature.install(app, settings, registry)
        if service is not None:
            services.append(service)
    if proxy is not None:
        services.append(proxy_setup.install(app, proxy))
    ui_service = ui_setup.install(app, settings, registry)
    if ui_service is not None:
        services.append(ui_service)
    # Every route declares the access it needs; the check runs after routing (registry/routing.py).
    check_declared(app.routes)
    auth_service = auth_setup.install(app, settings, registry)
    if auth_service is not None:
        services.append(auth_service)
    # The observer sees every answer, refusals included. It also adds `Docker-Distribution-API-Version`, which
    # clients probe on `/v2/` and on errors.
    access_log = logging.getLogger(ACCESS_LOGGER) if settings.http.access_log else None
    app.add_middleware(RequestObserver, metrics=metrics, access_log=access_log, headers=[_VERSION_HEADER])
    return app
