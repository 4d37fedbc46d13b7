"""Authentication and access control against a real `moorage serve`: every user x repository x action, through the
basic and the bearer flows; skopeo and the companion client allowed and refused; CI tokens revoked at once."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from pathlib import Path

import httpx
import pytest

from .auth_servers import PASSWORDS, SERVICE, AuthServer, get_token, start_auth_server
from .conftest import MoorageFactory, Skopeo
from .images import OciLayout, small_image

pytestmark = pytest.mark.e2e

REPOSITORIES = ["team/app", "team/web", "public/tool", "secret/db"]
CI_SCOPE = "repository:team/web:pull,push"
ALL = {"pull", "push", "delete"}
# What each caller may do, written out by hand from auth_servers.RULES and CI_SCOPE (not computed by the code under
# test). Rules for anonymous hold for everyone; "*" is any logged-in user; a CI token has its own scope only.
REFUSED = re.compile(r"denied|unauthorized|authentication required|40[13]")
EXPECTED: dict[str, dict[str, set[str]]] = {
    "admin": dict.fromkeys(REPOSITORIES, ALL),
    "alice": {"team/app": ALL, "team/web": ALL, "public/tool": {"pull", "push"}, "secret/db": set()},
    "bob": {"team/app": {"pull"}, "team/web": set(), "public/tool": {"pull", "push"}, "secret/db": set()},
    "carol": {"team/app": set(), "team/web": set(), "public/tool": {"pull", "push"}, "secret/db": set()},
    "ci-web": {"team/app": set(), "team/web": {"pull", "push"}, "public/tool": {"pull"}, "secret/db": set()},
    "anonymous": {"team/app": set(), "team/web": set(), "public/tool": {"pull"}, "secret/db": set()},
}


def seed(server: AuthServer, skopeo: Skopeo, tmp_path: Path) -> OciLayout:
    layout = OciLayout(tmp_path / "seed-layout")
    small_image(layout, name="seed", tag="v1")
    creds = "admin:" + PASSWORDS["admin"]
    for repository in REPOSITORIES:
        skopeo.push(layout.path, "v1", server.server.ref(repository, "v1"), f"--dest-creds={creds}")
    return layout


def probe(client: httpx.Client, repository: str, action: str, headers: dict[str, str]) -> tuple[int, int]:
    """Try `action` on `repository`; (status, status meaning allowed)."""
    if action == "pull":
        return client.get(f"/v2/{repository}/manifests/v1", headers=headers).status_code, 200
    if action == "push":
        data = secrets.token_bytes(64)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response = client.post(
            f"/v2/{repository}/blobs/uploads/", params={"digest": digest}, content=data, headers=headers
        )
        return response.status_code, 201
    missing = "sha256:" + secrets.token_hex(32)  # deleting nothing: allowed = 404 MANIFEST_UNKNOWN
    return client.delete(f"/v2/{repository}/manifests/{missing}", headers=headers).status_code, 404


def basic_header(server: AuthServer, user: str) -> dict[str, str]:
    """Anonymous sends empty credentials, as skopeo does after a Basic challenge."""
    name, password = ("", "") if user == "anonymous" else server.credentials(user)
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def token_access(token: str) -> list[dict[str, object]]:
    payload = token.split(".")[1]
    access: list[dict[str, object]] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))[
        "access"
    ]
    return access


@pytest.mark.parametrize("flow", ["basic", "bearer"])
def test_every_user_repository_and_action(
    flow: str, moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    server = start_auth_server(moorage_factory, tmp_path, token=flow == "bearer")
    server.create_token("ci-web", CI_SCOPE)
    seed(server, skopeo, tmp_path)
    wrong: list[str] = []
    with httpx.Client(base_url=server.server.url, timeout=30.0) as client:
        for user, rights in EXPECTED.items():
            for repository in REPOSITORIES:
                for action in ("pull", "push", "delete"):
                    allowed = action in rights[repository]
                    if flow == "basic":
                        headers = basic_header(server, user)
                    else:
                        asked = f"repository:{repository}:{action}"
                        token = get_token(server, None if user == "anonymous" else user, asked)
                        granted = token_access(token)
                        want = [{"type": "repository", "name": repository, "actions": [action]}] if allowed else []
                        if granted != want:
                            wrong.append(f"{user} asking {asked}: granted {granted}")
                        headers = {"Authorization": f"Bearer {token}"}
                    status, success = probe(client, repository, action, headers)
                    refused = 401 if user == "anonymous" else 403
                    if status != (success if allowed else refused):
                        wrong.append(
                            f"{user} {action} {repository}: {status}, expected {success if allowed else refused}"
                        )
    assert not wrong, f"{flow} flow, {len(wrong)} wrong cells:\n" + "\n".join(wrong)


@pytest.mark.parametrize("flow", ["basic", "bearer"])
def test_catalog_is_filtered_or_refused(
    flow: str, moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    server = start_auth_server(moorage_factory, tmp_path, token=flow == "bearer")
    seed(server, skopeo, tmp_path)
    with httpx.Client(base_url=server.server.url, timeout=30.0) as client:
        for user in ("admin", "alice", "bob", "anonymous"):
            if flow == "basic":
                headers = basic_header(server, user)
            else:
                token = get_token(server, None if user == "anonymous" else user, "registry:catalog:*")
                headers = {"Authorization": f"Bearer {token}"}
            response = client.get("/v2/_catalog", headers=headers)
            assert response.status_code == 200, (user, response.text)
            visible = [repo for repo in REPOSITORIES if "pull" in EXPECTED[user][repo]]
            assert response.json()["repositories"] == sorted(visible), user


def test_catalog_without_anonymous_rules_refuses_anonymous(moorage_factory: MoorageFactory, tmp_path: Path) -> None:
    rules = [{"repository": "**", "users": ["*"], "actions": ["pull"]}]
    server = start_auth_server(moorage_factory, tmp_path, token=False, rules=rules)
    assert server.server.get("/v2/_catalog").status_code == 401
    assert server.server.get("/v2/_catalog", auth=("", "")).status_code == 401  # explicitly anonymous
    assert server.server.get("/v2/_catalog", auth=server.credentials("carol")).status_code == 200


@pytest.mark.parametrize("flow", ["basic", "bearer"])
def test_skopeo_with_credentials(flow: str, moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path) -> None:
    server = start_auth_server(moorage_factory, tmp_path, token=flow == "bearer")
    layout = OciLayout(tmp_path / "layout")
    small_image(layout, name="skopeo-auth", tag="v1")
    ref = server.server.ref

    def creds(user: str) -> str:
        return ":".join(server.credentials(user))

    # --dest-creds: alice may push team/app; bob may not; nobody without credentials.
    skopeo.push(layout.path, "v1", ref("team/app", "v1"), f"--dest-creds={creds('alice')}")
    for extra in ([f"--dest-creds={creds('bob')}"], [f"--dest-creds={creds('alice')}"], []):
        target = ref("secret/db", "v1") if extra and "alice" in extra[0] else ref("team/app", "v2")
        with pytest.raises(AssertionError, match=REFUSED):
            skopeo.push(layout.path, "v1", target, *extra)
    # --creds on inspect; a wrong password is refused.
    assert skopeo.inspect(ref("team/app", "v1"), f"--creds={creds('bob')}")["Name"].endswith("team/app")
    with pytest.raises(AssertionError, match=r"unauthorized|invalid username or password"):
        skopeo.inspect(ref("team/app", "v1"), "--creds=bob:wrong-password")
    with pytest.raises(AssertionError, match=REFUSED):
        skopeo.inspect(ref("team/app", "v1"), f"--creds={creds('carol')}")
    # --src-creds: pulling into a layout.
    skopeo.pull(ref("team/app", "v1"), tmp_path / "pulled", "v1", f"--src-creds={creds('bob')}")
    with pytest.raises(AssertionError, match=REFUSED):
        skopeo.pull(ref("team/app", "v1"), tmp_path / "refused", "v1", f"--src-creds={creds('carol')}")
    # --src-creds and --dest-creds together: bob reads team/app, alice writes team/web (a cross-repo mount).
    skopeo.copy(
        ref("team/app", "v1"), ref("team/web", "v1"), f"--src-creds={creds('bob')}", f"--dest-creds={creds('alice')}"
    )
    with pytest.raises(AssertionError, match=REFUSED):
        skopeo.copy(
            ref("team/app", "v1"), ref("team/web", "v2"), f"--src-creds={creds('bob')}", f"--dest-creds={creds('bob')}"
        )
    # Anonymous pulls where a rule lets anonymous pull.
    skopeo.push(layout.path, "v1", ref("public/tool", "v1"), f"--dest-creds={creds('carol')}")
    assert skopeo.inspect(ref("public/tool", "v1"))["Name"].endswith("public/tool")
    skopeo.pull(ref("public/tool", "v1"), tmp_path / "anonymous", "v1")


@pytest.mark.parametrize("flow", ["basic", "bearer"])
def test_ci_token_with_the_companion_client_and_revoked_at_once(
    flow: str, moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    server = start_auth_server(moorage_factory, tmp_path, token=flow == "bearer")
    secret = server.create_token("ci-web", CI_SCOPE, expires="30d")
    listing = server.moorage("token", "list").stdout
    assert "ci-web" in listing and "repository:team/web:pull,push" in listing and secret not in listing
    layout = OciLayout(tmp_path / "layout")
    small_image(layout, name="ci", tag="v1")
    docker_config = tmp_path / "docker-config"
    server.env["DOCKER_CONFIG"] = str(docker_config)  # the client's login goes there
    bad = server.moorage("login", server.host, "-u", "ci-web", "-p", secret + "x", check=False)
    assert bad.returncode == 1 and "unauthorized" in bad.stderr.lower()
    assert not (docker_config / "config.json").exists() or secret not in (docker_config / "config.json").read_text()
    server.moorage("login", server.host, "-u", "ci-web", "-p", secret)
    assert (
        secret
        in base64.b64decode(
            json.loads((docker_config / "config.json").read_text())["auths"][server.host]["auth"]
        ).decode()
    )
    server.moorage("push", str(layout.path) + ":v1", f"{server.host}/team/web:v1", "--quiet")
    refused = server.moorage("push", str(layout.path) + ":v1", f"{server.host}/team/app:v1", "--quiet", check=False)
    assert refused.returncode == 1 and ("denied" in refused.stderr or "unauthorized" in refused.stderr), refused.stderr
    server.moorage("pull", f"{server.host}/team/web:v1", str(tmp_path / "pulled"), "--quiet")
    skopeo.push(layout.path, "v1", server.server.ref("team/app", "v1"), "--dest-creds=admin:" + PASSWORDS["admin"])
    assert server.moorage("catalog", server.host).stdout.split() == ["team/web"]  # not team/app: no pull there
    # skopeo with the token as the password, too.
    assert skopeo.inspect(server.server.ref("team/web", "v1"), f"--creds=ci-web:{secret}")

    server.moorage("token", "revoke", "ci-web")
    again = server.moorage("pull", f"{server.host}/team/web:v1", str(tmp_path / "after-revoke"), "--quiet", check=False)
    assert again.returncode == 1 and "unauthorized" in again.stderr.lower(), again.stderr
    with pytest.raises(AssertionError, match=r"unauthorized|invalid username or password"):
        skopeo.inspect(server.server.ref("team/web", "v1"), f"--creds=ci-web:{secret}")
    assert "ci-web" not in server.moorage("token", "list").stdout
    assert server.moorage("token", "revoke", "ci-web", check=False).returncode == 1


def test_a_burst_of_bad_passwords_is_answered_429(moorage_factory: MoorageFactory, tmp_path: Path) -> None:
    server = start_auth_server(moorage_factory, tmp_path, token=True, auth_extra={"rate_limit": {"failures": 5}})
    with httpx.Client(base_url=server.server.url, timeout=30.0) as client:
        statuses = [client.get("/v2/", auth=("alice", f"guess-{i}")).status_code for i in range(8)]
        assert statuses == [401] * 5 + [429] * 3
        locked = client.get("/auth/token", params={"service": SERVICE}, auth=server.credentials("alice"))
        assert locked.status_code == 429 and locked.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert int(locked.headers["Retry-After"]) > 0
        assert client.get("/v2/", auth=server.credentials("bob")).status_code == 200
    log = server.server.log()
    assert "guess-" not in log and PASSWORDS["alice"] not in log and "failed login for user 'alice'" in log
