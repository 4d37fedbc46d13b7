"""Admin endpoints under `/api/v1/`: repository deletion and storage accounting."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from registry.errors import ErrorCode, RegistryError
from registry.handlers.common import (
    json_response,
    pull_filter,
    registry_of,
    repository_name,
    require_delete_enabled,
    single_query,
)
from registry.policy.database import Actor
from registry.policy.quotas import Quotas
from registry.policy.service import Policy
from registry.policy.setup import POLICY_STATE, QUOTAS_STATE
from registry.routing import LOGIN, ApiRoute, on_repository
from registry.store.usage import measure, with_quotas


async def delete_repository_endpoint(request: Request) -> Response:
    name = repository_name(request)
    require_delete_enabled(request)
    deleted = await registry_of(request).repositories.delete(name)
    policy: Policy | None = getattr(request.app.state, POLICY_STATE, None)
    if policy is not None:  # an admin change: in the audit log, with who and from where
        client = request.client
        actor = Actor(request.scope.get("user_name", "") or "anonymous", client.host if client else "")
        try:
            db = await policy.database()
            await policy.run(db.record, actor, "repository.delete", name, deleted.as_dict())
        except RegistryError as e:
            logger.error("audit: could not record the deletion of %s by %s: %s", name, actor.name, e.detail)
    return json_response(deleted.as_dict(), status=202)


async def stats(request: Request) -> Response:
    repository = single_query(request, "repository", ErrorCode.NAME_INVALID)
    visible = pull_filter(request)
    if repository is not None:
        repository = repository.strip()
        if visible is not None and not visible(repository):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": repository})
    usage = await measure(registry_of(request), only=repository or None, visible=visible)
    quotas: Quotas | None = getattr(request.app.state, QUOTAS_STATE, None)
    if quotas is not None and quotas.quotas:
        warning_at = request.app.state.settings.policy.quota_warning
        usage = with_quotas(usage, quotas.limit_of, warning_at)
    return json_response(usage.as_dict())


logger = logging.getLogger("moorage.audit")


def routes() -> list[BaseRoute]:
    return [
        ApiRoute(
            "/api/v1/repositories/{name:path}",
            delete_repository_endpoint,
            methods=["DELETE"],
            access=on_repository("delete"),
        ),
        ApiRoute("/api/v1/stats", stats, methods=["GET"], access=LOGIN),
    ]
