"""The UI's pages: each a route that declares its access like the API's (registry/routing.py), with the caller
named by the UI session instead of an `Authorization` header, and errors rendered as pages.

    /ui/                                   repositories: search, sort, pages
    /ui/r/NAME                             a repository: tags, pull commands, description, labels
    /ui/r/NAME/-/images/DIGEST             an image or index: platforms, layers, config, history, referrers
    /ui/r/NAME/-/tags/TAG/delete           confirm, then delete a tag (POST)
    /ui/storage                            logical and physical bytes, dedup, largest repositories, GC (POST: dry run)
    /ui/login, /ui/logout                  sign-in (POST) and sign-out (POST)

(`-` can never be a component of a repository name, so these paths cannot be mistaken for one another.)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute
from starlette.templating import Jinja2Templates

from registry import paths
from registry.auth.access import ANONYMOUS_IDENTITY, Identity
from registry.auth.authenticator import Authenticator, AuthFailed, TooManyFailures
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.gc.collector import GcOptions
from registry.gc.modes import collector, database_driven
from registry.handlers.common import cached_origins, index_of, pull_filter, registry_of, repository_name
from registry.index.base import BROWSE_ORDERS, BrowseOrder, IndexUnavailable, InvalidCursor, MetadataIndex
from registry.index.query import parse_query
from registry.names import validate_tag
from registry.routing import (
    LOGIN,
    PUBLIC,
    SESSION_IDENTITY_SCOPE_KEY,
    Access,
    ApiRoute,
    Endpoint,
    Need,
    allowed,
    constant,
    on_repository,
    unrestricted,
)
from registry.settings import Settings
from registry.store.registry import Registry
from registry.ui.images import image_view
from registry.ui.sessions import COOKIE_PATH, CSRF_COOKIE, SESSION_COOKIE, Session, Sessions, new_secret, well_formed
from registry.ui.static import static_file
from storage_backends import PathNotFound

UI_STATE = "ui"
UI_REQUEST_KEY = "moorage.ui"
MAX_FORM_BYTES = 8192
MAX_FORM_FIELDS = 16
CHART_REPOSITORIES = 12
LARGEST_REPOSITORIES = 50
TAGS_PER_PAGE = 50
_PAGE_NUMBER = re.compile(r"[0-9]{1,7}")
# The UI lists what the caller may pull; without a rule for anonymous, signing in comes first.
UI_LISTING = constant(Need("listing", scope="registry:catalog:search", challenge_first=False))
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
ORDER_LABELS: dict[BrowseOrder, str] = {
    "relevance": "Best match",
    "name": "Name",
    "pushed": "Last push",
    "pulls": "Pulls",
    "size": "Size",
    "tags": "Tags",
}


@dataclass(slots=True)
class UiRequest:
    """What the UI learned of a request before its access check."""

    session: Session | None
    secret: str | None  # the session cookie's secret, when it names a live session
    expired: bool  # a session cookie came, but names no live session
    nonce: str  # the pre-sign-in CSRF nonce (from its cookie, or new: then set on the answer)
    new_nonce: bool
    form: dict[str, str]


class UiState:
    """The UI's share of the app: templates, sessions, and what it needs of auth and GC."""

    def __init__(self, settings: Settings, registry: Registry, templates: Jinja2Templates) -> None:
        self.settings = settings
        self.registry = registry
        self.templates = templates
        self.sessions = Sessions(registry.backend, settings.ui.session_ttl)
        self.auth: Authenticator | None = None


def ui_of(request: Request) -> UiState:
    state: UiState = getattr(request.app.state, UI_STATE)
    return state


def ui_request(request: Request) -> UiRequest:
    found: UiRequest = request.scope[UI_REQUEST_KEY]
    return found


# The hooks every UI route runs: who the caller is (before the access check), and errors as pages.


