"""The `auth:` and `access:` config sections (shapes fixed by the product; the optional keys are ours)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from registry.durations import Seconds

ACTIONS = ("pull", "push", "delete")
ANONYMOUS = "anonymous"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HtpasswdSettings(_Section):
    path: Path = Field(description="An htpasswd file with bcrypt entries (`htpasswd -B`); re-read when it changes.")


class ExternalIssuerSettings(_Section):
    """Bearer tokens signed by another token server, trusted as they are (their `access` claims decide)."""

    issuer: str = Field(description="The `iss` claim of its tokens.")
    public_key: Path | None = Field(default=None, description="PEM public key or certificate(s) of the issuer.")
    jwks: Path | None = Field(default=None, description='A JWKS file (`{"keys": [...]}`) of the issuer.')
    algorithms: list[str] = Field(default=["RS256", "ES256"], min_length=1)
    realm: str | None = Field(
        default=None, description="Its token endpoint: sent in challenges instead of Moorage's own /auth/token."
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> ExternalIssuerSettings:
        if (self.public_key is None) == (self.jwks is None):
            raise ValueError("auth.token.external: set exactly one of public_key and jwks")
        if any(alg.lower() == "none" or alg.upper().startswith("HS") for alg in self.algorithms):
            raise ValueError("auth.token.external.algorithms: only public-key algorithms (RS*, PS*, ES*, EdDSA)")
        return self


class TokenSettings(_Section):
    enabled: bool = False
    service: str = Field(default="moorage", description="The `service` of challenges and the tokens' audience.")
    issuer: str = Field(default="moorage", description="The `iss` claim of tokens Moorage issues.")
    realm: str | None = Field(
        default=None,
        description="Token endpoint URL sent in challenges; default: this server's /auth/token as the client "
        "reached it. Set it behind a proxy that rewrites the host or the scheme.",
    )
    expiry: Seconds = Field(default=300.0, ge=60, description="Lifetime of an access token.")
    refresh_expiry: Seconds = Field(
        default=30 * 86400.0, ge=60, description="Lifetime of a refresh (identity) token from `offline_token`."
    )
    signing_key: Path | None = Field(
        default=None,
        description="PEM private key (EC P-256/384/521, RSA >= 2048, Ed25519). Default: an EC P-256 key generated "
        "once and kept in storage (moorage/auth/token-signing-key.pem), shared by every replica.",
    )
    previous_keys: list[Path] = Field(
        default=[], description="PEM public keys of earlier signing keys: their unexpired tokens stay valid."
    )
    external: ExternalIssuerSettings | None = None

    @model_validator(mode="after")
    def _external_needs_bearer(self) -> TokenSettings:
        if self.external is not None and not self.enabled:
            raise ValueError("auth.token.external needs auth.token.enabled: true (bearer tokens)")
        return self


class RateLimitSettings(_Section):
    failures: int = Field(default=10, ge=1, description="Failed logins allowed per user and client address")
    window: Seconds = Field(default=60.0, description="within this many seconds; then 429 until the window passes.")


class AuthSettings(_Section):
    """Present (even empty) = authentication on; absent = laptop mode, everything open."""

    htpasswd: HtpasswdSettings | None = None
    token: TokenSettings = TokenSettings()
    realm: str = Field(default="moorage", description="The realm of Basic challenges.")
    rate_limit: RateLimitSettings = RateLimitSettings()
    cache_ttl: Seconds = Field(
        default=60.0, description="How long a verified password or token is remembered (per process)."
    )
    admins: list[str] = Field(
        default=[],
        description="Users (names or globs) who may run registry-wide operations from the UI (a GC dry run) and see "
        "its storage page for every repository. Their rights on repositories still come from `access:`.",
    )


class AccessRule(_Section):
    repository: str = Field(description='A glob: "*" matches within one path segment, "**" across segments.')
    users: list[str] = Field(description='Names or globs; "*" = any authenticated user, "anonymous" = no login.')
    actions: list[str]

    @model_validator(mode="after")
    def _known_actions(self) -> AccessRule:
        unknown = [action for action in self.actions if action not in (*ACTIONS, "*")]
        if unknown:
            raise ValueError(f"unknown action {unknown[0]!r} (actions: pull, push, delete, or *)")
        return self
