"""Typed configuration. Sources, lowest first: defaults, a YAML file, `MOORAGE_<SECTION>__<KEY>` variables.

The YAML file is `--config FILE`, else `$MOORAGE_CONFIG`, else `config/moorage.yml` when it exists.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from registry.auth.settings import AccessRule, AuthSettings
from registry.durations import Seconds
from registry.gc.settings import GcSettings, ImmutableTagRule, RetentionRule, UploadsSettings
from registry.index.settings import DatabaseSettings, IndexSettings
from registry.policy.settings import PolicySettings, QuotaRule
from registry.proxy.settings import ProxySettings
from registry.ui.settings import UiSettings

DEFAULT_CONFIG_FILE = Path("config/moorage.yml")
CONFIG_ENV = "MOORAGE_CONFIG"
ENV_PREFIX = "MOORAGE_"


class ConfigError(Exception):
    """A configuration problem, phrased for one line of output."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsSettings(Section):
    certificate: Path
    key: Path


class HttpSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=5000, ge=0, le=65535)
    secret: str | None = Field(
        default=None,
        min_length=16,
        description="Signs upload-session state; every worker and replica must share it. Random if unset.",
    )
    access_log: bool = True
    workers: int = Field(default=1, ge=1, le=64, description="Worker processes; `--workers` overrides.")
    drain_timeout: int = Field(default=30, ge=0, description="Seconds in-flight requests may take after SIGTERM.")
    tls: TlsSettings | None = Field(default=None, description="Serve HTTPS with this certificate and key.")
    # Bounds on what one client may make the server hold (registry/http_limits.py); per worker process.
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Request line plus headers; larger heads are answered 431. Fits large bearer tokens.",
    )
    header_timeout: Seconds = Field(default=30.0, description="Time to receive a complete request head.")
    body_idle_timeout: Seconds = Field(default=60.0, description="A request body silent this long is cut.")
    body_min_rate: int = Field(
        default=1024, ge=0, description="Bytes/s a request body must average over body_rate_window; 0: no floor."
    )
    body_rate_window: Seconds = Field(default=30.0, description="The sliding window body_min_rate is measured over.")
    send_timeout: Seconds = Field(
        default=60.0, description="A response the client takes no bytes of for this long is cut (a stalled reader)."
    )
    send_min_rate: int = Field(
        default=1024,
        ge=0,
        description="Bytes/s a client must take a response at, on average over send_rate_window; 0: no floor.",
    )
    send_rate_window: Seconds = Field(default=30.0, description="The sliding window send_min_rate is measured over.")
    max_connections: int = Field(
        default=1024, ge=1, description="Open connections; beyond it new ones are answered 503 and closed."
    )
    max_uploads: int = Field(
        default=512, ge=1, description="Upload requests (POST/PATCH/PUT under /blobs/uploads) served at once."
    )
    trusted_proxies: list[str] = Field(
        default=[],
        description="Addresses or CIDRs whose X-Forwarded-For/-Proto are believed; empty: nobody's.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, proxies: list[str]) -> list[str]:
        # uvicorn would take a malformed entry as a literal host name and silently never match it.
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy)
            except ValueError as e:
                raise ValueError(f"{proxy!r} is not an IP address or network ({e})") from None
        return proxies


class FilesystemSettings(Section):
    root: Path = Path("./data")
    fsync: bool = True


class S3Settings(Section):
    bucket: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    prefix: str = ""
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    path_style: bool = False
    part_size: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    server_side_encryption: Literal["AES256", "aws:kms"] | None = None
    sse_kms_key_id: str | None = None
    storage_class: str | None = None
    max_connections: int = Field(default=64, ge=1)
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    conditional_writes: bool | None = None


class RedirectSettings(Section):
    disable: bool = False
    expiry_seconds: int = Field(default=1200, ge=60)


class StorageSettings(Section):
    backend: Literal["filesystem", "s3"] = "filesystem"
    filesystem: FilesystemSettings = FilesystemSettings()
    s3: S3Settings = S3Settings()
    redirect: RedirectSettings = RedirectSettings()
    delete: bool = True
    manifest_max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _backend_is_configured(self) -> StorageSettings:
        if self.backend == "s3" and not self.s3.bucket:
            raise ValueError("storage.s3.bucket is required when storage.backend is s3")
        return self


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    format: Literal["auto", "json", "text"] = Field(
        default="auto", description="`auto`: text when standard error is a terminal, else JSON lines."
    )


class MaintenanceSettings(Section):
    read_only: bool = Field(default=False, description="Refuse every write with 503; reads keep working.")


