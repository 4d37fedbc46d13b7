"""The built-in Docker token service (`/auth/token`): GET per the token spec, POST per its OAuth2 variant.

The token grants what was asked, narrowed to what the caller may do; asking for more than that is not an error.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from registry.auth.access import ANONYMOUS_IDENTITY, Identity, Scope, ScopeError
from registry.auth.authenticator import Authenticator, AuthFailed, TooManyFailures
from registry.auth.bearer import (
    CI_TOKEN_CLAIM,
    CREDENTIAL_CLAIM,
    KIND_CLAIM,
    PERSONAL_TOKEN_CLAIM,
    InvalidToken,
    TokenAuthority,
)
from registry.errors import ErrorCode, RegistryError
from registry.handlers.common import json_response, single_query
from registry.routing import PUBLIC, ApiRoute

MAX_FORM_BYTES = 64 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def routes() -> list[BaseRoute]:
    return [
        # The token service authenticates the caller itself: the credentials are what it exchanges.
        ApiRoute("/auth/token", token_get, methods=["GET"], access=PUBLIC),
        ApiRoute("/auth/token", token_post, methods=["POST"], access=PUBLIC),
    ]


def _service(request: Request) -> tuple[Authenticator, TokenAuthority]:
    auth: Authenticator | None = getattr(request.app.state, "auth", None)
    if auth is None or auth.authority is None:
        raise RegistryError(ErrorCode.NOT_FOUND, detail={"path": request.url.path})
    return auth, auth.authority


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def _unauthorized(auth: Authenticator, message: str) -> RegistryError:
    return RegistryError(
        ErrorCode.UNAUTHORIZED,
        message=message,
        headers={"WWW-Authenticate": f'Basic realm="{auth.settings.realm}",charset="UTF-8"', **NO_STORE},
    )


def _too_many(error: TooManyFailures) -> RegistryError:
    return RegistryError(
        ErrorCode.TOOMANYREQUESTS,
        message="too many failed logins: wait before trying again",
        headers={"Retry-After": str(error.retry_after)},
    )


def _bad_request(message: str) -> RegistryError:
    return RegistryError(ErrorCode.UNSUPPORTED, message=message, status=400)


def _once(request: Request, key: str) -> str | None:
    """A parameter given at most once (the token endpoint's errors are 400 UNSUPPORTED, as `_bad_request`)."""
    return single_query(request, key, ErrorCode.UNSUPPORTED, status=400)


def _check_service(authority: TokenAuthority, service: str | None) -> None:
    if service and service != authority.service:
        raise _bad_request(f"unknown service {service[:100]!r}: this token service serves {authority.service!r}")


def _scopes(texts: list[str]) -> list[Scope]:
    try:
        return Scope.parse_many(texts)
    except ScopeError as e:
        raise _bad_request(str(e)) from None


async def _login(auth: Authenticator, call: Awaitable[Identity]) -> Identity:
    try:
        identity = await call
    except TooManyFailures as e:
        raise _too_many(e) from None
    except AuthFailed as e:
        raise _unauthorized(auth, str(e)) from None
    return identity


def refreshable(auth: Authenticator, identity: Identity) -> bool:
    """Who gets a refresh token when a client asks (docker login keeps it instead of the password): CI tokens and
    htpasswd users, whose record is read again at each refresh. Not personal tokens (the client keeps the token
    itself) nor directory users (only the directory can say they may still sign in: clients keep the password)."""
    if identity.kind == "ci":
        return True
    return (
        identity.kind == "user"
        and not identity.token_id
        and bool(identity.credential)  # signed in with the htpasswd file's password, whose mark it carries
        and auth.htpasswd is not None
        and auth.htpasswd.has_user(identity.name)
    )


def _token_body(
    auth: Authenticator, authority: TokenAuthority, identity: Identity, scopes: list[Scope], *, offline: bool
) -> dict[str, Any]:
    access = auth.rules.grant(identity, scopes)
    issued = authority.issue(identity, access)
    body: dict[str, Any] = {
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at,
        "scope": " ".join(f"{e['type']}:{e['name']}:{','.join(e['actions'])}" for e in access),
    }
    if offline and refreshable(auth, identity):
        body["refresh_token"] = authority.issue_refresh(identity)
    return body


async def token_get(request: Request) -> Response:
    """`GET /auth/token?service=&scope=...[&offline_token=true]`, anonymous or with Basic credentials."""
    auth, authority = _service(request)
    _check_service(authority, _once(request, "service"))
    scopes = _scopes(request.query_params.getlist("scope"))
    identity = ANONYMOUS_IDENTITY
    header = request.headers.get("authorization")
    if header:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "basic":
            raise _unauthorized(auth, "the token service takes Basic credentials")
        identity = await _login(auth, auth.basic(credentials.strip(), _address(request)))
    offline = (_once(request, "offline_token") or "").lower() == "true"
    return json_response(_token_body(auth, authority, identity, scopes, offline=offline), headers=NO_STORE)


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _bad_request("form too large")
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        raise _bad_request("the body must be an application/x-www-form-urlencoded form") from None


async def _refresh_identity(auth: Authenticator, authority: TokenAuthority, refresh_token: str) -> Identity:
    try:
        claims = authority.verify(refresh_token, refresh=True)
    except InvalidToken:
        raise _unauthorized(auth, "invalid refresh token") from None
    subject = str(claims.get("sub") or "")
    if claims.get(KIND_CLAIM) == "ci":
        record = await auth.ci_tokens.get(subject)
        if record is None or record.id != claims.get(CI_TOKEN_CLAIM) or record.expired():
            raise _unauthorized(auth, "the CI token has been revoked or has expired")
        return record.identity()
    if claims.get(PERSONAL_TOKEN_CLAIM) is not None or not subject or auth.htpasswd is None:
        raise _unauthorized(auth, "invalid refresh token")
    # The user still there, with the password the token was got with: a new password ends the old refresh tokens
    # (a docker login with the new one gets a new one). Tokens without the mark (before it was made) end too.
    mark = auth.htpasswd.credential_mark(subject)
    if mark is None or claims.get(CREDENTIAL_CLAIM) != mark:
        raise _unauthorized(auth, "invalid refresh token")
    return Identity("user", subject, groups=auth.static_groups(subject), source="htpasswd", credential=mark)


async def token_post(request: Request) -> Response:
    """OAuth2: `grant_type=password` (username, password) or `refresh_token`; `scope` is space-separated."""
    auth, authority = _service(request)
    form = await _form(request)
    _check_service(authority, form.get("service"))
    scopes = _scopes([form.get("scope", "")])
    grant_type = form.get("grant_type", "")
    if grant_type == "password":
        username, password = form.get("username", ""), form.get("password", "")
        if not username or not password:
            raise _bad_request("grant_type=password needs username and password")
        identity = await _login(auth, auth.login(username, password, _address(request)))
        offline = form.get("access_type") == "offline"
    elif grant_type == "refresh_token":
        identity = await _refresh_identity(auth, authority, form.get("refresh_token", ""))
        offline = False
    else:
        raise _bad_request(f"unsupported grant_type {grant_type[:40]!r}: password or refresh_token")
    return json_response(_token_body(auth, authority, identity, scopes, offline=offline), headers=NO_STORE)
