"""The access check after routing (`registry.routing.Guard`): who is calling, and whether the route's declared
need is met. Refusals are RegistryErrors (401 with a challenge, 403 DENIED, 429), rendered by the app's one
error handler.

    ping        a login, or any valid bearer token (clients take their challenges from `/v2/`)
    login       an authenticated caller
    admin       an authenticated caller `auth.admins` or `auth.admin_groups` names (others: 403)
    listing     a login or any valid bearer token (an anonymous token included: it lists what anonymous may
                pull, nothing when no rule names anonymous); without credentials, only if a rule names anonymous
                and after a challenge unless the route says not to. The handler lists only what the caller may
                pull
    repository  every `required` action; each `optional` one is granted or not, never refused
"""

from __future__ import annotations

from starlette.requests import Request

from registry.auth.access import ListingView
from registry.auth.authenticator import Authenticator, AuthFailed, Caller, TooManyFailures
from registry.errors import ErrorCode, RegistryError
from registry.routing import (
    GRANTED_SCOPE_KEY,
    IDENTITY_SCOPE_KEY,
    LISTING_SCOPE_KEY,
    RIGHTS_SCOPE_KEY,
    SESSION_IDENTITY_SCOPE_KEY,
    Need,
    RepositoryAccess,
)

CHALLENGE_ACTIONS = {"pull": "pull", "push": "pull,push", "delete": "delete"}
CATALOG_SCOPE = "registry:catalog:*"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge_scope(need: Need) -> str:
    """The scope a bearer challenge names: what the route needs, and what it would like (a mount's source)."""
    if need.kind != "repository":
        return need.scope
    actions: dict[str, set[str]] = {}
    for access in (*need.required, *need.optional):
        actions.setdefault(access.repository, set()).update(CHALLENGE_ACTIONS[access.action].split(","))
    order = ("pull", "push", "delete")
    return " ".join(
        f"repository:{repository}:{','.join(a for a in order if a in wanted)}" for repository, wanted in actions.items()
    )


class CallerRights:
    """What a caller may do (`registry.routing.Rights`), for handlers that choose repositories themselves."""

    __slots__ = ("auth", "caller")

    def __init__(self, auth: Authenticator, caller: Caller) -> None:
        self.auth = auth
        self.caller = caller

    def allows(self, repository: str, action: str) -> bool:
        return self.auth.may(self.caller, repository, action)


class AccessGuard:
    def __init__(self, authenticator: Authenticator) -> None:
        self.auth = authenticator
        token = authenticator.settings.token
        self.external_realm = token.external.realm if token.external is not None else None
        self.realm = token.realm

    async def authorize(self, request: Request, need: Need) -> None:
        scope = request.scope
        client = scope.get("client")
        address = client[0] if client else ""
        authorization = request.headers.get("authorization")
        try:
            session_identity = scope.get(SESSION_IDENTITY_SCOPE_KEY)
            if session_identity is not None:  # a UI page: its session, never a header (registry/ui/sessions.py)
                caller = self.auth.caller_of(session_identity)
            else:
                caller = await self.auth.identify(authorization, address)
        except TooManyFailures as e:
            raise RegistryError(
                ErrorCode.TOOMANYREQUESTS,
                message="too many failed logins: wait before trying again",
                headers={"Retry-After": str(e.retry_after)},
            ) from None
        except AuthFailed as e:
            raise self._challenge(request, need, str(e), "invalid_token") from None
        scope["user_name"] = caller.identity.name
        scope[IDENTITY_SCOPE_KEY] = caller.identity
        listing = caller.listing
        if isinstance(listing, ListingView) and need.scope != CATALOG_SCOPE and caller.claims is not None:
            # An issuer's catalog grant lists every name in `/v2/_catalog` (as Distribution does), no more: search
            # and stats, which show tags, digests and sizes, show only what the token may pull.
            listing = caller.claims
        scope[LISTING_SCOPE_KEY] = listing
        scope[RIGHTS_SCOPE_KEY] = CallerRights(self.auth, caller)
        if need.kind == "repository":
            for access in need.required:
                self._require(request, need, caller, access)
            scope[GRANTED_SCOPE_KEY] = frozenset(
                access for access in need.optional if self.auth.may(caller, access.repository, access.action)
            )
            return
        identity = caller.identity
        if need.kind == "ping":
            ok = identity.authenticated or caller.bearer
        elif need.kind == "login":
            ok = identity.authenticated
        elif need.kind == "admin":
            if identity.authenticated and not self.auth.is_admin(identity):
                raise RegistryError(ErrorCode.DENIED, message="only the registry's admins may do this")
            ok = identity.authenticated
        else:
            # A request with no credentials at all is challenged first, so that a client holding some sends them
            # instead of getting anonymous's list; explicit anonymous (an anonymous token, skopeo's empty Basic
            # credentials) gets what anonymous may pull.
            asked_nothing = caller is self.auth.anonymous and need.challenge_first
            ok = identity.authenticated or caller.bearer or (self.auth.rules.anonymous_allowed and not asked_nothing)
        if not ok:
            raise self._challenge(request, need, "authentication required")

    def _require(self, request: Request, need: Need, caller: Caller, access: RepositoryAccess) -> None:
        if self.auth.may(caller, access.repository, access.action):
            return
        identity = caller.identity
        detail = [{"Type": "repository", "Name": access.repository, "Action": access.action}]
        if not identity.authenticated:
            raise self._challenge(request, need, "authentication required", detail=detail)
        if caller.bearer and (
            identity.kind == "external" or self.auth.rules_allow(identity, access.repository, access.action)
        ):
            # The token does not carry it, a new one may (the rules allow it, or another issuer decides).
            raise self._challenge(request, need, "the token does not grant this", "insufficient_scope", detail)
        raise RegistryError(ErrorCode.DENIED, detail=detail)

    def _token_realm(self, request: Request) -> str:
        if self.external_realm:
            return self.external_realm
        if self.realm:
            return self.realm
        host = request.headers.get("host")
        if not host:
            server = request.scope.get("server")
            host = f"{server[0]}:{server[1]}" if server else "localhost"
        return f"{request.url.scheme}://{host}/auth/token"

    def _challenge(
        self, request: Request, need: Need, message: str, error: str | None = None, detail: object = None
    ) -> RegistryError:
        if self.auth.bearer_enabled:
            params = [
                f"realm={_quote(self._token_realm(request))}",
                f"service={_quote(self.auth.settings.token.service)}",
            ]
            scope = challenge_scope(need)
            if scope:
                params.append(f"scope={_quote(scope)}")
            if error and (error != "invalid_token" or request.headers.get("authorization")):
                params.append(f"error={_quote(error)}")
            challenge = "Bearer " + ",".join(params)
        else:
            challenge = f'Basic realm={_quote(self.auth.settings.realm)},charset="UTF-8"'
        if detail is None and need.kind == "repository":
            detail = [{"Type": "repository", "Name": a.repository, "Action": a.action} for a in need.required]
        return RegistryError(
            ErrorCode.UNAUTHORIZED, detail=detail, message=message, headers={"WWW-Authenticate": challenge}
        )