class MetricsSettings(Section):
    enabled: bool = True
    host: str | None = Field(default=None, description="Address of the separate metrics port; default http.host.")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve /metrics on this port instead of the registry's."
    )
    username: str | None = None
    password: SecretStr | None = None
    repository_names: bool | None = Field(
        default=None,
        description=(
            "Series labelled with repository names (the quota gauges). Default: only where /metrics shows nobody "
            "more than the registry does: auth off, or metrics.username/password set."
        ),
    )

    def shows_repository_names(self, *, auth: bool) -> bool:
        """Whether series may name repositories: a scrape without credentials must not list private ones."""
        if self.repository_names is not None:
            return self.repository_names
        return not auth or self.username is not None

    @model_validator(mode="after")
    def _credentials_come_in_pairs(self) -> MetricsSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("metrics.username and metrics.password are set together or not at all")
        return self


class IgnoreSettings(Section):
    mediatypes: list[str] = []
    actions: list[Literal["push", "pull", "delete", "mount"]] = []


class EndpointSettings(Section):
    """One webhook receiver, as in Distribution's `notifications.endpoints[]`."""

    name: str
    url: str
    disabled: bool = False
    headers: dict[str, list[str] | str] = {}
    timeout: Seconds = 5.0
    threshold: int = Field(default=5, ge=1, description="Failures in a row before retries slow down to `backoff`.")
    backoff: Seconds = 10.0
    ignoredmediatypes: list[str] = []
    ignore: IgnoreSettings = IgnoreSettings()


class NotificationsSettings(Section):
    endpoints: list[EndpointSettings] = []
    blobs: bool = Field(
        default=False, description="Also send blob events (every layer push and pull), not only manifests."
    )
    queue_path: Path = Field(
        default=Path("moorage-notifications.sqlite3"),
        description="SQLite file holding undelivered events across restarts (local to this host); with a PostgreSQL "
        "`database.url`, the database holds them instead, shared by every replica.",
    )

    @model_validator(mode="after")
    def _names_are_unique(self) -> NotificationsSettings:
        names = [endpoint.name for endpoint in self.endpoints]
        if len(names) != len(set(names)):
            raise ValueError("notifications.endpoints: every endpoint needs its own name")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    http: HttpSettings = HttpSettings()
    storage: StorageSettings = StorageSettings()
    log: LogSettings = LogSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    metrics: MetricsSettings = MetricsSettings()
    notifications: NotificationsSettings = NotificationsSettings()
    auth: AuthSettings | None = Field(default=None, description="Absent: no authentication (laptop mode).")
    access: list[AccessRule] = []
    index: IndexSettings = IndexSettings()
    database: DatabaseSettings = DatabaseSettings()
    gc: GcSettings = GcSettings()
    uploads: UploadsSettings = UploadsSettings()
    retention: list[RetentionRule] = []
    immutable_tags: list[ImmutableTagRule] = []
    ui: UiSettings = UiSettings()
    proxy: ProxySettings = ProxySettings()
    quotas: list[QuotaRule] = []
    policy: PolicySettings = PolicySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs (see load_settings); the environment overrides it.
        return env_settings, init_settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    return data


def config_file_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    problem = first["msg"]
    if first["type"] == "extra_forbidden":
        problem = "unknown key"
    elif "input" in first and not isinstance(first["input"], dict):
        problem = f"{problem} (got {first['input']!r})"
    more = len(error.errors()) - 1
    return f"{key}: {problem}" + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _check_environment_sections() -> None:
    """pydantic-settings ignores `MOORAGE_<X>__...` when X is not a section: a typo must not pass silently."""
    sections = set(Settings.model_fields)
    for name in os.environ:
        if name.startswith(ENV_PREFIX) and "__" in name:
            section = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
            if section not in sections:
                raise ConfigError(f"{name}: unknown section {section!r} (sections: {', '.join(sorted(sections))})")


def load_settings(config_file: str | os.PathLike[str] | None = None) -> Settings:
    """Build the settings, or raise ConfigError naming the key and the problem."""
    _check_environment_sections()
    path = config_file_path(config_file)
    data = _read_yaml(path) if path else {}
    try:
        return Settings(**data)
    except ValidationError as e:
        where = f" (config file {path} and MOORAGE_* environment)" if path else " (MOORAGE_* environment)"
        raise ConfigError(_describe(e) + where) from None


def local_database_file(settings: Settings, configured: Path | None, layout_path: str, folder: str) -> Path:
    """Where a feature's SQLite file lives when `database.url` is not set: `configured`, else beside the data on
    the filesystem backend (`layout_path` under the root), else a file of this bucket's own in the temporary
    directory (`folder`) on S3."""
    if configured is not None:
        return configured
    storage = settings.storage
    if storage.backend == "filesystem":
        return storage.filesystem.root / layout_path
    where = f"{storage.s3.endpoint_url or 'aws'}|{storage.s3.region or ''}|{storage.s3.bucket}|{storage.s3.prefix}"
    digest = hashlib.sha256(where.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / folder / f"{storage.s3.bucket}-{digest}.sqlite"
