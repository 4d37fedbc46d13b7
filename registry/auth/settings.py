"""The `auth:` and `access:` config sections (shapes fixed by the product; the optional keys are ours)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from registry.durations import Seconds

ACTIONS = ("pull", "push", "delete")


def check_pattern(pattern: str) -> None:
    """A repository glob's limits (registry.auth.access.check_pattern), imported late: that module imports this."""
    from registry.auth.access import check_pattern as check

    check(pattern)


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


class LdapSettings(_Section):
    """Sign in against an LDAP directory: users and their groups."""

    url: str = Field(
        pattern=r"^ldaps?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?/?$",
        description="`ldap://host:389` or `ldaps://host:636`.",
    )
    start_tls: bool = Field(default=False, description="Upgrade an ldap:// connection with StartTLS.")
    ca_file: Path | None = Field(default=None, description="CA certificates (PEM) to verify the server's with.")
    bind_dn: str | None = Field(default=None, description="The service account that looks users up (else anonymous).")
    bind_password: SecretStr | None = None
    user_base: str = Field(description="Where users are: `ou=people,dc=example,dc=org`.")
    user_filter: str = Field(default="(uid={username})", description="`{username}` is the login name, escaped.")
    group_base: str | None = Field(default=None, description="Where groups are; none: users have no groups.")
    group_filter: str = Field(
        default="(member={dn})",
        description="`{dn}` is the user's entry, `{username}` the login name: "
        "`(member={dn})` for groupOfNames, `(memberUid={username})` for posixGroup.",
    )
    group_attribute: str = Field(default="cn", description="The attribute that holds a group's name.")
    timeout: Seconds = Field(default=5.0, description="Connecting and each answer.")


class OidcSettings(_Section):
    """Sign in to the UI through an OpenID Connect provider (authorization code + PKCE); people who do make personal
    access tokens there for `docker login`."""

    issuer: str = Field(pattern=r"^https?://", description="The provider's issuer URL (discovery is read from it).")
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = Field(default=None, description="None: a public client (PKCE alone).")
    username_claim: str = Field(
        default="preferred_username",
        description="The ID token claim that names the user: one users cannot choose themselves (names are shared "
        "with htpasswd and LDAP users; a name either holds is refused here).",
    )
    username_prefix: str = Field(
        default="", max_length=64, description="Put before every OIDC user name (`sso-`): a namespace of their own."
    )
    token_sign_in_within: Seconds = Field(
        default=30 * 86400.0,
        description="An OIDC user's personal tokens work while they signed in within this long (the provider cannot "
        "be asked whether they still may).",
    )
    groups_claim: str = Field(default="groups", description="The ID token claim that lists the user's groups.")
    scopes: list[str] = Field(default=["openid", "profile", "email", "groups"], min_length=1)
    redirect_url: str | None = Field(
        default=None,
        description="This registry's callback as registered with the provider; default: /ui/auth/callback on the "
        "host and scheme the browser used.",
    )
    display_name: str = Field(default="single sign-on", max_length=60, description="On the sign-in button.")
    timeout: Seconds = 10.0

    @model_validator(mode="after")
    def _openid_scope(self) -> OidcSettings:
        if "openid" not in self.scopes:
            raise ValueError("auth.oidc.scopes must include openid")
        return self


class RateLimitSettings(_Section):
    failures: int = Field(default=10, ge=1, description="Failed logins allowed per user and client address")
    window: Seconds = Field(default=60.0, description="within this many seconds; then 429 until the window passes.")


class AuthSettings(_Section):
    """Present (even empty) = authentication on; absent = laptop mode, everything open."""

    htpasswd: HtpasswdSettings | None = None
    ldap: LdapSettings | None = None
    oidc: OidcSettings | None = None
    token: TokenSettings = TokenSettings()
    realm: str = Field(default="moorage", description="The realm of Basic challenges.")
    rate_limit: RateLimitSettings = RateLimitSettings()
    cache_ttl: Seconds = Field(
        default=60.0, description="How long a verified password or token is remembered (per process)."
    )
    groups: dict[str, list[str]] = Field(
        default={},
        description="Groups of htpasswd users (`developers: [alice, bob]`), for access rules' `groups:`. Users who "
        "sign in through LDAP or OIDC get their groups from there.",
    )
    admins: list[str] = Field(
        default=[],
        description="Users (names or globs) who may run registry-wide operations from the UI (a GC dry run), see "
        "its storage page for every repository, and change access rules, visibility, quotas and others' tokens "
        "through the admin API (/api/v1/access-rules, ...). Their rights on repositories still come from the rules.",
    )
    admin_groups: list[str] = Field(default=[], description="Groups (names or globs) whose members are admins.")


class AccessRule(_Section):
    repository: str = Field(
        min_length=1, max_length=256, description='A glob: "*" matches within one path segment, "**" across segments.'
    )
    users: list[str] = Field(
        default=[], max_length=1000, description='Names or globs; "*" = any authenticated user, "anonymous" = no login.'
    )
    groups: list[str] = Field(
        default=[],
        max_length=1000,
        description="Group names or globs: members of any of them (`auth.groups`, the directory's groups, the "
        "OIDC groups claim).",
    )
    actions: list[str] = Field(min_length=1, max_length=10)

    @model_validator(mode="after")
    def _known_actions(self) -> AccessRule:
        unknown = [action for action in self.actions if action not in (*ACTIONS, "*")]
        if unknown:
            raise ValueError(f"unknown action {unknown[0]!r} (actions: pull, push, delete, or *)")
        if not self.users and not self.groups:
            raise ValueError("a rule names users, groups or both")
        for name in (*self.users, *self.groups):
            if not name or len(name) > 256 or any(ord(c) < 32 for c in name):
                raise ValueError(f"invalid user or group name {name[:40]!r}")
        return self
