"""The UI's admin page: access rules, repository visibility and quotas, changed without a restart (the same
policy database and the same checks as the admin API, registry/handlers/policy.py; every change is audited)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from registry.auth.settings import AccessRule, check_pattern
from registry.errors import ErrorCode, RegistryError
from registry.handlers.policy import QuotaBody, VisibilityBody
from registry.policy.database import Actor, PolicyDatabase
from registry.policy.service import Policy
from registry.policy.setup import POLICY_STATE
from registry.routing import ADMIN
from registry.ui.pages import _page, _secured, render, ui_of, ui_request

ADMIN_PATH = "/ui/admin"


def _policy(request: Request) -> Policy:
    policy: Policy | None = getattr(request.app.state, POLICY_STATE, None)
    if policy is None:
        raise RegistryError(ErrorCode.NOT_FOUND, message="no policy database here")
    return policy


def _actor(request: Request) -> Actor:
    session = ui_request(request).session
    client = request.client
    return Actor(session.user if session is not None else "anonymous", client.host if client else "")


async def _page_of(request: Request, error: str | None = None) -> Response:
    policy = _policy(request)
    snapshot = policy.snapshot
    config_rules = ui_of(request).settings.access
    quotas = request.app.state.quotas.quotas
    context: dict[str, Any] = {
        "title": "Access and quotas",
        "config_rules": config_rules,
        "rules": snapshot.rules,
        "visibility": snapshot.visibility,
        "quotas": quotas,
        "error": error,
    }
    return render(request, "admin.html", context, status=400 if error else 200)


async def admin_page(request: Request) -> Response:
    return await _page_of(request)


def _names(text: str) -> list[str]:
    return [name for name in text.replace(",", " ").split() if name]


def _valid(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise ValueError(f"{where + ': ' if where else ''}{first['msg']}") from None


async def _changed(request: Request, change: Any) -> Response:
    """Run `change(db, actor)`; back to the page, or the page with the reason it was refused."""
    policy = _policy(request)
    try:
        db: PolicyDatabase = await policy.database()
        await change(db, _actor(request))
    except ValueError as e:
        return await _page_of(request, str(e))
    return _secured(request, RedirectResponse(ADMIN_PATH, status_code=303))


async def add_rule(request: Request) -> Response:
    form = ui_request(request).form
    policy = _policy(request)

    async def change(db: PolicyDatabase, actor: Actor) -> None:
        rule: AccessRule = _valid(
            AccessRule,
            {
                "repository": form.get("repository", "").strip(),
                "users": _names(form.get("users", "")),
                "groups": _names(form.get("groups", "")),
                "actions": [a for a in ("pull", "push", "delete") if form.get(f"action_{a}")],
            },
        )
        for pattern in (rule.repository, *rule.users, *rule.groups):
            check_pattern(pattern)  # ValueError: shown on the page
        await policy.change(db.add_rule, rule, actor)

    return await _changed(request, change)


async def delete_rule(request: Request) -> Response:
    policy = _policy(request)
    rule_id = request.path_params["id"]

    async def change(db: PolicyDatabase, actor: Actor) -> None:
        if not await policy.change(db.delete_rule, rule_id, actor):
            raise ValueError("that rule is gone already")

    return await _changed(request, change)


async def set_visibility(request: Request) -> Response:
    form = ui_request(request).form
    policy = _policy(request)

    async def change(db: PolicyDatabase, actor: Actor) -> None:
        body = _valid(
            VisibilityBody,
            {"repository": form.get("repository", "").strip(), "visibility": form.get("visibility", "")},
        )
        await policy.change(db.set_setting, "visibility", body.repository, int(body.visibility == "public"), actor)

    return await _changed(request, change)


async def set_quota(request: Request) -> Response:
    form = ui_request(request).form
    policy = _policy(request)

    async def change(db: PolicyDatabase, actor: Actor) -> None:
        body = _valid(QuotaBody, {"repository": form.get("repository", "").strip(), "bytes": form.get("bytes", "")})
        await policy.change(db.set_setting, "quotas", body.repository, body.bytes, actor)

    return await _changed(request, change)


async def delete_setting(request: Request) -> Response:
    form = ui_request(request).form
    policy = _policy(request)
    table = {"visibility": "visibility", "quota": "quotas"}.get(request.path_params["kind"])
    if table is None:
        raise RegistryError(ErrorCode.NOT_FOUND, message="nothing of that kind here")

    async def change(db: PolicyDatabase, actor: Actor) -> None:
        if not await policy.change(db.delete_setting, table, form.get("repository", ""), actor):
            raise ValueError("that entry is gone already")

    return await _changed(request, change)


def routes() -> list[BaseRoute]:
    return [
        _page(ADMIN_PATH, admin_page, ["GET"], ADMIN),
        _page(ADMIN_PATH + "/rules", add_rule, ["POST"], ADMIN),
        _page(ADMIN_PATH + "/rules/{id}/delete", delete_rule, ["POST"], ADMIN),
        _page(ADMIN_PATH + "/visibility", set_visibility, ["POST"], ADMIN),
        _page(ADMIN_PATH + "/quotas", set_quota, ["POST"], ADMIN),
        _page(ADMIN_PATH + "/{kind}/delete", delete_setting, ["POST"], ADMIN),
    ]
