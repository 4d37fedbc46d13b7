"""Wiring this feature into the app (called by registry.app.create_app)."""

from __future__ import annotations

from starlette.applications import Starlette

from registry.auth.access import Visibility
from registry.auth.authenticator import Authenticator
from registry.auth.guard import AccessGuard
from registry.auth.htpasswd import HtpasswdError
from registry.auth.personal_tokens import PersonalTokens
from registry.auth.ratelimit import SharedLimiter
from registry.database import postgres_engine
from registry.policy.database import PolicySnapshot
from registry.policy.service import Policy
from registry.policy.setup import POLICY_STATE
from registry.routing import GUARD_STATE
from registry.services import Service
from registry.settings import ConfigError, Settings
from registry.store.registry import Registry

AUTH_STATE = "auth"


def install(app: Starlette, settings: Settings, registry: Registry) -> Service | None:
    """Laptop mode (no `auth:` section): no guard, routes check only the read-only switch. Else the access guard
    every route consults after routing, and the authenticator as a service (it loads the token signing key)."""
    setattr(app.state, AUTH_STATE, None)
    setattr(app.state, GUARD_STATE, None)
    app.state.oidc = None
    if settings.auth is None:
        return None
    limiter = None
    url = settings.database.url
    if url is not None and url.startswith(("postgresql://", "postgres://")):
        # Failed logins counted once for every replica, in the shared database.
        rate = settings.auth.rate_limit
        limiter = SharedLimiter(lambda: postgres_engine(url), rate.failures, rate.window)
    authenticator = Authenticator(settings, registry.backend, limiter)
    if settings.auth.oidc is not None:
        from registry.auth.oidc import OidcClient  # only where single sign-on is configured

        authenticator.oidc = OidcClient(settings.auth.oidc)
        app.state.oidc = authenticator.oidc
    if settings.auth.ldap is not None:
        from registry.auth.ldap import LdapDirectory  # only where a directory is configured

        authenticator.directory = LdapDirectory(settings.auth.ldap)
    if authenticator.htpasswd is not None:
        try:
            authenticator.htpasswd.load()  # a missing or malformed file stops the start, with its name
        except HtpasswdError as e:
            raise ConfigError(str(e)) from None
    policy: Policy | None = getattr(app.state, POLICY_STATE, None)
    if policy is not None:
        # The config's rules, and those of the admin API on top, replaced whenever the policy changes.
        config_rules = list(settings.access)

        def apply(snapshot: PolicySnapshot) -> None:
            visibility = [Visibility(v.repository, bool(v.value)) for v in snapshot.visibility]
            rules = [*config_rules, *(r.rule for r in snapshot.rules)]
            # Until the policy database was read once, nothing may be more open than it could say.
            authenticator.rules.replace(rules, visibility, all_private=snapshot.version == 0)

        policy.listen(apply)
        authenticator.policy = policy
        authenticator.personal_tokens = PersonalTokens(policy, authenticator.owner_groups)
        app.state.personal_tokens = authenticator.personal_tokens
    setattr(app.state, AUTH_STATE, authenticator)
    setattr(app.state, GUARD_STATE, AccessGuard(authenticator))
    return authenticator
