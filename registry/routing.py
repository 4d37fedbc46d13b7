"""Routes that declare the access they need, and the one check that runs after routing.

Every route of the app is an `ApiRoute` with an `Access` declaration: a function of the routed request (its
path parameters and the very query parameters the handler reads) to the `Need` the request must meet. The
check runs after the router matched, inside the route, before the handler, so auth and handler cannot disagree
on what was asked: there is one parse of the request, and the handler reads it too. A route without a
declaration stops the app from starting.

    Need kinds
      public      anyone (probes, `/v1/_ping`, the token service, which authenticates on its own)
      ping        `/v2/`: a login or any valid bearer token (clients take their challenge here)
      login       anyone logged in
      admin       an admin (`auth.admins`, `auth.admin_groups`): access rules, visibility, quotas, the audit log
      listing     catalog and search: anyone let in; the handler lists only what the caller may pull
      repository  `required` actions on repositories; `optional` ones are asked, not required (a mount's
                  source: without `pull` there, the mount becomes a plain upload)

Auth (registry/auth) implements `Guard` and never imports a handler; without auth the guard is absent and only
the read-only switch applies.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from registry.errors import ErrorCode, RegistryError
from registry.names import validate_name
from registry.store.events import Origin, set_origin

logger = logging.getLogger("moorage")
Action = Literal["pull", "push", "delete"]
NeedKind = Literal["public", "ping", "login", "admin", "listing", "repository"]
Endpoint = Callable[[Request], Awaitable[Response]]
GUARD_STATE = "guard"
GRANTED_SCOPE_KEY = "moorage.granted"
RIGHTS_SCOPE_KEY = "moorage.rights"
IDENTITY_SCOPE_KEY = "moorage.identity"  # the caller's Identity (registry.auth.access), set by the guard
LISTING_SCOPE_KEY = "moorage.listing"
SESSION_IDENTITY_SCOPE_KEY = "moorage.session_identity"  # set by an `identify` hook: the guard reads no header
_READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class RepositoryAccess:
    repository: str
    action: Action


@dataclass(frozen=True, slots=True)
class Need:
    kind: NeedKind
    required: tuple[RepositoryAccess, ...] = ()
    optional: tuple[RepositoryAccess, ...] = ()
    scope: str = ""  # the registry scope a bearer challenge names for listings
    challenge_first: bool = True  # listings: challenge a request without credentials before showing anonymous's

    @property
    def writes(self) -> bool:
        return any(access.action != "pull" for access in self.required)


Access = Callable[[Request], Need]


def on_repository(action: Action, *more: Action, key: str = "name") -> Access:
    """The declaration of a route acting on the repository named by its `{name}` path parameter, with every action
    it needs (a page that shows what it would delete needs `pull` as well as `delete`)."""
    actions = (action, *more)

    def need(request: Request) -> Need:
        name = validate_name(request.path_params[key])
        return Need("repository", tuple(RepositoryAccess(name, a) for a in actions))

    need.__qualname__ = f"on_repository({', '.join(map(repr, actions))})"
    return need


def constant(need: Need) -> Access:
    def access(request: Request) -> Need:
        return need

    access.__qualname__ = f"constant({need.kind!r})"
    return access


PUBLIC = constant(Need("public"))
PING = constant(Need("ping"))
LOGIN = constant(Need("login"))
ADMIN = constant(Need("admin"))
CATALOG = constant(Need("listing", scope="registry:catalog:*"))
SEARCH = constant(Need("listing", scope="registry:catalog:search"))
# docker search sends credentials unasked when it has any, and cannot answer a challenge: none there.
DOCKER_SEARCH = constant(Need("listing", scope="registry:catalog:search", challenge_first=False))


class Rights(Protocol):
    def allows(self, repository: str, action: str) -> bool:
        """Whether the caller may do `action` on `repository`."""


class Guard(Protocol):
    async def authorize(self, request: Request, need: Need) -> None:
        """Raise RegistryError (401, 403, 429) unless the caller meets `need`; record what `optional` granted."""


WRITE_BLOCKERS_STATE = "write_blockers"
"""The app.state attribute listing what may refuse writes for a while: each says why (None: writes may go ahead)."""
WriteBlocker = Callable[[], str | None]


WRITE_REFUSALS_STATE = "write_refusals"
"""The app.state attribute listing what may refuse a client's pushes and deletes to some repositories (a cache of
an upstream registry): each answers for one repository, with the error to send or None."""
WriteRefusal = Callable[[str], Awaitable[RegistryError | None]]


def write_blocked_error(reason: str) -> RegistryError:
    return RegistryError(
        ErrorCode.UNAVAILABLE,
        message="the registry cannot take pushes or deletes right now",
        detail=f"{reason}; pulls keep working",
        headers={"Retry-After": "5"},
    )


def read_only_error() -> RegistryError:
    return RegistryError(
        ErrorCode.UNAVAILABLE,
        message="the registry is in read-only mode",
        detail="maintenance.read_only is set: pushes and deletes are refused; pulls keep working",
        headers={"Retry-After": "300"},
    )


def granted(request: Request, repository: str, action: Action) -> bool:
    """Whether the check granted an `optional` access of this request (always, without auth)."""
    grants: frozenset[RepositoryAccess] | None = request.scope.get(GRANTED_SCOPE_KEY)
    return grants is None or RepositoryAccess(repository, action) in grants


def allowed(request: Request, repository: str, action: Action) -> bool:
    """Whether the caller may do `action` on `repository` (always, without auth): for handlers that choose among
    repositories the request did not name, such as a mount without `from`."""
    rights: Rights | None = request.scope.get(RIGHTS_SCOPE_KEY)
    return rights is None or rights.allows(repository, action)


def unrestricted(request: Request) -> bool:
    """Whether the caller may do anything anywhere (a registry without auth)."""
    return request.scope.get(RIGHTS_SCOPE_KEY) is None


def origin_of(request: Request) -> Origin:
    client = request.client
    server = request.scope.get("server") or ("", 0)
    return Origin(
        actor=request.scope.get("user_name", ""),
        request_id=request.scope.get("request_id", ""),
        address=f"{client.host}:{client.port}" if client else "",
        host=request.headers.get("host", ""),
        method=request.method,
        user_agent=request.headers.get("user-agent", ""),
        base_url=str(request.base_url),
        server_port=server[1] or 0,
    )


class ApiRoute(Route):
    """A route with its access declaration; the handler runs only once the declared need is met.

    Two optional hooks serve routes that are not the API's (the UI's pages): `identify` runs before the check and
    may name the caller from something other than the `Authorization` header (it sets SESSION_IDENTITY_SCOPE_KEY,
    which the guard then takes instead of the header); `errors` renders the refusals and errors of the check and of
    the handler (HTML pages instead of the API's JSON)."""

    def __init__(
        self,
        path: str,
        endpoint: Endpoint,
        *,
        methods: Sequence[str],
        access: Access,
        identify: Callable[[Request], Awaitable[None]] | None = None,
        errors: Callable[[Request, RegistryError], Awaitable[Response]] | None = None,
    ) -> None:
        self.access = access
        self.handler = endpoint
        self.identify = identify

        async def guarded(request: Request) -> Response:
            if identify is not None:
                await identify(request)
            need = access(request)
            state = request.app.state
            if need.writes and request.method not in _READ_METHODS:
                if state.settings.maintenance.read_only:
                    raise read_only_error()
                blockers: list[WriteBlocker] = getattr(state, WRITE_BLOCKERS_STATE, [])
                for blocker in blockers:
                    if (reason := blocker()) is not None:
                        raise write_blocked_error(reason)
            guard: Guard | None = getattr(state, GUARD_STATE, None)
            if guard is not None and need.kind != "public":
                await guard.authorize(request, need)
            if need.writes and request.method not in _READ_METHODS:
                # After the check: whom the registry does not let in learns nothing of which names are caches.
                refusals: list[WriteRefusal] = getattr(state, WRITE_REFUSALS_STATE, [])
                for refusal in refusals:
                    for wanted in need.required:
                        if wanted.action != "pull" and (error := await refusal(wanted.repository)) is not None:
                            raise error
            set_origin(origin_of(request))  # who the store's events name (registry/store/events.py)
            return await endpoint(request)

        async def checked(request: Request) -> Response:
            if errors is None:
                return await guarded(request)
            try:
                return await guarded(request)
            except RegistryError as e:
                return await errors(request, e)
            except Exception:
                # A bug: logged in full, answered as a page of the route's kind rather than the API's JSON.
                logger.exception("unexpected error on %s %s", request.method, request.url.path)
                return await errors(request, RegistryError(ErrorCode.UNKNOWN, message="an unexpected error occurred"))

        checked.__name__ = endpoint.__name__
        checked.__qualname__ = endpoint.__qualname__
        super().__init__(path, checked, methods=list(methods))
        self.errors = errors

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.errors is not None and self.methods and scope["method"] not in self.methods:
            # A method the path does not take, answered by the route's own renderer (the API's is JSON).
            allow = ", ".join(sorted(self.methods))
            error = RegistryError(
                ErrorCode.UNSUPPORTED, message="method not allowed", status=405, headers={"Allow": allow}
            )
            response = await self.errors(Request(scope, receive), error)
            response.headers["Allow"] = allow
            await response(scope, receive, send)
            return
        await super().handle(scope, receive, send)


class UndeclaredRoute(Exception):
    """A route that says nothing of the access it needs: the app refuses to start."""


def check_declared(routes: Sequence[BaseRoute]) -> None:
    for route in routes:
        if not isinstance(route, ApiRoute) or not callable(getattr(route, "access", None)):
            path = getattr(route, "path", repr(route))
            raise UndeclaredRoute(f"route {path} declares no access (use registry.routing.ApiRoute)")
