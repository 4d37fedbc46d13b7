"""The real docker CLI, through a real docker daemon, against `moorage serve` with htpasswd users, the built-in token
service and access rules: login, push, pull, a refused pull, `docker search` filtered by the caller's rights, logout.

The image is built `FROM scratch` (nothing to pull: there is no network beyond 127.0.0.1).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import httpx
import pytest

from .auth_servers import PASSWORDS, SERVICE, AuthServer, start_auth_server
from .conftest import MoorageFactory
from .docker_daemon import Docker
from .docker_daemon import docker as docker  # the fixtures
from .docker_daemon import docker_daemon as docker_daemon

pytestmark = pytest.mark.e2e

REFUSED = re.compile(r"denied|unauthorized|authentication required")
# Every repository the test pushes; who may pull which follows auth_servers.RULES.
PUSHED = ["team/app", "team/web", "public/tool", "secret/db"]


def build_image(docker: Docker, tmp_path: Path, tag: str) -> str:
    """A one-file image `FROM scratch`: the classic builder only copies, so no container and no network."""
    context = tmp_path / "build-context"
    context.mkdir()
    (context / "hello.txt").write_text(f"hello from {tag}\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    docker.run("build", "--quiet", "--tag", tag, str(context))
    return docker.image_id(tag)


def manifest_status(server: AuthServer, repository: str, tag: str) -> int:
    """What the registry holds, seen by admin through the token service (not through docker)."""
    with httpx.Client(base_url=server.server.url, timeout=30.0) as client:
        token = client.get(
            "/auth/token",
            params={"service": SERVICE, "scope": f"repository:{repository}:pull"},
            auth=server.credentials("admin"),
        ).json()["token"]
        return client.get(
            f"/v2/{repository}/manifests/{tag}",
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.docker.distribution.manifest.v2+json",
            },
        ).status_code


def search(docker: Docker, host: str, term: str) -> list[str]:
    result = docker.run("search", "--no-trunc", "--format", "{{.Name}}", f"{host}/{term}")
    return sorted(result.stdout.split())


def test_docker_login_push_pull_search_logout(moorage_factory: MoorageFactory, docker: Docker, tmp_path: Path) -> None:
    server = start_auth_server(moorage_factory, tmp_path, token=True)
    host = server.host
    app = f"{host}/team/app:v1"
    built = build_image(docker, tmp_path, app)

    # Not logged in: the daemon is challenged and gets no token that allows a push.
    anonymous = docker.run("push", app, check=False)
    assert anonymous.returncode != 0 and REFUSED.search(anonymous.stderr), anonymous.stderr

    # A wrong password: refused, and nothing is saved.
    wrong = docker.login(host, "alice", "not-the-password", check=False)
    assert wrong.returncode != 0 and "unauthorized" in wrong.stderr.lower(), wrong.stderr
    assert host not in docker.saved_auths()

    login = docker.login(host, "alice", PASSWORDS["alice"])
    assert "Login Succeeded" in login.stdout, login
    saved = docker.saved_auths()[host]
    # The daemon logs in through the token service; what the CLI saves is either the password (basic) or the
    # service's refresh token (`identitytoken`), and in neither case for another host.
    assert "auth" in saved or "identitytoken" in saved, saved
    assert list(docker.saved_auths()) == [host]

    # alice pushes where she may, and is refused where she may not.
    for repository in ("team/app", "team/web", "public/tool"):
        ref = f"{host}/{repository}:v1"
        if ref != app:
            docker.run("tag", app, ref)
        docker.run("push", ref)
        assert manifest_status(server, repository, "v1") == 200, repository
    docker.run("tag", app, f"{host}/secret/db:v1")
    denied = docker.run("push", f"{host}/secret/db:v1", check=False)
    assert denied.returncode != 0 and REFUSED.search(denied.stderr), denied.stderr
    assert manifest_status(server, "secret/db", "v1") == 404

    # Pull back what was pushed, with nothing of it left locally: the same image (its ID is its config's digest).
    docker.run("rmi", *(f"{host}/{r}:v1" for r in PUSHED))
    assert docker.run("image", "inspect", app, check=False).returncode != 0
    docker.run("pull", app)
    assert docker.image_id(app) == built

    # admin pushes secret/db, which only admin may see.
    docker.login(host, "admin", PASSWORDS["admin"])
    docker.run("tag", app, f"{host}/secret/db:v1")
    docker.run("push", f"{host}/secret/db:v1")

    # `docker search`, one user after another: the results are what each may pull, never more.
    visible = {
        "admin": PUSHED,
        "alice": ["team/app", "team/web", "public/tool"],
        "bob": ["team/app", "public/tool"],
        "carol": ["public/tool"],
    }
    for user, repositories in visible.items():
        docker.login(host, user, PASSWORDS[user])
        for term in ("team", "db", "tool"):
            want = sorted(r for r in repositories if term in r)
            assert search(docker, host, term) == want, f"{user} searching {term!r}"

    # carol (still logged in) may not pull team/app: a clear refusal, and no image.
    docker.run("rmi", app)
    refused = docker.run("pull", app, check=False)
    assert refused.returncode != 0, refused
    assert REFUSED.search(refused.stderr) and "team/app" in refused.stderr, refused.stderr
    assert docker.run("image", "inspect", app, check=False).returncode != 0

    logout = docker.run("logout", host)
    assert "Removing login credentials" in logout.stdout, logout
    assert host not in docker.saved_auths()
    # Logged out is anonymous: public/* still pulls (the anonymous rule), team/* does not, and search shows only
    # what anonymous may pull.
    docker.run("pull", f"{host}/public/tool:v1")
    assert docker.image_id(f"{host}/public/tool:v1") == built
    anonymous_pull = docker.run("pull", app, check=False)
    assert anonymous_pull.returncode != 0 and REFUSED.search(anonymous_pull.stderr), anonymous_pull.stderr
    assert search(docker, host, "team") == []
    assert search(docker, host, "tool") == ["public/tool"]

    # The credentials were sent by the daemon, never logged by the registry.
    log = server.server.log()
    for password in PASSWORDS.values():
        assert password not in log
        assert base64.b64encode(password.encode()).decode() not in log