async def identify(request: Request) -> None:
    ui = ui_of(request)
    secret = request.cookies.get(SESSION_COOKIE)
    session = await ui.sessions.get(secret) if ui.auth is not None and secret else None
    htpasswd = ui.auth.htpasswd if ui.auth is not None else None
    if (
        session is not None
        and session.source == "htpasswd"
        and htpasswd is not None
        and not htpasswd.has_user(session.user)
    ):
        session = None  # removed from the htpasswd file since signing in (seen within a second)
    if session is not None and ui.auth is not None and not await _name_still_theirs(ui.auth, session):
        session = None  # the name now belongs to a user of another source: not this session's any more
    if session is not None and session.source == "ldap" and ui.auth is not None and ui.auth.directory is not None:
        # A directory user's groups as the directory has them now (asked at most every auth.cache_ttl).
        try:
            found = await ui.auth.directory_lookup(session.user)
        except RegistryError:
            pass  # the directory cannot answer: the groups of the sign-in hold meanwhile
        else:
            session = None if found is None else dataclasses.replace(session, groups=tuple(sorted(found.groups)))
    nonce = request.cookies.get(CSRF_COOKIE)
    new_nonce = not well_formed(nonce)
    if new_nonce:
        nonce = new_secret()
    assert nonce is not None
    state = UiRequest(session, secret if session else None, bool(secret) and session is None, nonce, new_nonce, {})
    request.scope[UI_REQUEST_KEY] = state
    if ui.auth is not None:
        identity = session_identity(session) if session is not None else ANONYMOUS_IDENTITY
        request.scope[SESSION_IDENTITY_SCOPE_KEY] = identity
    if request.method == "POST":
        _check_origin(request)
        state.form = await read_form(request)
        bound = state.secret if state.session is not None else (None if new_nonce else nonce)
        if not ui.sessions.csrf_valid(bound, state.form.get("csrf")):
            raise RegistryError(
                ErrorCode.DENIED,
                message="this form's security token is missing, wrong or expired: reload the page and try again",
                detail="CSRF token refused",
            )


async def _name_still_theirs(auth: Authenticator, session: Session) -> bool:
    """A directory's or an identity provider's session whose name the htpasswd file (or, for the identity provider's,
    the directory) has since taken ends; so does a directory's session once no directory is configured."""
    if session.source == "htpasswd":
        return True
    if auth.htpasswd is not None and auth.htpasswd.has_user(session.user):
        return False
    if session.source == "ldap":
        return auth.directory is not None
    try:
        return not await auth.directory_holds(session.user)
    except RegistryError:
        return True  # the directory cannot say: the session goes on meanwhile


def _check_origin(request: Request) -> None:
    """A browser names the page a POST comes from: another site's is refused before the form is read."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise RegistryError(ErrorCode.DENIED, message="cross-site form submissions are refused")
    origin = request.headers.get("origin")
    if origin is not None:
        parts = urllib.parse.urlsplit(origin)
        if parts.netloc != request.headers.get("host", "") or parts.scheme != request.url.scheme:
            raise RegistryError(ErrorCode.DENIED, message="cross-site form submissions are refused")


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded form, each field at most once (a repeated field is refused, never guessed)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise RegistryError(ErrorCode.SIZE_INVALID, message="the form is too large", status=413)
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if body and content_type != "application/x-www-form-urlencoded":
        raise RegistryError(
            ErrorCode.UNSUPPORTED, message="forms must be application/x-www-form-urlencoded", status=415
        )
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FORM_FIELDS,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        raise RegistryError(ErrorCode.REQUEST_INVALID, message="the form could not be read") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise RegistryError(ErrorCode.REQUEST_INVALID, message=f"the form field {key[:40]!r} is given twice")
        form[key] = value
    return form


def _hide_denial(request: Request, error: RegistryError) -> RegistryError:
    """A repository the caller may not pull is reported as one that does not exist: pages never tell them apart."""
    if error.code is ErrorCode.DENIED and request.method == "GET" and request.scope.get("moorage.ui.hide_denied"):
        name = request.path_params.get("name", "")
        return RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": name})
    return error


async def error_page(request: Request, error: RegistryError) -> Response:
    error = _hide_denial(request, error)
    state: UiRequest | None = request.scope.get(UI_REQUEST_KEY)
    if error.status == 401:
        query = {"next": _local_path(request)}
        if state is not None and state.expired:
            query["expired"] = "1"
        response: Response = RedirectResponse("/ui/login?" + urllib.parse.urlencode(query), status_code=303)
        if state is not None and state.expired:
            response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
        return _secured(request, response)
    titles = {
        401: "Sign-in needed",
        403: "Not allowed",
        404: "Not found",
        405: "Not allowed here",
        409: "Changed meanwhile",
        429: "Too many attempts",
        503: "Unavailable",
    }
    context = {
        "title": titles.get(error.status, "Error"),
        "status": error.status,
        "code": error.code.name,
        "message": error.message,
        "detail": _detail_text(error.detail),
    }
    headers = {k: v for k, v in error.headers.items() if k.lower() == "retry-after"}
    return render(request, "error.html", context, status=error.status, headers=headers)


def _detail_text(detail: object) -> str:
    if detail is None:
        return ""
    if isinstance(detail, str):
        return detail
    return json.dumps(detail, sort_keys=True)


def _local_path(request: Request) -> str:
    path = request.url.path
    return path + ("?" + request.url.query if request.url.query and request.method == "GET" else "")


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a UI path of this registry, never another site."""
    if not value or not value.startswith("/ui/") or "\\" in value or value.startswith("//"):
        return "/ui/"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/ui/"
    return value


