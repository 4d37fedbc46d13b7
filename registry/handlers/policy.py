"""The admin API for what used to need a config edit and a restart: access rules, repository visibility and quotas
(admins only), personal access tokens (each user their own; admins everyone's), and the audit log of those changes.

    GET    /api/v1/access-rules               the config file's rules (ids `config-N`, read-only) and the API's
    POST   /api/v1/access-rules               {repository, users, groups, actions} -> 201 the stored rule
    DELETE /api/v1/access-rules/<id>          204
    GET    /api/v1/visibility                 [{repository, visibility}]
    PUT    /api/v1/visibility                 {repository, visibility: public|private}
    DELETE /api/v1/visibility/<pattern>       204
    GET    /api/v1/quotas                     [{repository, bytes, source}]
    PUT    /api/v1/quotas                     {repository, bytes}
    DELETE /api/v1/quotas/<pattern>           204
    GET    /api/v1/tokens                     the caller's personal tokens (an admin's `?all=true`: everyone's)
    POST   /api/v1/tokens                     {name, scopes, expires_in} -> 201 with the secret, shown once
    DELETE /api/v1/tokens/<id>                204 (the owner's own, or an admin)
    GET    /api/v1/audit                      newest first: ?limit=N&before=<cursor>

Every change is applied in this process at once and on every replica within `policy.poll_interval`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from registry.auth.access import ANONYMOUS_IDENTITY, Identity
from registry.auth.personal_tokens import PersonalTokens, TokenError
from registry.auth.settings import AccessRule, check_pattern
from registry.durations import Seconds
from registry.errors import ErrorCode, RegistryError
from registry.handlers.common import json_response, single_query
from registry.names import validate_name
from registry.policy.database import Actor
from registry.policy.service import Policy
from registry.policy.setup import POLICY_STATE
from registry.routing import ADMIN, IDENTITY_SCOPE_KEY, LOGIN, ApiRoute
from registry.sizes import Bytes
from registry.store.manifest_format import decode_json

MAX_BODY_BYTES = 64 * 1024
AUDIT_PAGE = 100
AUDIT_PAGE_MAX = 1000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _checked(pattern: str) -> str:
    check_pattern(pattern)
    return pattern


RepositoryPattern = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_checked)]
"""A repository glob given through the API or the UI (registry.auth.access.check_pattern's limits)."""


class VisibilityBody(_Body):
    repository: RepositoryPattern
    visibility: str = Field(pattern="^(public|private)$")


class QuotaBody(_Body):
    repository: RepositoryPattern
    bytes: Bytes


class TokenBody(_Body):
    name: str = Field(min_length=1, max_length=128)
    scopes: list[str] = Field(min_length=1, max_length=50)
    expires_in: Seconds | None = Field(default=None, le=5 * 366 * 86400)


def _invalid(message: str, detail: object = None) -> RegistryError:
    return RegistryError(ErrorCode.REQUEST_INVALID, message=message, detail=detail)


async def _body(request: Request, model: type[BaseModel]) -> Any:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise RegistryError(ErrorCode.REQUEST_INVALID, message=f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        # Strict: UTF-8, bounded depth, standard numbers, no unpaired surrogate (stored, one would break every page
        # and export that shows it).
        data = decode_json(body)
    except RegistryError as e:
        raise _invalid("the body must be a JSON object", e.detail) from None
    if not isinstance(data, dict):
        raise _invalid("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = [{"field": ".".join(map(str, err["loc"])), "problem": err["msg"]} for err in e.errors()[:10]]
        raise _invalid("invalid body", problems) from None


def _policy(request: Request) -> Policy:
    policy: Policy | None = getattr(request.app.state, POLICY_STATE, None)
    if policy is None:
        raise RegistryError(ErrorCode.UNAVAILABLE, message="the policy database is not configured")
    return policy


def _actor(request: Request) -> Actor:
    client = request.client
    return Actor(request.scope.get("user_name", "") or "anonymous", client.host if client else "")


def _not_found(what: str, key: str) -> RegistryError:
    return RegistryError(ErrorCode.NOT_FOUND, message=f"no {what} {key!r}", detail={what: key})


# --- access rules


async def list_rules(request: Request) -> Response:
    policy = _policy(request)
    config = [
        {
            "id": f"config-{i}",
            "repository": rule.repository,
            "users": rule.users,
            "groups": rule.groups,
            "actions": rule.actions,
            "source": "config",
        }
        for i, rule in enumerate(request.app.state.settings.access)
    ]
    return json_response({"rules": [*config, *(rule.as_dict() for rule in policy.snapshot.rules)]})


async def create_rule(request: Request) -> Response:
    policy = _policy(request)
    rule: AccessRule = await _body(request, AccessRule)
    try:
        check_pattern(rule.repository)
        for name in (*rule.users, *rule.groups):
            check_pattern(name)
    except ValueError as e:
        raise _invalid("invalid body", [{"field": "repository", "problem": str(e)}]) from None
    db = await policy.database()
    stored = await policy.change(db.add_rule, rule, _actor(request))
    return json_response(stored.as_dict(), status=201)


async def delete_rule(request: Request) -> Response:
    policy = _policy(request)
    rule_id = request.path_params["id"]
    if rule_id.startswith("config-"):
        raise RegistryError(
            ErrorCode.DENIED,
            message="this rule is in the config file: change it there",
            detail={"id": rule_id},
        )
    db = await policy.database()
    if not await policy.change(db.delete_rule, rule_id, _actor(request)):
        raise _not_found("rule", rule_id)
    return Response(status_code=204)


# --- visibility and quotas: a setting per repository glob


async def list_visibility(request: Request) -> Response:
    entries = [
        {"repository": v.repository, "visibility": "public" if v.value else "private", "updated_by": v.updated_by}
        for v in _policy(request).snapshot.visibility
    ]
    return json_response({"visibility": entries})


async def set_visibility(request: Request) -> Response:
    policy = _policy(request)
    body: VisibilityBody = await _body(request, VisibilityBody)
    db = await policy.database()
    public = int(body.visibility == "public")
    await policy.change(db.set_setting, "visibility", body.repository, public, _actor(request))
    return json_response({"repository": body.repository, "visibility": body.visibility})


async def delete_visibility(request: Request) -> Response:
    policy = _policy(request)
    pattern = request.path_params["pattern"]
    db = await policy.database()
    if not await policy.change(db.delete_setting, "visibility", pattern, _actor(request)):
        raise _not_found("visibility", pattern)
    return Response(status_code=204)


async def list_quotas(request: Request) -> Response:
    quotas = request.app.state.quotas
    entries = [{"repository": q.pattern, "bytes": q.limit, "source": q.source} for q in quotas.quotas]
    repository = single_query(request, "repository", ErrorCode.NAME_INVALID)
    body: dict[str, Any] = {"quotas": entries}
    if repository:
        usage = await quotas.usage(validate_name(repository))
        body["usage"] = usage.as_dict() if usage is not None else None
    return json_response(body)


async def set_quota(request: Request) -> Response:
    policy = _policy(request)
    body: QuotaBody = await _body(request, QuotaBody)
    db = await policy.database()
    await policy.change(db.set_setting, "quotas", body.repository, body.bytes, _actor(request))
    return json_response({"repository": body.repository, "bytes": body.bytes, "source": "api"})


async def delete_quota(request: Request) -> Response:
    policy = _policy(request)
    pattern = request.path_params["pattern"]
    db = await policy.database()
    if not await policy.change(db.delete_setting, "quotas", pattern, _actor(request)):
        raise _not_found("quota", pattern)
    return Response(status_code=204)


# --- personal access tokens


def _caller(request: Request) -> Identity:
    """A signed-in user acting as themself: not a CI token named like a user, not another issuer's token, not a
    personal token (which could otherwise list, revoke or mint its owner's other tokens)."""
    identity: Identity | None = request.scope.get(IDENTITY_SCOPE_KEY)
    if identity is None:  # no auth at all (laptop mode): personal tokens make no sense there
        return ANONYMOUS_IDENTITY
    if identity.kind != "user" or identity.grants or identity.token_id:
        raise RegistryError(ErrorCode.DENIED, message="personal tokens are managed by a signed-in user, not by a token")
    return identity


def _tokens(request: Request) -> PersonalTokens:
    tokens: PersonalTokens | None = getattr(request.app.state, "personal_tokens", None)
    if tokens is None:
        raise RegistryError(ErrorCode.UNSUPPORTED, message="personal tokens need authentication (an `auth:` section)")
    return tokens


def _is_admin(request: Request, identity: Identity) -> bool:
    auth = getattr(request.app.state, "auth", None)
    return auth is not None and bool(auth.is_admin(identity))


async def list_tokens(request: Request) -> Response:
    identity = _caller(request)
    everyone = single_query(request, "all", ErrorCode.REQUEST_INVALID) in ("1", "true")
    if everyone and not _is_admin(request, identity):
        raise RegistryError(ErrorCode.DENIED, message="only admins may list everyone's tokens")
    tokens = await _tokens(request).list(None if everyone else identity.name)
    return json_response({"tokens": [token.as_dict() for token in tokens]})


async def create_token(request: Request) -> Response:
    identity = _caller(request)
    body: TokenBody = await _body(request, TokenBody)
    try:
        token, secret = await _tokens(request).create(
            identity, body.name, body.scopes, body.expires_in, _actor(request)
        )
    except TokenError as e:
        raise _invalid(str(e)) from None
    return json_response({**token.as_dict(), "token": secret}, status=201)


async def revoke_token(request: Request) -> Response:
    identity = _caller(request)
    tokens = _tokens(request)
    token_id = request.path_params["id"]
    token = await tokens.get(token_id)
    if token is None or (token.owner != identity.name and not _is_admin(request, identity)):
        raise _not_found("token", token_id)
    await tokens.revoke(token_id, _actor(request))
    return Response(status_code=204)


# --- the audit log


_ENTRY_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")  # what new_id makes (hex), with room


def _cursor(entry_at: float, entry_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([entry_at, entry_id]).encode()).decode()


def _parse_cursor(text: str) -> tuple[float, str]:
    try:
        at, entry_id = json.loads(base64.urlsafe_b64decode(text.encode()))
        position = float(at), str(entry_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, OverflowError, RecursionError):
        raise _invalid("invalid `before` cursor") from None
    if not math.isfinite(position[0]) or not _ENTRY_ID.fullmatch(position[1]):
        raise _invalid("invalid `before` cursor")  # anything else (a NUL, a lone surrogate) names no entry
    return position


async def audit(request: Request) -> Response:
    policy = _policy(request)
    limit_text = single_query(request, "limit", ErrorCode.PAGINATION_NUMBER_INVALID)
    limit = AUDIT_PAGE
    if limit_text is not None:
        if not re.fullmatch(r"[0-9]{1,6}", limit_text) or not 0 < int(limit_text) <= AUDIT_PAGE_MAX:
            raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID, detail={"limit": limit_text[:20]})
        limit = int(limit_text)
    before_text = single_query(request, "before", ErrorCode.REQUEST_INVALID)
    before = _parse_cursor(before_text) if before_text else None
    db = await policy.database()
    entries = await policy.run(db.audit_entries, limit, before)
    body: dict[str, Any] = {"entries": [entry.as_dict() for entry in entries]}
    if len(entries) == limit:
        body["next"] = _cursor(entries[-1].at, entries[-1].id)
    return json_response(body)


def routes() -> list[BaseRoute]:
    return [
        ApiRoute("/api/v1/access-rules", list_rules, methods=["GET"], access=ADMIN),
        ApiRoute("/api/v1/access-rules", create_rule, methods=["POST"], access=ADMIN),
        ApiRoute("/api/v1/access-rules/{id}", delete_rule, methods=["DELETE"], access=ADMIN),
        ApiRoute("/api/v1/visibility", list_visibility, methods=["GET"], access=ADMIN),
        ApiRoute("/api/v1/visibility", set_visibility, methods=["PUT"], access=ADMIN),
        ApiRoute("/api/v1/visibility/{pattern:path}", delete_visibility, methods=["DELETE"], access=ADMIN),
        ApiRoute("/api/v1/quotas", list_quotas, methods=["GET"], access=ADMIN),
        ApiRoute("/api/v1/quotas", set_quota, methods=["PUT"], access=ADMIN),
        ApiRoute("/api/v1/quotas/{pattern:path}", delete_quota, methods=["DELETE"], access=ADMIN),
        ApiRoute("/api/v1/tokens", list_tokens, methods=["GET"], access=LOGIN),
        ApiRoute("/api/v1/tokens", create_token, methods=["POST"], access=LOGIN),
        ApiRoute("/api/v1/tokens/{id}", revoke_token, methods=["DELETE"], access=LOGIN),
        ApiRoute("/api/v1/audit", audit, methods=["GET"], access=ADMIN),
    ]
