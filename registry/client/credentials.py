"""Registry credentials: `MOORAGE_USERNAME`/`MOORAGE_PASSWORD`, then docker's `config.json` (credential helpers
and `auths`). `moorage login` writes `auths` entries there, so docker and moorage share one login."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.client.errors import ClientError
from registry.client.reference import DOCKER_HUB

USERNAME_ENV = "MOORAGE_USERNAME"
PASSWORD_ENV = "MOORAGE_PASSWORD"
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
HELPER_TIMEOUT = 30.0


IDENTITY_TOKEN_USER = "<token>"  # docker's credential helpers keep identity tokens under this user name


@dataclass(frozen=True)
class Credentials:
    """A user name and password, or an identity token (an OAuth2 refresh token from an earlier login)."""

    username: str
    password: str
    identity_token: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    directory = env.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else Path.home() / ".docker" / "config.json"


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ClientError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ClientError(f"cannot read {path}: not a JSON object")
    return data


def _auth_keys(registry: str) -> list[str]:
    if registry == DOCKER_HUB:
        return [DOCKER_HUB_KEY, "index.docker.io", DOCKER_HUB]
    return [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/", f"http://{registry}/v1/"]


def _decode_auth(entry: Mapping[str, Any], path: Path) -> Credentials | None:
    if entry.get("identitytoken"):
        username = ""
        if entry.get("auth"):
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                username = base64.b64decode(str(entry["auth"])).decode().partition(":")[0]
        return Credentials(username, "", str(entry["identitytoken"]))
    if entry.get("username") and entry.get("password"):
        return Credentials(str(entry["username"]), str(entry["password"]))
    encoded = entry.get("auth")
    if not encoded:
        return None
    try:
        username, sep, password = base64.b64decode(str(encoded)).decode().partition(":")
    except (ValueError, UnicodeDecodeError) as e:
        raise ClientError(f"invalid auth entry in {path}: {e}") from e
    if not sep:
        raise ClientError(f"invalid auth entry in {path}: expected base64 of user:password")
    return Credentials(username, password)


def _server_url(registry: str) -> str:
    return DOCKER_HUB_KEY if registry == DOCKER_HUB else registry


def _run_helper(helper: str, action: str, stdin: str) -> subprocess.CompletedProcess[str]:
    """docker's credential-helper protocol: `docker-credential-<helper> get|store|erase`, talking on stdin/stdout."""
    try:
        return subprocess.run(
            [f"docker-credential-{helper}", action],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ClientError(f"credential helper docker-credential-{helper}: {e}") from e


def _from_helper(helper: str, registry: str) -> Credentials | None:
    result = _run_helper(helper, "get", _server_url(registry))
    if result.returncode != 0:
        return None  # "credentials not found in native keychain"
    try:
        data = json.loads(result.stdout)
        username, secret = str(data["Username"]), str(data["Secret"])
    except (ValueError, KeyError, TypeError) as e:
        raise ClientError(f"credential helper docker-credential-{helper}: unreadable answer") from e
    if username == IDENTITY_TOKEN_USER:
        return Credentials("", "", secret)
    return Credentials(username, secret)


def _helper_for(config: Mapping[str, Any], registry: str) -> str | None:
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict) and registry in helpers:
        return str(helpers[registry])
    store = config.get("credsStore")
    return str(store) if store else None


def lookup(registry: str, *, path: Path | None = None, environ: Mapping[str, str] | None = None) -> Credentials | None:
    """The credentials to use for `registry`, or None to go anonymous."""
    env = os.environ if environ is None else environ
    if env.get(USERNAME_ENV) and env.get(PASSWORD_ENV):
        return Credentials(env[USERNAME_ENV], env[PASSWORD_ENV])
    path = path or config_path(env)
    config = _read_config(path)
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict) and registry in helpers:
        return _from_helper(str(helpers[registry]), registry)
    auths = config.get("auths") or {}
    for key in _auth_keys(registry):
        entry = auths.get(key) if isinstance(auths, dict) else None
        if isinstance(entry, dict):
            creds = _decode_auth(entry, path)
            if creds is not None:
                return creds
    store = config.get("credsStore")
    if store:
        return _from_helper(str(store), registry)
    return None


def _write_config(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.json.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent="\t")
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def store(registry: str, credentials: Credentials, *, path: Path | None = None) -> str:
    """Save credentials where docker would: the configured credential helper, else config.json's `auths` (base64
    of `user:password`). Returns where they went, for the user."""
    path = path or config_path()
    config = _read_config(path)
    auths = config.setdefault("auths", {})
    helper = _helper_for(config, registry)
    if helper is not None:
        payload = {"ServerURL": _server_url(registry), "Username": credentials.username, "Secret": credentials.password}
        result = _run_helper(helper, "store", json.dumps(payload))
        if result.returncode != 0:
            raise ClientError(f"credential helper docker-credential-{helper}: {result.stdout.strip() or 'failed'}")
        auths[_auth_keys(registry)[0]] = {}
        _write_config(path, config)
        return f"docker-credential-{helper}"
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    auths[_auth_keys(registry)[0]] = {"auth": token}
    _write_config(path, config)
    return str(path)


def erase(registry: str, *, path: Path | None = None) -> bool:
    """Remove the saved credentials for `registry`; False when there were none."""
    path = path or config_path()
    config = _read_config(path)
    helper = _helper_for(config, registry)
    erased = helper is not None and _run_helper(helper, "erase", _server_url(registry)).returncode == 0
    auths = config.get("auths") or {}
    removed = [key for key in _auth_keys(registry) if auths.pop(key, None) is not None]
    if removed:
        _write_config(path, config)
    return erased or bool(removed)
