"""`moorage token --registry HOST`: a user logged in with `moorage login` makes, lists and revokes personal access
tokens through the registry's API; skopeo uses one with the user's name, within its scopes, until it is revoked."""

from __future__ import annotations

from pathlib import Path

import pytest

from .auth_servers import PASSWORDS, start_auth_server
from .conftest import MoorageFactory, Skopeo
from .images import OciLayout, small_image

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("token", [False, True], ids=["basic", "bearer"])
def test_moorage_token_makes_personal_tokens_through_the_api(
    token: bool, moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path
) -> None:
    server = start_auth_server(moorage_factory, tmp_path, token=token)
    server.env["DOCKER_CONFIG"] = str(tmp_path / "docker-config")
    host = server.host
    server.moorage("login", host, "-u", "alice", "-p", PASSWORDS["alice"])
    made = server.moorage(
        "token",
        "create",
        "--registry",
        host,
        "--name",
        "laptop",
        "--scope",
        "repository:team/*:pull,push",
        "--expires",
        "7d",
    )
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("moorage_pat_"), made.stdout
    token_id = made.stdout.split("(id ", 1)[1].split(")", 1)[0]

    layout = OciLayout(tmp_path / "layout")
    small_image(layout, name="pat-cli", tag="v1")
    skopeo.push(layout.path, "v1", server.server.ref("team/app", "v1"), f"--dest-creds=alice:{secret}")
    listed = server.moorage("token", "list", "--registry", host).stdout
    assert token_id in listed and "laptop" in listed and "repository:team/*:pull,push" in listed

    refused = server.moorage("token", "revoke", "--registry", host, "0123456789abcdef", check=False)
    assert refused.returncode != 0 and "not found" in refused.stderr, refused.stderr
    sneaky = server.moorage("token", "revoke", "--registry", host, "../access-rules/abc", check=False)
    assert sneaky.returncode != 0 and "not a token id" in sneaky.stderr, sneaky.stderr
    server.moorage("token", "revoke", "--registry", host, token_id)
    after = skopeo.run(
        "inspect",
        "--raw",
        "--tls-verify=false",
        server.server.ref("team/app", "v1"),
        f"--creds=alice:{secret}",
        check=False,
    )
    assert after.returncode != 0 and "unauthorized" in after.stderr.lower(), after.stderr
    bad = server.moorage(
        "token", "create", "--registry", host, "--name", "x", "--scope", "registry:catalog:*", check=False
    )
    assert bad.returncode != 0 and "repository scopes" in bad.stderr, bad.stderr
