"""Personal access tokens: secrets a signed-in user makes (in the UI, with `moorage token`, or through the API) for
`docker login` and CI, each with scopes that narrow the user's rights, an optional expiry, revocable at once.

A token acts as its owner: its rights are what the rules give the owner (and the owner's groups, as last seen at a
sign-in through the directory or the identity provider, or from `auth.groups`) within the token's scopes. Only a
SHA-256 hash of the secret is kept (256 random bits: nothing to guess from); the record is read on every use, so a
revoked token stops working at once on every replica. The secret names its record: `moorage_pat_<id>_<random>`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from registry.auth.access import Grant, Identity, Scope, ScopeError
from registry.policy.database import Actor, StoredToken, new_id
from registry.policy.service import Policy

SECRET_PREFIX = "moorage_pat_"
_SECRET = re.compile(r"moorage_pat_([0-9a-f]{16})_[A-Za-z0-9_-]{43}\Z")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}\Z")
MAX_TOKENS_PER_USER = 100
MAX_SCOPES = 50
MAX_PATTERN = 256
USED_EVERY_SECONDS = 60.0


class TokenError(ValueError):
    pass


def looks_like_personal_token(password: str) -> bool:
    return password.startswith(SECRET_PREFIX)


def _hash(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(scopes: list[str]) -> tuple[Grant, ...]:
    try:
        grants = tuple(dict.fromkeys(Grant.from_scope(scope) for scope in Scope.parse_many(scopes)))
    except ScopeError as e:
        raise TokenError(str(e)) from None
    if not grants:
        raise TokenError("a token needs at least one scope ('repository:NAME:pull,push')")
    if len(grants) > MAX_SCOPES:
        raise TokenError(f"at most {MAX_SCOPES} scopes per token")
    if any(len(grant.pattern) > MAX_PATTERN for grant in grants):
        raise TokenError(f"a scope's repository pattern is at most {MAX_PATTERN} characters")
    return grants


OwnerGroups = Callable[[str, str], Awaitable[frozenset[str] | None]]


class PersonalTokens:
    def __init__(self, policy: Policy, owner_groups: OwnerGroups) -> None:
        """`owner_groups(owner, source)`: the groups a token of that owner acts with now, or None when the owner
        may no longer use tokens (registry.auth.authenticator.Authenticator.owner_groups)."""
        self.policy = policy
        self.owner_groups = owner_groups

    async def create(
        self, owner: Identity, name: str, scopes: list[str], lifetime: float | None, actor: Actor
    ) -> tuple[StoredToken, str]:
        """A token for `owner`, a signed-in user (with the source it signed in through)."""
        self.policy.require_durable()
        if owner.kind != "user" or owner.source not in ("htpasswd", "ldap", "oidc"):
            raise TokenError("personal tokens are for users who signed in with a password or single sign-on")
        if not _NAME.match(name):
            raise TokenError("a token's name: letters, digits, spaces, '.', '_', '-'; at most 128")
        grants = parse_scopes(scopes)
        if len(await self.list(owner.name)) >= MAX_TOKENS_PER_USER:
            raise TokenError(f"at most {MAX_TOKENS_PER_USER} tokens per user: revoke some first")
        token_id = new_id()
        secret = f"{SECRET_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        now = time.time()
        token = StoredToken(
            id=token_id,
            owner=owner.name,
            name=name,
            hash=_hash(secret),
            scopes=tuple(str(grant) for grant in grants),
            created_at=now,
            expires_at=now + lifetime if lifetime else None,
            last_used=None,
            owner_source=owner.source,
        )
        db = await self.policy.database()
        await self.policy.run(db.add_token, token, actor)
        return token, secret

    async def get(self, token_id: str) -> StoredToken | None:
        if not re.fullmatch(r"[0-9a-f]{16}", token_id):
            return None
        db = await self.policy.database()
        return await self.policy.run(db.token, token_id)

    async def list(self, owner: str | None) -> list[StoredToken]:
        db = await self.policy.database()
        return await self.policy.run(db.tokens, owner)

    async def revoke(self, token_id: str, actor: Actor) -> bool:
        db = await self.policy.database()
        return await self.policy.run(db.delete_token, token_id, actor)

    async def authenticate(self, username: str, secret: str) -> Identity | None:
        """The owner's identity, narrowed to the token's scopes; None for anything else (unknown, revoked,
        expired, another user's)."""
        match = _SECRET.match(secret)
        if match is None:
            return None
        token = await self.get(match.group(1))
        if token is None or token.owner != username or token.expired():
            return None
        if not hmac.compare_digest(token.hash.encode(), _hash(secret).encode()):
            return None
        identity = await self._identity(token)
        now = time.time()
        if identity is not None and (token.last_used is None or now - token.last_used > USED_EVERY_SECONDS):
            db = await self.policy.database()
            await self.policy.run(db.token_used, token.id, now)
        return identity

    async def _identity(self, token: StoredToken) -> Identity | None:
        groups = await self.owner_groups(token.owner, token.owner_source)
        if groups is None:
            return None
        grants = tuple(Grant.from_scope(Scope.parse(text), check=False) for text in token.scopes)
        return Identity("user", token.owner, grants, token.id, groups, token.owner_source)

    async def identity_of(self, token_id: str, owner: str) -> Identity | None:
        """For bearer tokens issued to a personal token: what it acts as now, with its scopes; None once it is
        revoked or expired, or its owner may no longer use it."""
        token = await self.get(token_id)
        if token is None or token.owner != owner or token.expired():
            return None
        return await self._identity(token)
