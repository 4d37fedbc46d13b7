"""The auth middleware (pure ASGI): who is calling, what the route needs, and 401/403/429 when it is not allowed.

What each route needs, decided before routing, with the router's own patterns so that the repository name seen
here is the one the handler gets:
  /v2/                                   a login, or any valid bearer token (clients take their challenges here)
  /v2/_catalog, /api/v1/search, /v1/search  anyone let in (anonymous only if a rule names it, and after a challenge
                                         but on /v1/search); the handler lists only what the caller may pull
  blobs, manifests, tags, referrers      GET/HEAD pull; PUT and uploads push; DELETE delete
  /api/v1/repositories/<name>            GET pull, DELETE delete
  other /api/v1/ paths                   a login
  /v1/_ping, /auth/token, probes, /metrics   not ours
A cross-repository mount the caller may not pull from becomes a plain upload, as if no mount had been asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, urlencode

from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.auth.authenticator import Authenticator, AuthFailed, Caller, TooManyFailures
from registry.errors import ErrorCode, RegistryError
from registry.handlers import api_routes, blobs, listings, manifests, referrers, uploads
from registry.handlers.common import ACCESS_SCOPE_KEY, DRAIN_SECONDS

NeedKind = Literal["ping", "listing", "login", "repository"]
ACTIONS_BY_ENDPOINT = {
    uploads.start_upload: "push",
    uploads.patch_upload: "push",
    uploads.finish_upload: "push",
    uploads.upload_status: "push",
    uploads.cancel_upload: "push",
    blobs.get_blob: "pull",
    blobs.delete_blob: "delete",
    manifests.get_manifest: "pull",
    manifests.put_manifest: "push",
    manifests.delete_manifest: "delete",
    listings.list_tags: "pull",
    referrers.list_referrers: "pull",
}
CHALLENGE_ACTIONS = {"pull": "pull", "push": "pull,push", "delete": "delete"}
CATALOG_SCOPE = "registry:catalog:*"
SEARCH_SCOPE = "registry:catalog:search"
_API_REPOSITORY = re.compile(r"^/api/v1/repositories/(?P<name>.+)$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True, slots=True)
class Need:
    kind: NeedKind
    repository: str = ""
    action: str = ""
    scope: str = ""  # the scope a bearer challenge names
    route: Route | None = None  # for the access log and metrics of a refused request (the router never sees it)
    challenge_first: bool = True  # listings: challenge a request without credentials before showing anonymous's

    @classmethod
    def on(cls, repository: str, action: str, route: Route | None = None) -> Need:
        scope = f"repository:{repository}:{CHALLENGE_ACTIONS[action]}"
        return cls("repository", repository, action, scope, route)


PING = Need("ping")
LOGIN = Need("login")
CATALOG = Need("listing", scope=CATALOG_SCOPE)
SEARCH = Need("listing", scope=SEARCH_SCOPE)
# docker search sends credentials unasked when it has any, and cannot answer a challenge: no challenge there.
DOCKER_SEARCH = Need("listing", scope=SEARCH_SCOPE, challenge_first=False)


def _repository_routes() -> list[tuple[Route, frozenset[str], str]]:
    table = []
    for route in api_routes():
        if isinstance(route, Route) and route.endpoint in ACTIONS_BY_ENDPOINT:
            table.append((route, frozenset(route.methods or ()), ACTIONS_BY_ENDPOINT[route.endpoint]))
    return table


_REPOSITORY_ROUTES = _repository_routes()


def classify(method: str, path: str) -> Need | None:
    """What a request needs; None when auth is not this middleware's business (probes, /auth/token, ...)."""
    if path.startswith("/v2/"):
        if path == "/v2/":
            return PING
        if path == "/v2/_catalog":
            return CATALOG
        for route, methods, action in _REPOSITORY_ROUTES:
            if method in methods:
                match = route.path_regex.match(path)
                if match:
                    return Need.on(match["name"], action, route)
        return PING  # no such endpoint or method: the router answers, to a caller with a login
    if path.startswith("/api/v1/"):
        if path == "/api/v1/search":
            return SEARCH
        match = _API_REPOSITORY.match(path)
        if match and method in ("GET", "HEAD", "DELETE"):
            return Need.on(match["name"], "delete" if method == "DELETE" else "pull")
        return LOGIN
    if path == "/v1/search":
        return DOCKER_SEARCH
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AuthMiddleware:
    def __init__(self, app: ASGIApp, *, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator
        token = authenticator.settings.token
        self.external_realm = token.external.realm if token.external is not None else None
        self.realm = token.realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        need = classify(scope["method"], scope["path"])
        if need is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else ""
        try:
            caller = await self.auth.identify(_header(scope, b"authorization"), address)
        except TooManyFailures as e:
            error = RegistryError(
                ErrorCode.TOOMANYREQUESTS,
                message="too many failed logins: wait before trying again",
                headers={"Retry-After": str(e.retry_after)},
            )
            await self._refuse(scope, receive, send, need, error)
            return
        except AuthFailed as e:
            await self._refuse(scope, receive, send, need, self._challenge(scope, need, str(e), "invalid_token"))
            return
        scope["user_name"] = caller.identity.name
        refusal = self._check(scope, need, caller)
        if refusal is not None:
            await self._refuse(scope, receive, send, need, refusal)
            return
        scope[ACCESS_SCOPE_KEY] = caller.listing
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, need: Need, caller: Caller) -> RegistryError | None:
        identity = caller.identity
        if need.kind == "ping":
            ok = identity.authenticated or caller.bearer
        elif need.kind == "login":
            ok = identity.authenticated
        elif need.kind == "listing":
            # A request with no credentials at all is challenged first, so that a client holding some sends them
            # instead of getting anonymous's list; explicit anonymous (an anonymous token, skopeo's empty Basic
            # credentials) gets what anonymous may pull.
            asked_nothing = caller is self.auth.anonymous and need.challenge_first
            ok = identity.authenticated or caller.bearer or (self.auth.rules.anonymous_allowed and not asked_nothing)
        else:
            if not self.auth.may(caller, need.repository, need.action):
                if not identity.authenticated:
                    return self._challenge(scope, need, "authentication required")
                if caller.bearer and (
                    identity.kind == "external" or self.auth.rules_allow(identity, need.repository, need.action)
                ):
                    # The token does not carry it, a new one may (the rules allow it, or another issuer decides).
                    return self._challenge(scope, need, "the token does not grant this", "insufficient_scope")
                return RegistryError(
                    ErrorCode.DENIED,
                    detail=[{"Type": "repository", "Name": need.repository, "Action": need.action}],
                )
            if scope["method"] == "POST" and need.action == "push":
                self._drop_mount_without_pull(scope, caller)
            return None
        return None if ok else self._challenge(scope, need, "authentication required")

    def _drop_mount_without_pull(self, scope: Scope, caller: Caller) -> None:
        query = scope.get("query_string", b"")
        if b"mount=" not in query:
            return
        params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        source = next((value for key, value in params if key == "from"), "")
        if source and self.auth.may(caller, source, "pull"):
            return
        kept = [(key, value) for key, value in params if key not in ("mount", "from")]
        scope["query_string"] = urlencode(kept).encode("latin-1")

    def _token_realm(self, scope: Scope) -> str:
        if self.external_realm:
            return self.external_realm
        if self.realm:
            return self.realm
        host = _header(scope, b"host")
        if not host:
            server = scope.get("server")
            host = f"{server[0]}:{server[1]}" if server else "localhost"
        return f"{scope.get('scheme', 'http')}://{host}/auth/token"

    def _challenge(self, scope: Scope, need: Need, message: str, error: str | None = None) -> RegistryError:
        if self.auth.bearer_enabled:
            params = [
                f"realm={_quote(self._token_realm(scope))}",
                f"service={_quote(self.auth.settings.token.service)}",
            ]
            if need.scope:
                params.append(f"scope={_quote(need.scope)}")
            if error and (error != "invalid_token" or _header(scope, b"authorization")):
                params.append(f"error={_quote(error)}")
            challenge = "Bearer " + ",".join(params)
        else:
            challenge = f'Basic realm={_quote(self.auth.settings.realm)},charset="UTF-8"'
        detail = None
        if need.kind == "repository":
            detail = [{"Type": "repository", "Name": need.repository, "Action": need.action}]
        return RegistryError(
            ErrorCode.UNAUTHORIZED, detail=detail, message=message, headers={"WWW-Authenticate": challenge}
        )

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, need: Need, error: RegistryError) -> None:
        if need.route is not None:
            scope["route"] = need.route
            scope["path_params"] = {"name": need.repository}
        await _drain(scope, receive)
        body = b"" if scope["method"] == "HEAD" else json.dumps(error.body(), separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            *((key.lower().encode(), value.encode()) for key, value in error.headers.items()),
        ]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _drain(scope: Scope, receive: Receive) -> None:
    """Read what a `Connection: close` client is still sending before answering (see common.drain_unread_body)."""
    if scope["method"] not in _BODY_METHODS or "close" not in (_header(scope, b"connection") or "").lower():
        return
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(DRAIN_SECONDS):
            while True:
                message: Message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
