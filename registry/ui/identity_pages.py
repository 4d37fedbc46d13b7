"""The UI's identity pages: signing in through the OpenID Connect provider, personal access tokens (make, list,
revoke), and the audit log for admins. The rest of the UI is registry/ui/pages.py."""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from registry.auth.oidc_state import OidcError, Pending
from registry.auth.personal_tokens import TokenError
from registry.errors import ErrorCode, RegistryError
from registry.policy.database import Actor
from registry.routing import ADMIN, LOGIN, PUBLIC
from registry.ui.pages import (
    _one,
    _page,
    _secured,
    _signed_in,
    render,
    safe_next,
    session_identity,
    ui_of,
    ui_request,
)

if TYPE_CHECKING:
    from registry.auth.oidc import OidcClient
    from registry.auth.personal_tokens import PersonalTokens
    from registry.ui.sessions import Session

logger = logging.getLogger("moorage.ui")
OIDC_COOKIE = "moorage_oidc"
OIDC_COOKIE_PATH = "/ui/auth"
OIDC_COOKIE_SECONDS = 600
CALLBACK_PATH = "/ui/auth/callback"
_MAX_COOKIE = 2048
_MAX_NEXT = 512
_DAY = 86400.0
_MAX_DAYS = 5 * 366


def _oidc(request: Request) -> OidcClient:
    client: OidcClient | None = getattr(request.app.state, "oidc", None)
    if client is None:
        raise RegistryError(ErrorCode.NOT_FOUND, message="single sign-on is not configured here")
    return client


def _redirect_uri(request: Request, client: OidcClient) -> str:
    if client.settings.redirect_url:
        return client.settings.redirect_url
    return str(request.base_url).rstrip("/") + CALLBACK_PATH


def _seal(request: Request, pending: Pending) -> str:
    payload = base64.urlsafe_b64encode(pending.to_json().encode()).decode()
    return payload + "." + ui_of(request).sessions.sign("oidc-pending", payload)


def _unseal(request: Request, value: str | None) -> Pending | None:
    if not value or len(value) > _MAX_COOKIE or "." not in value:
        return None
    payload, _, signature = value.rpartition(".")
    if not ui_of(request).sessions.signed("oidc-pending", payload, signature):
        return None
    try:
        pending = Pending.from_json(base64.urlsafe_b64decode(payload.encode()).decode())
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        return None
    if not 0 <= time.time() - pending.issued <= OIDC_COOKIE_SECONDS:
        return None  # the cookie's own lifetime is the browser's to keep: this one is ours
    return pending


async def oidc_begin(request: Request) -> Response:
    client = _oidc(request)
    try:
        target = safe_next(_one(request, "next"))
        if len(target) > _MAX_NEXT:
            target = "/ui/"  # the cookie has room for a page's path, not for anything
        url, pending = await client.begin(_redirect_uri(request, client), target)
    except OidcError as e:
        return _failed(request, str(e))
    response = RedirectResponse(url, status_code=303)
    # Lax, not Strict: the provider's redirect back is another site's navigation, and must bring it.
    response.set_cookie(
        OIDC_COOKIE,
        _seal(request, pending),
        max_age=OIDC_COOKIE_SECONDS,
        path=OIDC_COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="lax",
    )
    return _secured(request, response)


def _failed(request: Request, message: str) -> Response:
    context = {"title": "Sign in", "next": "/ui/", "expired": False, "signed_out": False, "username": ""}
    response = render(request, "login.html", {**context, "error": f"Single sign-on failed: {message}"}, status=401)
    response.delete_cookie(OIDC_COOKIE, path=OIDC_COOKIE_PATH)
    return response


