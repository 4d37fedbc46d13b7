from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from registry.settings import ConfigError, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "moorage.example.yml"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MOORAGE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults_serve_a_laptop() -> None:
    settings = load_settings()
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 5000)
    assert settings.storage.backend == "filesystem"
    assert settings.storage.filesystem.root == Path("data")
    assert settings.storage.delete is True
    assert settings.storage.manifest_max_bytes == 4 * 1024 * 1024


def test_yaml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yml"
    config.write_text("http:\n  port: 6000\n  host: 0.0.0.0\nstorage:\n  delete: false\n")
    monkeypatch.setenv("MOORAGE_HTTP__PORT", "5001")
    monkeypatch.setenv("MOORAGE_STORAGE__FILESYSTEM__ROOT", "/srv/registry")
    settings = load_settings(config)
    assert settings.http.port == 5001
    assert settings.http.host == "0.0.0.0"
    assert settings.storage.delete is False
    assert settings.storage.filesystem.root == Path("/srv/registry")


def test_config_named_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "named.yml"
    config.write_text("storage:\n  manifest_max_bytes: 8388608\n")
    monkeypatch.setenv("MOORAGE_CONFIG", str(config))
    assert load_settings().storage.manifest_max_bytes == 8388608


def test_default_config_file_is_read_when_present(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "moorage.yml").write_text("http:\n  port: 5999\n")
    assert load_settings().http.port == 5999


def test_example_config_is_valid() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.http.port == 5000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("storage:\n  delete: maybe\n", "storage.delete"),
        ("http:\n  port: 70000\n", "http.port"),
        ("http:\n  prot: 1\n", "http.prot: unknown key"),
        ("storage:\n  backend: floppy\n", "storage.backend"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("http: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert message in str(info.value)


def test_bad_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOORAGE_HTTP__PORT", "many")
    with pytest.raises(ConfigError, match=r"http\.port"):
        load_settings()


def run_cli(*args: str, cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "registry", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yml"
    config.write_text("storage:\n  delete: maybe\n")
    result = run_cli("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "storage.delete" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_bad_environment_is_exit_2(tmp_path: Path) -> None:
    result = run_cli("serve", cwd=tmp_path, env_extra={"MOORAGE_STORAGE__BACKEND": "floppy"})
    assert result.returncode == 2
    assert "storage.backend" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(tmp_path / "absent.yml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "absent.yml" in result.stderr


def test_cli_help_names_the_flags(tmp_path: Path) -> None:
    result = run_cli("serve", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for flag in ("--config", "--host", "--port", "--workers"):
        assert flag in result.stdout


def test_misspelt_section_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOORAGE_STORGE__S3__BUCKET", "b")
    with pytest.raises(ConfigError, match="MOORAGE_STORGE__S3__BUCKET: unknown section 'storge'"):
        load_settings()


def test_unrelated_moorage_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOORAGE_PORT", "tcp://10.0.0.1:5000")  # what a Kubernetes Service link injects
    assert load_settings().http.port == 5000


def test_workers_setting_and_flag(tmp_path: Path) -> None:
    result = run_cli("serve", "--workers", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "http.workers" in result.stderr
    result = run_cli("serve", cwd=tmp_path, env_extra={"MOORAGE_HTTP__WORKERS": "-3"})
    assert result.returncode == 2
    assert "http.workers" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics:\n  username: prometheus\n", "set together"),
        ("log:\n  format: xml\n", "log.format"),
        ("http:\n  drain_timeout: -1\n", "http.drain_timeout"),
        ("maintenance:\n  read_only: sometimes\n", "maintenance.read_only"),
    ],
)
def test_operations_settings_are_checked(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert message in str(info.value)


def test_operations_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOORAGE_MAINTENANCE__READ_ONLY", "true")
    monkeypatch.setenv("MOORAGE_METRICS__PORT", "9102")
    monkeypatch.setenv("MOORAGE_LOG__FORMAT", "json")
    monkeypatch.setenv("MOORAGE_HTTP__DRAIN_TIMEOUT", "5")
    settings = load_settings()
    assert settings.maintenance.read_only is True
    assert settings.metrics.port == 9102 and settings.metrics.enabled is True
    assert settings.log.format == "json"
    assert settings.http.drain_timeout == 5


def test_http_limits_default_to_serving_a_busy_fleet() -> None:
    http = load_settings().http
    assert http.max_header_bytes == 64 * 1024  # room for large bearer tokens
    assert (http.header_timeout, http.body_idle_timeout) == (30.0, 60.0)
    assert (http.body_min_rate, http.body_rate_window) == (1024, 30.0)
    assert (http.max_connections, http.max_uploads) == (1024, 512)
    assert http.trusted_proxies == []  # nobody's X-Forwarded-For is believed


def test_http_limits_from_yaml_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "moorage.yml"
    config.write_text(
        "http:\n  header_timeout: 10s\n  body_rate_window: 1m\n  trusted_proxies: [10.0.0.0/8, '::1']\n"
        "  max_uploads: 64\n"
    )
    monkeypatch.setenv("MOORAGE_HTTP__MAX_HEADER_BYTES", "16384")
    monkeypatch.setenv("MOORAGE_HTTP__BODY_IDLE_TIMEOUT", "500ms")
    monkeypatch.setenv("MOORAGE_HTTP__MAX_CONNECTIONS", "200")
    http = load_settings(config).http
    assert (http.header_timeout, http.body_rate_window, http.body_idle_timeout) == (10.0, 60.0, 0.5)
    assert (http.max_header_bytes, http.max_connections, http.max_uploads) == (16384, 200, 64)
    assert http.trusted_proxies == ["10.0.0.0/8", "::1"]
    monkeypatch.setenv("MOORAGE_HTTP__TRUSTED_PROXIES", '["192.0.2.10"]')
    assert load_settings(config).http.trusted_proxies == ["192.0.2.10"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http:\n  max_header_bytes: 100\n", "http.max_header_bytes"),
        ("http:\n  header_timeout: 0\n", "http.header_timeout"),
        ("http:\n  body_idle_timeout: -1s\n", "http.body_idle_timeout"),
        ("http:\n  body_min_rate: -1\n", "http.body_min_rate"),
        ("http:\n  max_connections: 0\n", "http.max_connections"),
        ("http:\n  max_uploads: 0\n", "http.max_uploads"),
        # A network with host bits set, or a name: uvicorn would silently never match it.
        ("http:\n  trusted_proxies: [10.0.0.1/8]\n", "'10.0.0.1/8' is not an IP address or network"),
        ("http:\n  trusted_proxies: [proxy.internal]\n", "'proxy.internal' is not an IP address or network"),
    ],
)
def test_http_limits_are_checked(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert message in str(info.value)
