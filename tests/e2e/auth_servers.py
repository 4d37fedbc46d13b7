"""Registries with authentication on, for the e2e auth tests: users made with Apache's real `htpasswd -B`, rules in a
config file, CI tokens made with `moorage token create`, all over real HTTP(S)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from .conftest import REPO_ROOT, MoorageFactory, RunningServer, require_tool

PASSWORDS = {"admin": "admin-pw-0", "alice": "alice-pw-1", "bob": "bob-pw-2", "carol": "carol-pw-3"}
SERVICE = "moorage.test"
RULES: list[dict[str, Any]] = [
    {"repository": "**", "users": ["admin"], "actions": ["*"]},
    {"repository": "team/*", "users": ["alice"], "actions": ["pull", "push", "delete"]},
    {"repository": "team/app", "users": ["bob"], "actions": ["pull"]},
    {"repository": "public/*", "users": ["anonymous"], "actions": ["pull"]},
    {"repository": "public/*", "users": ["*"], "actions": ["push"]},
]
CLI_TIMEOUT = 60.0


def write_htpasswd(path: Path, passwords: dict[str, str]) -> Path:
    """`htpasswd -B` (bcrypt, Apache's $2y$), at a low cost so that the tests stay quick."""
    tool = require_tool("htpasswd", "apache2-utils")
    path.unlink(missing_ok=True)
    for user, password in passwords.items():
        flags = "-bBC" if path.exists() else "-cbBC"
        subprocess.run([tool, flags, "5", str(path), user, password], check=True, capture_output=True)
    return path


@dataclass
class AuthServer:
    server: RunningServer
    config: Path
    env: dict[str, str]  # what `moorage token ...` needs to reach the same storage
    tokens: dict[str, str] = field(default_factory=dict)  # CI token name -> secret

    @property
    def host(self) -> str:
        return self.server.host

    def moorage(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        result = subprocess.run(
            [sys.executable, "-m", "registry", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check:
            assert result.returncode == 0, f"moorage {' '.join(argv)}: {result.returncode}\n{result.stderr}"
        return result

    def create_token(self, name: str, *scopes: str, expires: str | None = None) -> str:
        argv = ["token", "create", "--name", name, *(f"--scope={scope}" for scope in scopes)]
        result = self.moorage(*argv, *(["--expires", expires] if expires else []))
        secret = result.stdout.strip().splitlines()[-1]
        assert secret.startswith("moorage_ci_") and " " not in secret, result.stdout
        self.tokens[name] = secret
        return secret

    def credentials(self, user: str) -> tuple[str, str]:
        return (user, self.tokens[user]) if user in self.tokens else (user, PASSWORDS[user])


def start_auth_server(
    moorage_factory: MoorageFactory,
    tmp_path: Path,
    *,
    token: bool,
    rules: list[dict[str, Any]] = RULES,
    auth_extra: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    name: str = "auth",
) -> AuthServer:
    """A server whose `auth` section is htpasswd (+ the token service when `token`) and `auth_extra`; `extra` adds
    other sections."""
    htpasswd = write_htpasswd(tmp_path / f"{name}.htpasswd", PASSWORDS)
    config = tmp_path / f"{name}.yml"
    settings: dict[str, Any] = {
        "auth": {
            "htpasswd": {"path": str(htpasswd)},
            "token": {"enabled": token, "service": SERVICE},
            **(auth_extra or {}),
        },
        "access": rules,
        **(extra or {}),
    }
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    root = tmp_path / f"{name}-root"
    server = moorage_factory(root, env={"MOORAGE_CONFIG": str(config)})
    env = {"MOORAGE_CONFIG": str(config), "MOORAGE_STORAGE__FILESYSTEM__ROOT": str(root)}
    return AuthServer(server, config, env)


def get_token(server: AuthServer, user: str | None, *scopes: str) -> str:
    auth = server.credentials(user) if user else None
    with httpx.Client(base_url=server.server.url, timeout=30.0) as client:
        response = client.get("/auth/token", params={"service": SERVICE, "scope": list(scopes)}, auth=auth)
    assert response.status_code == 200, f"token for {user}: {response.status_code} {response.text}"
    token: str = response.json()["token"]
    return token
