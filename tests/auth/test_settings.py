"""The `auth:` section: the example config is valid, and mistakes are named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry.settings import ConfigError, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "auth-example.yml"


def test_auth_example_config_is_valid() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.auth is not None and settings.auth.token.enabled
    assert settings.auth.token.expiry == 300 and settings.auth.rate_limit.window == 60
    assert settings.http.tls is not None
    assert [rule.repository for rule in settings.access] == ["**", "team/*", "team/**", "public/**"]


def test_no_auth_section_is_laptop_mode(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text("storage: {delete: true}\n")
    assert load_settings(config).auth is None
    config.write_text("auth: {}\n")
    assert load_settings(config).auth is not None  # present, even empty: authentication on


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("access: [{repository: a, users: [x], actions: [fly]}]", "unknown action 'fly'"),
        ("auth: {token: {expiry: 10s}}", "auth.token.expiry"),
        ("auth: {token: {external: {issuer: x}}}", "exactly one of public_key and jwks"),
        ("auth: {tokens: {}}", "auth.tokens: unknown key"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, yaml_text: str, message: str) -> None:
    config = tmp_path / "c.yml"
    config.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("auth: {htpasswd: {path: /nonexistent/htpasswd}}", "auth.htpasswd.path /nonexistent/htpasswd"),
        ("auth: {token: {enabled: true, signing_key: /nonexistent/key.pem}}", "auth.token.signing_key"),
        ("http: {tls: {certificate: /nonexistent/c.pem, key: /nonexistent/k.pem}}", "http.tls.certificate"),
    ],
)
def test_serve_names_an_unreadable_file_and_exits_2(tmp_path: Path, yaml_text: str, message: str) -> None:
    config = tmp_path / "c.yml"
    config.write_text(yaml_text + f"\nstorage: {{filesystem: {{root: {tmp_path / 'data'}}}}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    result = subprocess.run(
        [sys.executable, "-m", "registry", "serve", "--config", str(config), "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"moorage: config error: {message}"), result.stderr
    assert "Traceback" not in result.stderr


def test_checking_the_files_does_not_load_prometheus_client() -> None:
    """prometheus-client reads its multiprocess directory at import: `serve` sets it only after this check."""
    code = (
        "import sys; import registry.cli; from registry.settings import Settings; "
        "from registry.server import check_files; "
        "check_files(Settings.model_validate({'auth': {}})); "
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client imported'"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_identity_example_config_is_valid() -> None:
    settings = load_settings(EXAMPLE.with_name("identity-example.yml"))
    assert settings.auth is not None and settings.auth.ldap is not None and settings.auth.oidc is not None
    assert settings.auth.ldap.group_filter == "(member={dn})"
    assert [quota.bytes for quota in settings.quotas] == [50 * 2**30, 5 * 2**30]
    assert settings.policy.poll_interval == 0.25
