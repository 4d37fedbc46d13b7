"""LDAP sign-in against a real slapd (registry/auth/ldap.py): the directory's users with their groups, in both usual
group shapes; wrong passwords, locked accounts, unknown and hostile names refused; a directory that cannot be
reached is a 503 for new logins while remembered ones go on until `auth.cache_ttl`; group changes within that
time. (skopeo and podman against `moorage serve`: tests/e2e/test_ldap_clients.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from registry.app import create_app
from registry.auth.ldap import LdapDirectory
from registry.auth.settings import LdapSettings
from registry.errors import RegistryError
from tests.api.conftest import make_settings
from tests.ldap_server import LdapServer
from tests.ldap_server import _write_certificates as write_certificates


def settings_of(ldap: LdapServer, **overrides: Any) -> LdapSettings:
    values: dict[str, Any] = {
        "url": ldap.url,
        "bind_dn": ldap.admin_dn,
        "bind_password": ldap.admin_password,
        "user_base": ldap.people_dn,
        "group_base": ldap.groups_dn,
        "group_filter": "(member={dn})",
        "timeout": 2,
        **overrides,
    }
    return LdapSettings.model_validate(values)


async def test_a_user_signs_in_with_the_directorys_password_and_gets_its_groups(ldap_directory: LdapServer) -> None:
    directory = LdapDirectory(settings_of(ldap_directory))
    alice = await directory.authenticate("alice", "alice-password")
    assert alice is not None and alice.name == "alice" and alice.groups == {"developers", "admins"}
    posix = LdapDirectory(
        settings_of(ldap_directory, group_base=ldap_directory.posix_groups_dn, group_filter="(memberUid={username})")
    )
    carol = await posix.authenticate("carol", "carol-password")
    assert carol is not None and carol.groups == {"readers"}
    anonymous_search = LdapDirectory(settings_of(ldap_directory, bind_dn=None, bind_password=None))
    assert await anonymous_search.authenticate("bob", "bob-password") is not None


async def test_wrong_passwords_locked_accounts_and_hostile_names_are_refused(ldap_directory: LdapServer) -> None:
    directory = LdapDirectory(settings_of(ldap_directory))
    assert await directory.authenticate("alice", "wrong") is None
    assert await directory.authenticate("dave", "dave-password") is None  # locked by the password policy
    assert await directory.authenticate("nobody", "x") is None
    for hostile in ("*", "al*", "alice)(uid=*", "alice\x00", "a" * 300, "(|(uid=*))", "\\2a"):
        assert await directory.authenticate(hostile, "alice-password") is None, hostile
    ldap_directory.unlock("dave")
    assert await directory.authenticate("dave", "dave-password") is not None


async def test_tls_to_the_directory_is_verified(ldap_directory: LdapServer, tmp_path: Path) -> None:
    start_tls = LdapDirectory(settings_of(ldap_directory, start_tls=True, ca_file=str(ldap_directory.ca_file)))
    assert await start_tls.authenticate("alice", "alice-password") is not None
    ldaps = LdapDirectory(
        settings_of(ldap_directory, url=ldap_directory.ldaps_url, ca_file=str(ldap_directory.ca_file))
    )
    assert await ldaps.authenticate("alice", "alice-password") is not None
    other_ca, _, _ = write_certificates(tmp_path)  # another throwaway CA: not the one that signed the server's
    untrusted = LdapDirectory(settings_of(ldap_directory, url=ldap_directory.ldaps_url, ca_file=str(other_ca)))
    with pytest.raises(RegistryError) as refused:
        await untrusted.authenticate("alice", "alice-password")
    assert refused.value.code.status == 503


async def test_a_directory_that_cannot_answer_is_a_503_in_bounded_time(ldap_directory: LdapServer) -> None:
    directory = LdapDirectory(settings_of(ldap_directory, timeout=1))
    ldap_directory.pause()  # connections refused
    with pytest.raises(RegistryError) as down:
        await directory.authenticate("alice", "alice-password")
    assert down.value.code.status == 503 and down.value.headers["Retry-After"]
    ldap_directory.resume()
    ldap_directory.freeze()  # connections accepted, nothing answers
    started = time.monotonic()
    try:
        with pytest.raises(RegistryError):
            await directory.authenticate("alice", "alice-password")
    finally:
        ldap_directory.thaw()
    assert time.monotonic() - started < 5
    assert await directory.authenticate("alice", "alice-password") is not None
    wrong_service = LdapDirectory(settings_of(ldap_directory, bind_password="not-it"))
    with pytest.raises(RegistryError):  # the service account refused: the directory's setup, not the user
        await wrong_service.authenticate("alice", "alice-password")


@pytest.fixture
async def registry(ldap_directory: LdapServer, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    sections = {
        "auth": {
            "ldap": settings_of(ldap_directory).model_dump(mode="json")
            | {"bind_password": ldap_directory.admin_password},
            "cache_ttl": 1.0,
            "admin_groups": ["admins"],
        },
        "access": [
            {"repository": "dev/**", "groups": ["developers"], "actions": ["pull", "push"]},
            {"repository": "dev/**", "groups": ["readers"], "actions": ["pull"]},
        ],
    }
    app = create_app(make_settings({"filesystem": {"root": str(tmp_path / "data"), "fsync": False}}, sections))
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://registry.test") as client,
    ):
        yield client


def basic(user: str, password: str) -> httpx.BasicAuth:
    return httpx.BasicAuth(user, password)


async def test_group_rules_grant_and_a_removed_member_loses_them_within_the_cache_time(
    registry: httpx.AsyncClient, ldap_directory: LdapServer
) -> None:
    bob = basic("bob", "bob-password")
    assert (await registry.post("/v2/dev/app/blobs/uploads/", auth=bob)).status_code == 202
    carol = await registry.post("/v2/dev/app/blobs/uploads/", auth=basic("carol", "carol-password"))
    assert carol.status_code == 403  # readers pull only
    assert (await registry.get("/v2/dev/app/tags/list", auth=basic("carol", "carol-password"))).status_code == 404
    ldap_directory.remove_member("developers", "bob")
    started = time.monotonic()
    while (await registry.post("/v2/dev/app/blobs/uploads/", auth=bob)).status_code == 202:
        assert time.monotonic() - started < 3.0, "bob kept push past the cache time"
        await asyncio.sleep(0.1)
    assert time.monotonic() - started >= 0.5  # remembered meanwhile: no directory round trip per request


async def test_failures_are_told_apart_and_remembered_logins_outlive_an_outage(
    registry: httpx.AsyncClient, ldap_directory: LdapServer
) -> None:
    for user, password in (("alice", "wrong"), ("dave", "dave-password"), ("nobody", "x")):
        refused = await registry.get("/v2/", auth=basic(user, password))
        assert refused.status_code == 401 and refused.json()["errors"][0]["code"] == "UNAUTHORIZED", user
    assert (await registry.get("/v2/", auth=basic("alice", "alice-password"))).status_code == 200
    ldap_directory.pause()
    try:
        remembered = await registry.get("/v2/", auth=basic("alice", "alice-password"))
        assert remembered.status_code == 200
        new = await registry.get("/v2/", auth=basic("bob", "bob-password"))
        assert new.status_code == 503 and new.json()["errors"][0]["code"] == "UNAVAILABLE", new.text
        assert new.headers["Retry-After"]
        await asyncio.sleep(1.2)  # past auth.cache_ttl
        expired = await registry.get("/v2/", auth=basic("alice", "alice-password"))
        assert expired.status_code == 503
    finally:
        ldap_directory.resume()
    assert (await registry.get("/v2/", auth=basic("bob", "bob-password"))).status_code == 200


async def test_a_directory_users_ui_session_follows_the_directorys_groups(
    registry: httpx.AsyncClient, ldap_directory: LdapServer
) -> None:
    from tests.ui.conftest import csrf_of

    form = await registry.get("/ui/login")
    signed_in = await registry.post(
        "/ui/login", data={"csrf": csrf_of(form), "username": "alice", "password": "alice-password", "next": "/ui/"}
    )
    assert signed_in.status_code == 303, signed_in.text
    assert (await registry.get("/ui/admin")).status_code == 200  # alice is in `admins` (auth.admin_groups)
    made = await registry.get("/ui/tokens")
    assert made.status_code == 200
    ldap_directory.remove_member("admins", "alice")
    started = time.monotonic()
    while (await registry.get("/ui/admin")).status_code == 200:
        assert time.monotonic() - started < 3.0, "alice stayed an admin past the cache time"
        await asyncio.sleep(0.1)
    assert (await registry.get("/ui/admin")).status_code == 403
