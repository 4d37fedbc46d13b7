from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from registry.client import credentials
from registry.client.credentials import Credentials
from registry.client.errors import ClientError


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_lookup_reads_docker_auths(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "r.example:5000": {"auth": b64("alice:pa:ss")},
                    "https://other.example": {"auth": b64("bob:pw")},
                    "https://index.docker.io/v1/": {"auth": b64("hub:pw")},
                }
            }
        )
    )
    assert credentials.lookup("r.example:5000", path=path, environ={}) == Credentials("alice", "pa:ss")
    assert credentials.lookup("other.example", path=path, environ={}) == Credentials("bob", "pw")
    assert credentials.lookup("docker.io", path=path, environ={}) == Credentials("hub", "pw")
    assert credentials.lookup("unknown.example", path=path, environ={}) is None


def test_environment_wins(tmp_path: Path) -> None:
    env = {"MOORAGE_USERNAME": "ci", "MOORAGE_PASSWORD": "token"}
    assert credentials.lookup("r.example", path=tmp_path / "missing.json", environ=env) == Credentials("ci", "token")


def test_store_and_erase_keep_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "docker" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"auths": {"keep.example": {"auth": b64("k:k")}}, "psFormat": "table"}))
    credentials.store("r.example:5000", Credentials("alice", "secret"), path=path)
    config = json.loads(path.read_text())
    assert config["psFormat"] == "table"
    assert base64.b64decode(config["auths"]["r.example:5000"]["auth"]).decode() == "alice:secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.erase("r.example:5000", path=path)
    assert not credentials.erase("r.example:5000", path=path)
    assert set(json.loads(path.read_text())["auths"]) == {"keep.example"}


HELPER = """#!/bin/sh
# A docker credential helper keeping one secret per server in files under $0.d/
store="$0.d"; mkdir -p "$store"
case "$1" in
  store) cat > "$store/last"; server=$(sed 's/.*"ServerURL": "\\([^"]*\\)".*/\\1/' "$store/last");
         mv "$store/last" "$store/$server" ;;
  get) read server; [ -f "$store/$server" ] || { echo "credentials not found"; exit 1; };
       sed 's/"ServerURL": "[^"]*", //' "$store/$server" ;;
  erase) read server; rm "$store/$server" ;;
esac
"""


def test_credential_helper_store_get_erase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(HELPER)
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:/usr/bin:/bin")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"credsStore": "fake"}))
    assert credentials.lookup("h.example", path=path, environ={}) is None
    assert credentials.store("h.example", Credentials("u", "s"), path=path) == "docker-credential-fake"
    assert json.loads(path.read_text())["auths"] == {"h.example": {}}  # as docker records helper logins
    assert credentials.lookup("h.example", path=path, environ={}) == Credentials("u", "s")
    assert credentials.erase("h.example", path=path)
    assert credentials.lookup("h.example", path=path, environ={}) is None


def test_identity_tokens(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"r.example": {"auth": b64("alice:"), "identitytoken": "refresh"}}}))
    assert credentials.lookup("r.example", path=path, environ={}) == Credentials("alice", "", "refresh")


def test_broken_config_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ClientError, match="cannot read"):
        credentials.lookup("r.example", path=path, environ={})
    path.write_text(json.dumps({"auths": {"r.example": {"auth": b64("no-colon")}}}))
    with pytest.raises(ClientError, match="user:password"):
        credentials.lookup("r.example", path=path, environ={})


def test_password_is_not_in_repr() -> None:
    assert "secret" not in repr(Credentials("alice", "secret"))
