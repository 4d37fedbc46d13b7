"""The `proxy:` config section: upstream registries whose images Moorage caches (pull-through)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from registry.durations import Seconds
from registry.names import NAME_RE
from registry.sizes import Bytes, BytesOrZero

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UpstreamSettings(_Section):
    name: str = Field(description="What metrics, logs and the catalog call this upstream.")
    url: str = Field(description="The upstream's base URL: `https://registry-1.docker.io`, `http://127.0.0.1:5001`.")
    prefix: str = Field(
        default="",
        description="Repositories under `<prefix>/` come from this upstream, the prefix taken off. Empty: docker's "
        "`registry-mirrors` mode, for names no local repository has (at most one upstream).",
    )
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = Field(default=None, description="A file holding the password (a mounted secret).")
    tag_ttl: Seconds = Field(default=300.0, description="A cached tag is checked upstream (a HEAD) once this old.")
    evict_after: Seconds | None = Field(
        default=None,
        description="GC removes a cached repository not pulled for this long (its blobs go as any unreferenced "
        "blob); never when unset.",
    )
    max_bytes: Bytes | None = Field(
        default=None,
        description="`10GiB`: beyond this, GC removes this upstream's cached repositories, the least recently pulled "
        "first (each counted whole: a layer two of them share counts twice).",
    )
    insecure: bool = Field(default=False, description="https without certificate verification.")
    ca_file: Path | None = Field(default=None, description="CA certificates the upstream's TLS certificate chains to.")
    allow_push: bool = Field(default=False, description="Let clients push into this prefix (refused: 405).")
    timeout: Seconds = Field(default=30.0, description="Connect and read timeout of each upstream request.")
    attempts: int = Field(default=3, ge=1, le=10, description="Tries of a request that fails on the network or 5xx.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("an upstream's name is letters, digits, `.`, `_` and `-` (at most 63)")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not re.match(r"^https?://[^/\s@]+$", value):
            raise ValueError("an upstream's url is http(s)://host[:port], without a path or credentials")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        if value and not NAME_RE.match(value):
            raise ValueError("a prefix is one or more repository name components (`dockerhub`, `mirrors/ghcr`)")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> UpstreamSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password needs a username")
        return self


class ProxySettings(_Section):
    upstreams: list[UpstreamSettings] = []
    max_fills: int = Field(default=64, ge=1, description="Blobs fetched from upstreams at once, per process.")
    min_rate: int = Field(
        default=65536, ge=0, description="Bytes/s an upstream must send a blob at (over 30 s), or the fetch stops."
    )
    spool_dir: Path | None = Field(
        default=None,
        description="Where blobs being fetched are spooled while clients stream them, when not in memory (default: "
        "the temp directory).",
    )
    spool_memory: BytesOrZero | None = Field(
        default=None,
        description="How many bytes of blobs being fetched may be spooled in memory at once (a blob that does not fit "
        "in what is left spools in spool_dir); 0: always on disk. Default: an eighth of the memory this process may "
        "use (its cgroup's limit or the machine's), at most 2 GiB, divided among the http.workers processes.",
    )

    @model_validator(mode="after")
    def _distinct(self) -> ProxySettings:
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ValueError("two upstreams have the same name")
        prefixes = [u.prefix for u in self.upstreams]
        if prefixes.count("") > 1:
            raise ValueError("at most one upstream may have an empty prefix (the registry-mirrors one)")
        for i, a in enumerate(prefixes):
            for j, b in enumerate(prefixes):
                if i != j and a and b and (a == b or b.startswith(a + "/")):
                    raise ValueError(f"upstream prefixes {a!r} and {b!r} overlap")
        return self


def evictions(settings: ProxySettings) -> dict[str, float]:
    """Upstream name -> `evict_after`, for the upstreams that have one (what GC evicts)."""
    return {u.name: u.evict_after for u in settings.upstreams if u.evict_after is not None}


def budgets(settings: ProxySettings) -> dict[str, int]:
    """Upstream name -> `max_bytes`, for the upstreams that have one."""
    return {u.name: u.max_bytes for u in settings.upstreams if u.max_bytes is not None}
