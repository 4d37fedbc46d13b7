"""Who is calling: an `Authorization` header (Basic or Bearer) turned into a Caller, with short memories so that
bcrypt and signature checks do not run on every request, and with failed logins rate-limited.

CI tokens are the exception to the memory: their record is read from storage on every use, so that revoking one
takes effect at once on every replica.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry.auth.access import (
    ANONYMOUS_IDENTITY,
    AccessRules,
    ClaimsView,
    Identity,
    ListingView,
    RuleView,
    glob_regex,
)
from registry.auth.bearer import (
    CI_TOKEN_CLAIM,
    CREDENTIAL_CLAIM,
    GROUPS_CLAIM,
    KIND_CLAIM,
    PERSONAL_TOKEN_CLAIM,
    SOURCE_CLAIM,
    InvalidToken,
    TokenAuthority,
)
from registry.auth.ci_tokens import CiTokenStore, looks_like_secret, token_records
from registry.auth.directory import Directory
from registry.auth.htpasswd import HtpasswdFile
from registry.auth.personal_tokens import PersonalTokens, looks_like_personal_token
from registry.auth.ratelimit import LoginLimiter, ProcessLimiter
from registry.auth.settings import ANONYMOUS
from registry.errors import RegistryError
from registry.settings import Settings
from storage_backends import StorageBackend

if TYPE_CHECKING:
    from registry.auth.oidc import OidcClient
    from registry.policy.service import Policy
    from registry.routing import Rights

logger = logging.getLogger("moorage.auth")
_CACHE_LIMIT = 10_000
DIRECTORY_DOWN_SECONDS = 5.0


class AuthFailed(Exception):
    """401: no valid credentials. The message is safe to send to the client."""


class TooManyFailures(Exception):
    """429: too many failed logins for this user from this address."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Caller:
    identity: Identity
    claims: ClaimsView | None  # a bearer token's grants; None when the rules decide (basic, anonymous)
    listing: Rights  # what catalog and search show this caller
    bearer: bool = False
    # A token this registry issued: its claims were what the rules allowed then, and hold only as far as the rules
    # (and repository visibility) still allow: a rule revoked takes effect on its tokens too, not at their expiry.
    issued_here: bool = False


@dataclass(frozen=True, slots=True)
class _VerifiedToken:
    claims: dict[str, Any]
    view: ClaimsView
    until: float


