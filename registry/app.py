"""The ASGI application: routes, error handlers, the API version header, and the registry's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.handlers import routes
from registry.handlers.common import API_VERSION_HEADER, EXCEPTION_HANDLERS
from registry.settings import Settings, load_settings
from registry.store.registry import Registry
from registry.store.upload_state import UploadStateSigner, shared_secret

IO_THREADS = 32
_VERSION_HEADER = (API_VERSION_HEADER[0].lower().encode(), API_VERSION_HEADER[1].encode())


class ApiVersionHeader:
    """Adds `Docker-Distribution-API-Version` to every response (clients probe it on `/v2/` and on errors)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), _VERSION_HEADER]
            await send(message)

        await self.app(scope, receive, send_with_header)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    registry = Registry.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # File I/O and large hashes run on threads; the default pool (cores + 4) is too small for many
        # concurrent uploads on a 2-core machine.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=IO_THREADS))
        await registry.start()
        secret = await shared_secret(registry.backend, settings.http.secret)
        app.state.upload_signer = UploadStateSigner(secret)
        try:
            yield
        finally:
            await registry.aclose()

    app = Starlette(routes=routes(), exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.add_middleware(ApiVersionHeader)
    return app