async def oidc_callback(request: Request) -> Response:
    client = _oidc(request)
    pending = _unseal(request, request.cookies.get(OIDC_COOKIE))
    state, code, error = _one(request, "state"), _one(request, "code"), _one(request, "error")
    if pending is None:
        return _failed(request, "this sign-in was not started here, or took too long: try again")
    if state is None or state != pending.state:
        return _failed(request, "the answer does not belong to this sign-in: try again")
    if error is not None or not code:
        return _failed(request, f"the identity provider said {(error or 'nothing')[:100]!r}")
    try:
        identity = await client.finish(code, _redirect_uri(request, client), pending)
    except OidcError as e:
        logger.warning("oidc: sign-in refused: %s", e)
        return _failed(request, str(e))
    auth = ui_of(request).auth
    if auth is not None and not await auth.remember(identity):  # the groups its personal tokens act with
        logger.warning("oidc: %r is a local or directory user's name: sign-in refused", identity.name)
        return _failed(request, f"the name {identity.name!r} belongs to another account here")
    response = await _signed_in(request, identity, "oidc", pending.next, page=True)
    response.delete_cookie(OIDC_COOKIE, path=OIDC_COOKIE_PATH)
    return response


# Personal access tokens.


def _signed_in_tokens(request: Request) -> tuple[PersonalTokens, Session]:
    """The personal tokens and the caller's session; a 404 page where there are none (no auth, no sign-in)."""
    ui = ui_of(request)
    tokens = ui.auth.personal_tokens if ui.auth is not None else None
    session = ui_request(request).session
    if tokens is None or session is None:
        raise RegistryError(ErrorCode.NOT_FOUND, message="personal tokens need sign-in")
    return tokens, session


async def _tokens_page(
    request: Request, *, created: dict[str, str] | None = None, error: str | None = None
) -> Response:
    tokens, session = _signed_in_tokens(request)
    listed = await tokens.list(session.user)
    context = {"title": "Access tokens", "tokens": listed, "created": created, "error": error}
    return render(request, "tokens.html", context, status=400 if error else 200)


async def tokens_page(request: Request) -> Response:
    return await _tokens_page(request)


async def create_token(request: Request) -> Response:
    tokens, session = _signed_in_tokens(request)
    form = ui_request(request).form
    days_text = form.get("expires_days", "").strip()
    lifetime = None
    if days_text:
        if not re.fullmatch(r"[0-9]{1,5}", days_text) or not 0 < int(days_text) <= _MAX_DAYS:
            return await _tokens_page(request, error=f"Expiry: a number of days from 1 to {_MAX_DAYS}, or empty.")
        lifetime = int(days_text) * _DAY
    client = request.client
    try:
        token, secret = await tokens.create(
            session_identity(session),
            form.get("name", "").strip(),
            form.get("scopes", "").split(),
            lifetime,
            Actor(session.user, client.host if client else ""),
        )
    except TokenError as e:
        return await _tokens_page(request, error=str(e))
    return await _tokens_page(request, created={"name": token.name, "secret": secret, "user": token.owner})


async def revoke_token(request: Request) -> Response:
    tokens, session = _signed_in_tokens(request)
    auth = ui_of(request).auth
    assert auth is not None  # there are personal tokens
    token = await tokens.get(request.path_params["id"])
    identity = session_identity(session)
    if token is None or (token.owner != identity.name and not auth.is_admin(identity)):
        raise RegistryError(ErrorCode.NOT_FOUND, message="no such token")
    client = request.client
    await tokens.revoke(token.id, Actor(identity.name, client.host if client else ""))
    return _secured(request, RedirectResponse("/ui/tokens", status_code=303))


# The audit log.


async def audit_page(request: Request) -> Response:
    policy = getattr(request.app.state, "policy", None)
    if policy is None:
        raise RegistryError(ErrorCode.NOT_FOUND, message="no audit log here")
    db = await policy.database()
    entries = await policy.run(db.audit_entries, 200, None)
    return render(request, "audit.html", {"title": "Audit log", "entries": entries})


def routes() -> list[BaseRoute]:
    return [
        _page("/ui/login/oidc", oidc_begin, ["GET"], PUBLIC),
        _page(CALLBACK_PATH, oidc_callback, ["GET"], PUBLIC),
        _page("/ui/tokens", tokens_page, ["GET"], LOGIN),
        _page("/ui/tokens", create_token, ["POST"], LOGIN),
        _page("/ui/tokens/{id}/revoke", revoke_token, ["POST"], LOGIN),
        _page("/ui/audit", audit_page, ["GET"], ADMIN),
    ]
