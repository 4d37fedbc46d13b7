"""LDAP sign-in with real clients: `moorage serve` against a real slapd, skopeo and podman logging in with the
directory's users; a group rule grants push, a member removed from the group loses it within `auth.cache_ttl`,
wrong passwords and locked accounts are refused, and a directory that cannot be reached answers 503."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.ldap_server import LdapServer

from .conftest import MoorageFactory, RunningServer, Skopeo
from .images import OciLayout, small_image
from .test_podman import Podman
from .test_podman import podman as podman  # the fixture

pytestmark = pytest.mark.e2e
CACHE_TTL = 2.0


def ldap_registry(moorage_factory: MoorageFactory, ldap: LdapServer, tmp_path: Path, *, token: bool) -> RunningServer:
    config: dict[str, Any] = {
        "auth": {
            "ldap": {
                "url": ldap.url,
                "start_tls": True,
                "ca_file": str(ldap.ca_file),
                "bind_dn": ldap.admin_dn,
                "bind_password": ldap.admin_password,
                "user_base": ldap.people_dn,
                "user_filter": "(uid={username})",
                "group_base": ldap.posix_groups_dn,
                "group_filter": "(memberUid={username})",
            },
            "token": {"enabled": token, "service": "moorage.test"},
            "cache_ttl": CACHE_TTL,
        },
        "access": [
            {"repository": "dev/**", "groups": ["developers"], "actions": ["pull", "push"]},
            {"repository": "dev/**", "groups": ["readers"], "actions": ["pull"]},
        ],
    }
    path = tmp_path / "ldap.yml"
    path.write_text(yaml.safe_dump(config))
    return moorage_factory(env={"MOORAGE_CONFIG": str(path)})


def test_skopeo_pushes_and_pulls_as_directory_users(
    moorage_factory: MoorageFactory, ldap_directory: LdapServer, skopeo: Skopeo, tmp_path: Path
) -> None:
    server = ldap_registry(moorage_factory, ldap_directory, tmp_path, token=False)
    layout = OciLayout(tmp_path / "layout")
    small_image(layout, name="ldap-skopeo", tag="v1")
    skopeo.push(layout.path, "v1", server.ref("dev/app", "v1"), "--dest-creds=bob:bob-password")
    assert skopeo.inspect(server.ref("dev/app", "v1"), "--creds=carol:carol-password")  # readers pull
    for creds in ("carol:carol-password", "bob:wrong", "dave:dave-password"):  # reader; wrong; locked
        refused = skopeo.run(
            "copy", f"oci:{layout.path}:v1", server.ref("dev/app", "x"), f"--dest-creds={creds}", check=False
        )
        assert refused.returncode != 0, creds

    ldap_directory.remove_member("developers", "bob")
    started = time.monotonic()
    while True:
        attempt = skopeo.run(
            "copy", f"oci:{layout.path}:v1", server.ref("dev/app", "v2"), "--dest-creds=bob:bob-password", check=False
        )
        if attempt.returncode != 0:
            break
        assert time.monotonic() - started < CACHE_TTL + 5, "bob kept push past the cache time"
        time.sleep(0.2)
    assert "denied" in attempt.stderr.lower() or "403" in attempt.stderr, attempt.stderr


@pytest.mark.parametrize("flow", ["basic", "bearer"])
def test_podman_logs_in_with_the_directory(
    flow: str,
    moorage_factory: MoorageFactory,
    ldap_directory: LdapServer,
    podman: Podman,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    server = ldap_registry(moorage_factory, ldap_directory, tmp_path, token=flow == "bearer")
    layout = OciLayout(tmp_path / "layout")
    small_image(layout, name="ldap-podman", tag="v1")
    skopeo.push(layout.path, "v1", server.ref("dev/app", "v1"), "--dest-creds=alice:alice-password")
    tls = "--tls-verify=false"
    wrong = podman.run("login", tls, "-u", "alice", "-p", "wrong", server.host, check=False)
    assert wrong.returncode != 0
    locked = podman.run("login", tls, "-u", "dave", "-p", "dave-password", server.host, check=False)
    assert locked.returncode != 0

    podman.run("login", tls, "-u", "alice", "-p", "alice-password", server.host)
    podman.run("pull", "--quiet", tls, f"{server.host}/dev/app:v1")
    podman.run("push", "--quiet", tls, f"{server.host}/dev/app:v1", f"{server.host}/dev/app:alice")
    podman.run("login", tls, "-u", "carol", "-p", "carol-password", server.host)
    denied = podman.run(
        "push", "--quiet", tls, f"{server.host}/dev/app:v1", f"{server.host}/dev/app:carol", check=False
    )
    assert denied.returncode != 0 and ("denied" in denied.stderr.lower() or "403" in denied.stderr), denied.stderr

    ldap_directory.pause()
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            down = client.get("/v2/", auth=("bob", "bob-password"))
        assert down.status_code == 503 and down.json()["errors"][0]["code"] == "UNAVAILABLE", down.text
        unreachable = podman.run("login", tls, "-u", "bob", "-p", "bob-password", server.host, check=False)
        assert unreachable.returncode != 0 and "503" in unreachable.stderr, unreachable.stderr
    finally:
        ldap_directory.resume()
    podman.run("login", tls, "-u", "bob", "-p", "bob-password", server.host)
