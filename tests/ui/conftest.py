"""UI tests: an in-process app (as the API tests use), browsed with httpx keeping cookies like a browser."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from registry.app import create_app
from tests.api.conftest import make_settings
from tests.auth.test_htpasswd import bcrypt_entry

PASSWORD = "a-long-password"
USERS = ("alice", "bob", "carol", "root")
CSRF = re.compile(r'name="csrf" value="([0-9a-f]*)"')
UiFactory = Callable[..., Coroutine[Any, Any, httpx.AsyncClient]]


@pytest.fixture
def storage_config(tmp_path: Path) -> dict[str, Any]:
    return {"filesystem": {"root": str(tmp_path / "data"), "fsync": False}}


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text("".join(bcrypt_entry(user, PASSWORD) + "\n" for user in USERS))
    return path


def auth_sections(htpasswd: Path, **auth: Any) -> dict[str, Any]:
    """alice: everything under team/ and secret/; bob: pulls team/; carol: nothing; root: admin of everything;
    anonymous: pulls public/."""
    return {
        "auth": {"htpasswd": {"path": str(htpasswd)}, "admins": ["root"], **auth},
        "access": [
            {"repository": "team/**", "users": ["alice"], "actions": ["*"]},
            {"repository": "secret/**", "users": ["alice"], "actions": ["*"]},
            {"repository": "team/**", "users": ["bob"], "actions": ["pull"]},
            {"repository": "**", "users": ["root"], "actions": ["*"]},
            {"repository": "public/**", "users": ["anonymous"], "actions": ["pull"]},
        ],
    }


@pytest.fixture
async def ui_factory(storage_config: dict[str, Any]) -> AsyncIterator[UiFactory]:
    """Browsers (httpx clients with their own cookie jars) on app instances over one storage."""
    managers: list[LifespanManager] = []
    clients: list[httpx.AsyncClient] = []

    async def factory(sections: dict[str, Any] | None = None, *, https: bool = False) -> httpx.AsyncClient:
        app: Starlette = create_app(make_settings(storage_config, sections))
        manager = LifespanManager(app)
        await manager.__aenter__()
        managers.append(manager)
        base = "https://registry.test" if https else "http://registry.test"
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url=base)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()
    for manager in reversed(managers):
        await manager.__aexit__(None, None, None)


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found is not None, page.text[:2000]
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, user: str, password: str = PASSWORD, next: str = "/ui/") -> httpx.Response:
    form = await client.get("/ui/login", params={"next": next})
    assert form.status_code == 200, form.text
    return await client.post(
        "/ui/login", data={"csrf": csrf_of(form), "username": user, "password": password, "next": next}
    )


HIDDEN = re.compile(r'<input type="hidden" name="([a-z]+)" value="([^"]*)">')


async def post_form(client: httpx.AsyncClient, page: str, action: str, **fields: str) -> httpx.Response:
    """Submit the form of `page` that posts to `action` with its hidden fields (the CSRF token, a confirmed digest),
    as a browser on that page would."""
    shown = await client.get(page)
    assert shown.status_code == 200, (page, shown.status_code, shown.text[:1000])
    form = re.search(rf'<form [^>]*action="{re.escape(action)}"[^>]*>(.*?)</form>', shown.text, re.S)
    hidden = dict(HIDDEN.findall(form.group(1))) if form is not None else {}
    return await client.post(action, data={"csrf": csrf_of(shown), **hidden, **fields})


def text_of(page: httpx.Response) -> str:
    """The page's text without tags (entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page.text))


async def as_user(client: httpx.AsyncClient, user: str, action: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run API calls (pushes) with `user`'s Basic credentials; UI pages never read that header."""
    client.auth = httpx.BasicAuth(user, PASSWORD)
    try:
        return await action()
    finally:
        client.auth = None


async def indexed(client: httpx.AsyncClient, name: str, headers: dict[str, str] | None = None) -> None:
    """Wait until the index lists `name` (the index applies writes off the request path)."""
    for _ in range(100):
        response = await client.get(f"/api/v1/repositories/{name}", headers=headers or {})
        if response.status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never indexed: {response.status_code} {response.text}")