class Authenticator:
    def __init__(self, settings: Settings, backend: StorageBackend, limiter: LoginLimiter | None = None) -> None:
        assert settings.auth is not None
        database_url = settings.database.url
        self.settings = settings.auth
        self.rules = AccessRules(settings.access)
        self.htpasswd = HtpasswdFile(self.settings.htpasswd.path) if self.settings.htpasswd else None
        self.ci_tokens = CiTokenStore(token_records(backend, database_url))
        self.failures: LoginLimiter = limiter or ProcessLimiter(
            self.settings.rate_limit.failures, self.settings.rate_limit.window
        )
        self.backend = backend
        self.authority: TokenAuthority | None = None
        self.anonymous = Caller(ANONYMOUS_IDENTITY, None, RuleView(self.rules, ANONYMOUS_IDENTITY))
        self._basic: dict[bytes, tuple[Identity, float, int]] = {}
        self._pending: dict[bytes, asyncio.Future[Identity]] = {}
        self._bearer: dict[str, _VerifiedToken] = {}
        self._static_groups: dict[str, set[str]] = {}
        self._looked_up: dict[str, tuple[Identity | RegistryError | None, float]] = {}
        for group, members in self.settings.groups.items():
            for member in members:
                self._static_groups.setdefault(member, set()).add(group)
        self.policy: Policy | None = None  # set when the policy database is there (registry/policy)
        self.personal_tokens: PersonalTokens | None = None
        self.directory: Directory | None = None  # LDAP (registry/auth/ldap.py)
        self.oidc: OidcClient | None = None  # the UI's single sign-on (registry/auth/oidc.py)

    def static_groups(self, user: str) -> frozenset[str]:
        """The user's groups from `auth.groups`."""
        return frozenset(self._static_groups.get(user, ()))

    async def start(self) -> None:
        if self.htpasswd is not None and self.htpasswd.generation == 0:
            self.htpasswd.load()
        if self.settings.token.enabled:
            self.authority = await TokenAuthority.create(self.settings.token, self.backend)

    async def aclose(self) -> None:
        if self.oidc is not None:
            await self.oidc.aclose()
        self._basic.clear()
        self._bearer.clear()
        await self.failures.aclose()
        self.ci_tokens.records.close()

    @property
    def bearer_enabled(self) -> bool:
        return self.settings.token.enabled

    async def login(self, username: str, password: str, address: str) -> Identity:
        """Check a user name and password (or a CI token's name and secret)."""
        retry_after = await self.failures.retry_after(username, address)
        if retry_after is not None:
            raise TooManyFailures(retry_after)
        identity: Identity | None = None
        if looks_like_secret(password):
            identity = await self.ci_tokens.authenticate(username, password)
        elif looks_like_personal_token(password):
            if self.personal_tokens is not None:
                identity = await self.personal_tokens.authenticate(username, password)
        elif username == ANONYMOUS or not password:
            pass
        elif self.directory is not None and (self.htpasswd is None or not self.htpasswd.has_user(username)):
            # Raises DirectoryUnavailable (503) when the directory cannot be asked: not a failed login.
            identity = await self.directory.authenticate(username, password)
            if identity is not None:
                await self.remember(identity)
        elif self.htpasswd is not None:
            mark = await self.htpasswd.verified_mark(username, password)
            if mark is not None:
                groups = self.static_groups(username)
                identity = Identity("user", username, groups=groups, source="htpasswd", credential=mark)
        if identity is None:
            await self.failures.failed(username, address)
            logger.warning("failed login for user %r from %s", username[:100], address)
            raise AuthFailed("invalid username or password")
        await self.failures.succeeded(username, address)
        return identity

    async def basic(self, encoded: str, address: str) -> Identity:
        key = hashlib.sha256(encoded.encode()).digest()
        generation = 0
        if self.htpasswd is not None:
            self.htpasswd.refresh()
            generation = self.htpasswd.generation
        hit = self._basic.get(key)
        if hit is not None and hit[1] > time.monotonic() and hit[2] == generation:
            # A remembered good login does not skip a lockout: the guesser may have just found the password.
            retry_after = await self.failures.retry_after(hit[0].name, address)
            if retry_after is not None:
                raise TooManyFailures(retry_after)
            return hit[0]
        # Clients open several connections at once with the same credentials: one bcrypt check serves them all.
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._check_basic(encoded, address, key, generation))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    async def _check_basic(self, encoded: str, address: str, key: bytes, generation: int) -> Identity:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise AuthFailed("malformed basic credentials") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise AuthFailed("malformed basic credentials")
        if not username and not password:
            return ANONYMOUS_IDENTITY  # what skopeo sends when it has no credentials for a Basic challenge
        identity = await self.login(username, password, address)
        if identity.kind == "user" and not identity.token_id:  # a personal token is read on every use
            if len(self._basic) >= _CACHE_LIMIT:
                self._basic.clear()
            self._basic[key] = (identity, time.monotonic() + self.settings.cache_ttl, generation)
        return identity

    def _verify(self, token: str) -> _VerifiedToken:
        now = time.monotonic()
        hit = self._bearer.get(token)
        if hit is not None and hit.until > now:
            return hit
        if self.authority is None:
            raise AuthFailed("bearer tokens are not accepted here")
        try:
            claims = self.authority.verify(token)
        except InvalidToken as e:
            logger.info("bearer token refused: %s", e)
            raise AuthFailed("invalid token") from None
        lifetime = float(claims["exp"]) - time.time()
        verified = _VerifiedToken(
            claims, ClaimsView(claims.get("access")), now + min(self.settings.cache_ttl, lifetime)
        )
        if len(self._bearer) >= _CACHE_LIMIT:
            self._bearer.clear()
        self._bearer[token] = verified
        return verified

    async def bearer(self, token: str) -> Caller:
        verified = self._verify(token)
        claims = verified.claims
        subject = str(claims.get("sub") or "")
        kind = claims.get(KIND_CLAIM)
        if kind == "external":
            identity = Identity("external", subject) if subject else ANONYMOUS_IDENTITY
            return Caller(identity, verified.view, ListingView(verified.view), bearer=True)
        if kind == "ci":
            record = await self.ci_tokens.get(subject)
            if record is None or record.id != claims.get(CI_TOKEN_CLAIM) or record.expired():
                raise AuthFailed("the CI token this token was issued to has been revoked or has expired")
            identity = record.identity()
        elif subject:
            pat = claims.get(PERSONAL_TOKEN_CLAIM)
            if pat is not None:
                # Issued to a personal token: that very token, still there, and its scopes (never the whole user).
                found = await self.personal_identity(str(pat), subject)
                if found is None:
                    raise AuthFailed("the personal token this token was issued to has been revoked or has expired")
                identity = found
            else:
                groups = claims.get(GROUPS_CLAIM)
                group_names = (
                    frozenset(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else frozenset()
                )
                source = claims.get(SOURCE_CLAIM)
                source = source if isinstance(source, str) else ""
                credential = ""
                if self.htpasswd is not None and source in ("htpasswd", ""):
                    # Got with the htpasswd file's password: that password still the user's (Basic's rule).
                    credential = self.htpasswd.credential_mark(subject) or ""
                    if not credential or claims.get(CREDENTIAL_CLAIM) != credential:
                        raise AuthFailed("the user's password changed or the user was removed: get a new token")
                identity = Identity("user", subject, groups=group_names, source=source, credential=credential)
        else:
            identity = ANONYMOUS_IDENTITY
        return Caller(identity, verified.view, RuleView(self.rules, identity), bearer=True, issued_here=True)

    async def identify(self, authorization: str | None, address: str) -> Caller:
        """The caller of a request; raises AuthFailed or TooManyFailures."""
        if not authorization:
            return self.anonymous
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            identity = await self.basic(credentials.strip(), address)
            return Caller(identity, None, RuleView(self.rules, identity))
        if scheme == "bearer":
            return await self.bearer(credentials.strip())
        raise AuthFailed(f"unsupported authorization scheme {scheme[:20]!r}")

    async def personal_identity(self, token_id: str, owner: str) -> Identity | None:
        """What a token issued to personal token `token_id` of `owner` acts as now (None: revoked, expired, or its
        owner is gone)."""
        if self.personal_tokens is None:
            return None
        return await self.personal_tokens.identity_of(token_id, owner)

    async def owner_groups(self, owner: str, source: str) -> frozenset[str] | None:
        """The groups a personal token of `owner` (who signed in through `source`) acts with now; None when the
        owner may no longer use tokens: removed from the htpasswd file, gone from the directory, not signed in
        through the identity provider for `auth.oidc.token_sign_in_within`, or the name now someone else's."""
        if source == "htpasswd":
            has = self.htpasswd is not None and self.htpasswd.has_user(owner)
            return self.static_groups(owner) if has else None
        if self.policy is None or (self.htpasswd is not None and self.htpasswd.has_user(owner)):
            return None
        db = await self.policy.database()
        known = await self.policy.run(db.known_user, owner)
        if known is None or known.source != source:
            return None
        if source == "ldap" and self.directory is not None:
            found = await self.directory_lookup(owner)
            return found.groups if found is not None else None
        if source == "oidc" and self.oidc is not None:
            fresh = time.time() - known.seen_at <= self.oidc.settings.token_sign_in_within
            if not fresh or await self.directory_holds(owner):
                return None
            return known.groups
        return None

    async def directory_holds(self, name: str) -> bool:
        """Whether the directory (when there is one) has a user of this name; raises its 503."""
        return self.directory is not None and await self.directory_lookup(name) is not None

    async def directory_lookup(self, name: str) -> Identity | None:
        """The directory's user now (groups included), remembered for `auth.cache_ttl`; raises its 503."""
        assert self.directory is not None
        now = time.monotonic()
        hit = self._looked_up.get(name)
        if hit is not None and hit[1] > now:
            if isinstance(hit[0], RegistryError):
                raise hit[0]
            return hit[0]
        if len(self._looked_up) >= _CACHE_LIMIT:
            self._looked_up.clear()
        try:
            found = await self.directory.lookup(name)
        except RegistryError as e:
            # The directory cannot answer: said again for a few seconds without asking (each ask may wait
            # ldap.timeout), not remembered as an answer.
            self._looked_up[name] = (e, now + min(self.settings.cache_ttl, DIRECTORY_DOWN_SECONDS))
            raise
        self._looked_up[name] = (found, now + self.settings.cache_ttl)
        return found

    async def remember(self, identity: Identity) -> bool:
        """Record a directory's or an identity provider's user (their personal tokens act with their groups);
        False when the name is an htpasswd user's, or a directory user's and this is the identity provider's."""
        if self.htpasswd is not None and self.htpasswd.has_user(identity.name):
            return False
        if identity.source == "oidc" and await self.directory_holds(identity.name):
            return False  # the directory's user, signed in before or not (503 while it cannot say)
        if self.policy is None:
            return True
        try:
            db = await self.policy.database()
            return await self.policy.run(db.remember_user, identity.name, identity.source, identity.groups)
        except RegistryError as e:
            logger.warning("could not record the sign-in of %r: %s", identity.name, e.message)
            if identity.source == "oidc":
                raise  # whose the name is cannot be told: no sign-in
            return True

    def caller_of(self, identity: Identity) -> Caller:
        """The caller an identity signed in another way (a UI session) is: the rules decide its rights."""
        if identity.kind == "anonymous":
            return self.anonymous
        return Caller(identity, None, RuleView(self.rules, identity))

    def is_admin(self, identity: Identity) -> bool:
        """Whether `auth.admins` names this user or `auth.admin_groups` one of its groups (registry-wide operations:
        GC dry runs, every repository's usage, the admin API). A token with scopes of its own is never an admin."""
        if identity.kind != "user" or identity.grants:
            return False
        # By name only for the file's and the directory's users: an identity provider's are admins by group.
        by_name = identity.source in ("htpasswd", "ldap") or (identity.source == "" and self.oidc is None)
        named = by_name and any(glob_regex(p, segments=False).match(identity.name) for p in self.settings.admins)
        return named or any(
            glob_regex(pattern, segments=False).match(group)
            for pattern in self.settings.admin_groups
            for group in identity.groups
        )

    def may(self, caller: Caller, repository: str, action: str) -> bool:
        if caller.claims is not None:
            if not caller.claims.allows(repository, action):
                return False
            if not caller.issued_here:
                return True  # an external issuer's token is taken at its word
        return action in self.rules.actions(caller.identity, repository)

    def rules_allow(self, identity: Identity, repository: str, action: str) -> bool:
        return identity.kind != "external" and action in self.rules.actions(identity, repository)