# Rendering.


def _secured(request: Request, response: Response) -> Response:
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    state: UiRequest | None = request.scope.get(UI_REQUEST_KEY)
    if state is not None and state.new_nonce:
        _set_cookie(request, response, CSRF_COOKIE, state.nonce, max_age=None)
    return response


def _set_cookie(request: Request, response: Response, key: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        key,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    ui = ui_of(request)
    state: UiRequest | None = request.scope.get(UI_REQUEST_KEY)
    session = state.session if state is not None else None
    bound = (state.secret if session is not None else state.nonce) if state is not None else None
    base = {
        "user": session.user if session is not None else None,
        "auth_on": ui.auth is not None,
        "csrf": ui.sessions.csrf_token(bound) if bound else "",
        "operator": is_operator(request),
        "host": request.headers.get("host") or request.url.netloc,
        "oidc_name": _oidc_name(request),
    }
    response = ui.templates.TemplateResponse(
        request, template, {**base, **context}, status_code=status, headers=headers
    )
    return _secured(request, response)


def _oidc_name(request: Request) -> str | None:
    auth = ui_of(request).auth
    oidc = auth.settings.oidc if auth is not None else None
    return oidc.display_name if oidc is not None else None


def is_operator(request: Request) -> bool:
    ui = ui_of(request)
    if ui.auth is None:
        return True  # laptop mode: whoever reaches the registry runs it
    state: UiRequest | None = request.scope.get(UI_REQUEST_KEY)
    if state is None or state.session is None:
        return False
    return ui.auth.is_admin(session_identity(state.session))


def _usable_index(request: Request) -> MetadataIndex:
    index = index_of(request)
    if index is None:
        raise RegistryError(
            ErrorCode.UNAVAILABLE, message="the UI needs the metadata index, which is off here (index.enabled)"
        )
    if not index.ready:
        raise RegistryError(
            ErrorCode.UNAVAILABLE,
            message="the metadata index is being built from storage; this page will be ready shortly",
            headers={"Retry-After": "5"},
        )
    return index


def _index_failed() -> RegistryError:
    return RegistryError(
        ErrorCode.UNAVAILABLE, message="the metadata index cannot answer right now", headers={"Retry-After": "5"}
    )


def _one(request: Request, key: str) -> str | None:
    values = request.query_params.getlist(key)
    if len(values) > 1:
        raise RegistryError(ErrorCode.REQUEST_INVALID, message=f"the parameter {key!r} is given more than once")
    return values[0] if values else None


# Pages.


async def repositories(request: Request) -> Response:
    ui = ui_of(request)
    q = (_one(request, "q") or "").strip()
    query = parse_query(q)
    requested = _one(request, "sort") or ""
    order: BrowseOrder
    if requested in BROWSE_ORDERS and (requested != "relevance" or query.terms):
        order = requested
    else:
        order = "relevance" if query.terms else "name"
    index = _usable_index(request)
    try:
        page = await index.browse(query, order, _one(request, "after"), ui.settings.ui.page_size, pull_filter(request))
    except InvalidCursor:
        raise RegistryError(
            ErrorCode.PAGINATION_NUMBER_INVALID, message="this page link is not valid any more"
        ) from None
    except IndexUnavailable:
        raise _index_failed() from None
    orders = [o for o in BROWSE_ORDERS if o != "relevance" or query.terms]

    def link(**changes: str | None) -> str:
        params = {"q": q or None, "sort": order if order != ("relevance" if query.terms else "name") else None}
        params.update(changes)
        kept = {k: v for k, v in params.items() if v}
        return "/ui/" + ("?" + urllib.parse.urlencode(kept) if kept else "")

    context = {
        "title": "Repositories",
        "q": q,
        "order": order,
        "orders": [(o, ORDER_LABELS[o], link(sort=o, after=None)) for o in orders],
        "rows": page.rows,
        "origins": await cached_origins(request, [row.name for row in page.rows]),
        "next_link": link(after=page.next_cursor) if page.next_cursor else None,
        "first_link": link(after=None) if _one(request, "after") else None,
    }
    return render(request, "repositories.html", context)


async def repository(request: Request) -> Response:
    name = repository_name(request)
    registry = registry_of(request)
    try:
        summary = await _usable_index(request).repository(name)
    except IndexUnavailable:
        raise _index_failed() from None
    if summary is None:
        raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": name})
    may_delete = allowed(request, name, "delete") and registry.delete_enabled
    page = _page_number(request)
    newest_first = sorted(summary.tags, key=lambda t: (-t.pushed_at, t.tag))
    shown = newest_first[(page - 1) * TAGS_PER_PAGE : page * TAGS_PER_PAGE]
    tags = [{"summary": tag, "immutable": registry.tags.protecting_rule(name, tag.tag)} for tag in shown]
    latest = max(summary.tags, key=lambda t: (t.tag == "latest", t.pushed_at), default=None)
    labels = dict(latest.manifest.labels) if latest is not None else {}
    source = labels.get("org.opencontainers.image.source") or labels.get("org.opencontainers.image.url") or ""
    context = {
        "title": name,
        "name": name,
        "summary": summary,
        "tags": tags,
        "example_tag": latest.tag if latest is not None else "latest",
        "labels": sorted(labels.items()),
        "source": source if source.startswith(("https://", "http://")) else "",
        "may_delete": may_delete,
        "deleted": _one(request, "deleted"),
        "tag_page": page,
        "tag_pages": max(1, -(-len(summary.tags) // TAGS_PER_PAGE)),
        "cached_from": (await cached_origins(request, [name])).get(name),
    }
    return render(request, "repository.html", context)


def _page_number(request: Request) -> int:
    raw = _one(request, "page") or "1"
    if not _PAGE_NUMBER.fullmatch(raw) or not 1 <= int(raw) <= 1_000_000:
        raise RegistryError(ErrorCode.PAGINATION_NUMBER_INVALID, message="page must be a whole number from 1")
    return int(raw)


async def image(request: Request) -> Response:
    name = repository_name(request)
    digest = request.path_params["digest"]
    view = await image_view(registry_of(request), index_of(request), name, digest, pull_filter(request))
    context = {"title": f"{name}@{view.digest[:19]}", "name": name, "image": view}
    return render(request, "image.html", context)


async def confirm_delete(request: Request) -> Response:
    name, tag = repository_name(request), validate_tag(request.path_params["tag"])
    registry = registry_of(request)
    digest = await registry.tags.resolve(name, tag)
    rule = registry.tags.protecting_rule(name, tag)
    context = {"title": f"Delete {name}:{tag}", "name": name, "tag": tag, "digest": str(digest), "immutable": rule}
    return render(request, "confirm_delete.html", context, status=200 if rule is None else 403)


async def delete_tag(request: Request) -> Response:
    name, tag = repository_name(request), validate_tag(request.path_params["tag"])
    registry = registry_of(request)
    if not registry.delete_enabled:
        raise RegistryError(ErrorCode.UNSUPPORTED, message="deletes are disabled on this registry (storage.delete)")
    rule = registry.tags.protecting_rule(name, tag)
    if rule is not None:
        digest = await registry.tags.resolve(name, tag)
        context = {"title": f"Delete {name}:{tag}", "name": name, "tag": tag, "digest": str(digest), "immutable": rule}
        return render(request, "confirm_delete.html", context, status=403)
    # The image the person confirmed, not whatever the tag names by now.
    confirmed = Digest.parse(ui_request(request).form.get("digest", ""))
    if not await registry.tags.delete_if_current(name, tag, confirmed):
        await registry.tags.resolve(name, tag)  # gone meanwhile: MANIFEST_UNKNOWN, a 404 page
        raise RegistryError(
            ErrorCode.DENIED,
            status=409,
            message=f"the tag {tag} was moved to another image since you confirmed: nothing was deleted",
            detail={"name": name, "tag": tag, "confirmed": str(confirmed)},
        )
    target = f"/ui/r/{name}?" + urllib.parse.urlencode({"deleted": tag})
    return _secured(request, RedirectResponse(target, status_code=303))


async def storage(request: Request) -> Response:
    visible = None if unrestricted(request) or is_operator(request) else pull_filter(request)
    try:
        usage = await _usable_index(request).usage(visible, LARGEST_REPOSITORIES)
    except IndexUnavailable:
        raise _index_failed() from None
    top = usage.largest[:CHART_REPOSITORIES]
    scale = max((r.logical_bytes for r in top), default=0) or 1
    context = {
        "title": "Storage",
        "usage": usage,
        "largest": usage.largest,
        "chart": [(r, r.logical_bytes * 100 / scale) for r in top],
        "total_scale": max(usage.logical_bytes, 1),
        "last_gc": await _last_gc(registry_of(request)) if visible is None else None,
        "quotas": _quotas_of(request, [r.name for r in usage.largest]),
        "quota_warning": ui_of(request).settings.policy.quota_warning,
    }
    return render(request, "storage.html", context)


def _quotas_of(request: Request, names: list[str]) -> dict[str, tuple[int]]:
    """name -> (quota,) for those of `names` that have one."""
    quotas = getattr(request.app.state, "quotas", None)
    if quotas is None:
        return {}
    limits = {name: quotas.limit_of(name) for name in names}
    return {name: (limit,) for name, limit in limits.items() if limit is not None}


async def gc_dry_run(request: Request) -> Response:
    if not is_operator(request):
        raise RegistryError(ErrorCode.DENIED, message="only the registry's admins (auth.admins) may run GC")
    settings = ui_of(request).settings
    options = GcOptions.of(settings, dry_run=True)
    # The collection GC's schedule runs: from the database (milliseconds), or the mark over storage (which takes
    # minutes on a large registry: that mode's dry run belongs to `moorage gc --dry-run`, not to a page).
    index = getattr(request.app.state, "index", None)
    database = database_driven(settings) and index is not None
    try:
        report = await collector(registry_of(request), index, options, database)()
    except IndexUnavailable as e:
        raise RegistryError(ErrorCode.UNAVAILABLE, message="GC cannot read the database yet", detail=str(e)) from None
    context = {"title": "GC dry run", "report": report.as_dict()}
    return render(request, "gc_report.html", context)


async def _last_gc(registry: Registry) -> dict[str, Any] | None:
    try:
        data = await registry.backend.get_content(paths.GC_LAST_REPORT)
    except PathNotFound:
        return None
    try:
        body = json.loads(data)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def login_form(request: Request) -> Response:
    ui = ui_of(request)
    if ui.auth is None:
        return _secured(request, RedirectResponse(safe_next(_one(request, "next")), status_code=303))
    context = {
        "title": "Sign in",
        "next": safe_next(_one(request, "next")),
        "expired": _one(request, "expired") == "1",
        "signed_out": _one(request, "signed_out") == "1",
        "error": None,
        "username": "",
    }
    return render(request, "login.html", context)


async def login(request: Request) -> Response:
    ui = ui_of(request)
    state = ui_request(request)
    form = state.form
    target = safe_next(form.get("next"))
    if ui.auth is None:
        return _secured(request, RedirectResponse(target, status_code=303))
    username, password = form.get("username", ""), form.get("password", "")
    client = request.client
    status, error, headers = 401, "Wrong user name or password.", None
    try:
        identity = await ui.auth.login(username, password, client.host if client else "")
    except TooManyFailures as e:
        status, error = 429, f"Too many failed sign-ins: wait {e.retry_after} s and try again."
        headers = {"Retry-After": str(e.retry_after)}
    except AuthFailed:
        pass
    else:
        if identity.kind == "user" and not identity.token_id:
            htpasswd = ui.auth.htpasswd
            source = "htpasswd" if htpasswd is not None and htpasswd.has_user(identity.name) else "ldap"
            return await _signed_in(request, identity, source, target)
        error = "Tokens are for clients and pipelines: sign in with your own user name and password."
    context = {
        "title": "Sign in",
        "next": target,
        "expired": False,
        "signed_out": False,
        "error": error,
        "username": username[:200],
    }
    return render(request, "login.html", context, status=status, headers=headers)


async def _signed_in(request: Request, identity: Identity, source: str, target: str, *, page: bool = False) -> Response:
    """A new session (never a cookie kept from before sign-in) and the way on. `page`: after a redirect from another
    site (an identity provider), a page that moves on by itself, so that the browser sends the new SameSite=Strict
    cookie with the next request (a redirect would still count as that site's navigation)."""
    ui = ui_of(request)
    await ui.sessions.end(request.cookies.get(SESSION_COOKIE))
    secret, session = await ui.sessions.create(identity.name, identity.groups, source)
    if page:
        response: Response = render(request, "signed_in.html", {"title": "Signed in", "next": target})
    else:
        response = RedirectResponse(target, status_code=303)
    _set_cookie(request, response, SESSION_COOKIE, secret, max_age=int(session.expires - session.created))
    return _secured(request, response)


def session_identity(session: Session) -> Identity:
    return Identity("user", session.user, groups=frozenset(session.groups), source=session.source)


async def logout(request: Request) -> Response:
    ui = ui_of(request)
    await ui.sessions.end(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/ui/login?signed_out=1" if ui.auth is not None else "/ui/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return _secured(request, response)


async def static(request: Request) -> Response:
    return static_file(request.path_params["file"], request.headers.get("if-none-match"))


async def to_ui(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=307)


def _hiding(access: Access) -> Access:
    """`access`, marking the request so that a denial renders as "not found"."""

    def need(request: Request) -> Need:
        request.scope["moorage.ui.hide_denied"] = True
        return access(request)

    need.__qualname__ = f"hiding({access.__qualname__})"
    return need


def _page(path: str, endpoint: Endpoint, methods: list[str], access: Access) -> ApiRoute:
    return ApiRoute(path, endpoint, methods=methods, access=access, identify=identify, errors=error_page)


def routes() -> list[BaseRoute]:
    repo = "/ui/r/{name:path}"
    pull = _hiding(on_repository("pull"))
    return [
        ApiRoute("/", to_ui, methods=["GET"], access=PUBLIC),
        ApiRoute("/ui", to_ui, methods=["GET"], access=PUBLIC),
        ApiRoute("/ui/static/{file}", static, methods=["GET", "HEAD"], access=PUBLIC),
        _page("/ui/", repositories, ["GET"], UI_LISTING),
        _page("/ui/login", login_form, ["GET"], PUBLIC),
        _page("/ui/login", login, ["POST"], PUBLIC),
        _page("/ui/logout", logout, ["POST"], PUBLIC),
        _page("/ui/storage", storage, ["GET"], UI_LISTING),
        _page("/ui/storage/gc", gc_dry_run, ["POST"], LOGIN),
        _page(repo + "/-/images/{digest}", image, ["GET"], pull),
        # Both show the tag's digest (the page, and the refusal of an immutable tag): they need `pull` too, as the
        # API does to read a tag. The refusal depends on the rules alone, never on whether the tag exists.
        _page(repo + "/-/tags/{tag}/delete", confirm_delete, ["GET"], on_repository("pull", "delete")),
        _page(repo + "/-/tags/{tag}/delete", delete_tag, ["POST"], on_repository("pull", "delete")),
        _page(repo, repository, ["GET"], pull),
    ]


def template_filters() -> dict[str, Any]:
    def size(count: int | None) -> str:
        if count is None:
            return ""
        value = float(count)
        for unit in ("B", "KB", "MB", "GB", "TB"):
            if value < 1000 or unit == "TB":
                return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1000
        return ""

    def when(seconds: float | None) -> str:
        if not seconds:
            return ""
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    def ago(seconds: float | None) -> str:
        if not seconds:
            return "never"
        delta = max(time.time() - seconds, 0)
        for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if delta >= length:
                n = int(delta // length)
                return f"{n} {unit}{'s' if n > 1 else ''} ago"
        return "just now"

    def short(digest: str) -> str:
        algorithm, _, hex_part = digest.partition(":")
        return f"{algorithm}:{hex_part[:12]}" if hex_part else digest

    return {"size": size, "when": when, "ago": ago, "short": short, "quote": urllib.parse.quote}
