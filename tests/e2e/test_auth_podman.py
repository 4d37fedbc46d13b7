"""podman against a registry with authentication: `podman login` (the token flow, and plain basic auth), push and
pull allowed and refused, a CI token as the password."""

from __future__ import annotations

from pathlib import Path

import pytest

from .auth_servers import PASSWORDS, start_auth_server
from .conftest import MoorageFactory, Skopeo
from .images import OciLayout, small_image
from .test_podman import Podman
from .test_podman import podman as podman  # the fixture

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("flow", ["basic", "bearer"])
def test_podman_login_push_pull(
    flow: str, moorage_factory: MoorageFactory, skopeo: Skopeo, podman: Podman, tmp_path: Path
) -> None:
    server = start_auth_server(moorage_factory, tmp_path, token=flow == "bearer")
    secret = server.create_token("ci-web", "repository:team/web:pull,push")
    layout = OciLayout(tmp_path / "layout")
    small_image(layout, name="podman-auth", tag="v1")
    skopeo.push(layout.path, "v1", server.server.ref("team/app", "v1"), "--dest-creds=admin:" + PASSWORDS["admin"])
    source = f"{server.host}/team/app:v1"
    tls = "--tls-verify=false"

    refused = podman.run("pull", "--quiet", tls, source, check=False)  # not logged in
    assert refused.returncode != 0 and "unauthorized" in refused.stderr.lower(), refused.stderr
    wrong = podman.run("login", tls, "-u", "alice", "-p", "not-the-password", server.host, check=False)
    assert wrong.returncode != 0

    podman.run("login", tls, "-u", "bob", "-p", PASSWORDS["bob"], server.host)
    podman.run("pull", "--quiet", tls, source)  # bob may pull team/app...
    denied = podman.run("push", "--quiet", tls, source, f"{server.host}/team/app:bob", check=False)
    assert denied.returncode != 0 and ("denied" in denied.stderr or "403" in denied.stderr), denied.stderr

    podman.run("login", tls, "-u", "alice", "-p", PASSWORDS["alice"], server.host)
    podman.run("push", "--quiet", tls, source, f"{server.host}/team/app:alice")
    assert skopeo.inspect(server.server.ref("team/app", "alice"), "--creds=admin:" + PASSWORDS["admin"])

    podman.run("login", tls, "-u", "ci-web", "-p", secret, server.host)
    podman.run("push", "--quiet", tls, source, f"{server.host}/team/web:ci")
    ci_denied = podman.run("push", "--quiet", tls, source, f"{server.host}/team/app:ci", check=False)
    assert ci_denied.returncode != 0
    server.moorage("token", "revoke", "ci-web")
    podman.run("rmi", "--all", "--force")
    revoked = podman.run("pull", "--quiet", tls, f"{server.host}/team/web:ci", check=False)
    assert revoked.returncode != 0 and "unauthorized" in revoked.stderr.lower(), revoked.stderr
