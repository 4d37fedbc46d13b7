"""UI sign-in sessions and CSRF tokens.

A session is a record in storage, named by the SHA-256 of a random secret that only the browser holds (the
`moorage_session` cookie: `HttpOnly`, `SameSite=Strict`, `Secure` under TLS, path `/ui`). Every replica reads the
same record, so signing out (deleting it) ends the session at once everywhere; a cookie whose record is missing or
expired names nobody. Signing in always makes a new secret, so a cookie planted before sign-in (session fixation)
never becomes a signed-in session.

Every form carries a CSRF token: an HMAC, under the registry's shared secret, of the session's secret, or before
sign-in of a random nonce kept in the `moorage_csrf` cookie. A POST whose token does not match is refused, and so is
one whose `Origin` header names another site.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass

from registry import paths
from storage_backends import PathNotFound, StorageBackend, StorageError

SESSION_COOKIE = "moorage_session"
CSRF_COOKIE = "moorage_csrf"
COOKIE_PATH = "/ui"
_SECRET_BYTES = 32
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{43}\Z")  # token_urlsafe(32)
_RECORD_LIMIT = 128 * 1024  # a user's groups are kept too (at most 200 names of at most 256 characters)
PRUNE_EVERY_SECONDS = 3600.0
PRUNE_SLACK_SECONDS = 60.0
logger = logging.getLogger("moorage.ui")


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    created: float
    expires: float
    groups: tuple[str, ...] = ()
    source: str = "htpasswd"  # or "ldap", "oidc": where the user signed in (and where its groups come from)


def new_secret() -> str:
    return secrets.token_urlsafe(_SECRET_BYTES)


def well_formed(value: str | None) -> bool:
    return value is not None and _COOKIE_VALUE.match(value) is not None


def _key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Sessions:
    def __init__(self, backend: StorageBackend, ttl: float) -> None:
        self.backend = backend
        self.ttl = ttl
        self._csrf_key = b""

    def use_secret(self, shared_secret: bytes) -> None:
        """The registry's shared secret (every replica's), from which CSRF tokens are derived."""
        self._csrf_key = hmac.new(shared_secret, b"moorage-ui-csrf", hashlib.sha256).digest()

    async def create(
        self, user: str, groups: frozenset[str] = frozenset(), source: str = "htpasswd"
    ) -> tuple[str, Session]:
        """A new session for `user`: the cookie's secret and the record."""
        now = time.time()
        session = Session(user, now, now + self.ttl, tuple(sorted(groups)), source)
        secret = new_secret()
        record = {
            "user": user,
            "created": session.created,
            "expires": session.expires,
            "groups": list(session.groups),
            "source": source,
        }
        body = json.dumps(record).encode()
        await self.backend.put_content(paths.ui_session(_key(secret)), body, exclusive=True)
        return secret, session

    async def get(self, secret: str | None) -> Session | None:
        """The live session of a cookie's secret; None for a malformed, unknown, ended or expired one."""
        if not well_formed(secret):
            return None
        assert secret is not None
        path = paths.ui_session(_key(secret))
        try:
            data = await self.backend.get_content(path)
        except PathNotFound:
            return None
        try:
            body = json.loads(data[:_RECORD_LIMIT])
            groups = body.get("groups", [])
            session = Session(
                str(body["user"]),
                float(body["created"]),
                float(body["expires"]),
                tuple(str(g) for g in groups) if isinstance(groups, list) else (),
                str(body.get("source", "htpasswd")),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if session.expires <= time.time():
            await self.backend.delete_file(path)
            return None
        return session

    async def end(self, secret: str | None) -> None:
        if well_formed(secret):
            assert secret is not None
            await self.backend.delete_file(paths.ui_session(_key(secret)))

    async def prune(self) -> int:
        """Delete the records of sessions past their lifetime that nobody came back to end (by the records' age:
        nothing is read). Returns how many went."""
        try:
            entries = await self.backend.list(paths.UI_SESSIONS)
        except PathNotFound:
            return 0
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.ttl + PRUNE_SLACK_SECONDS)
        pruned = 0
        for entry in entries:
            if not entry.is_dir and entry.modified < cutoff:
                await self.backend.delete_file(entry.path)
                pruned += 1
        return pruned

    def csrf_token(self, bound_to: str) -> str:
        """The token forms carry for the session secret or nonce `bound_to`."""
        assert self._csrf_key, "use_secret first"
        return hmac.new(self._csrf_key, bound_to.encode(), hashlib.sha256).hexdigest()

    def sign(self, purpose: str, value: str) -> str:
        """An HMAC of `value` under a key of its own for `purpose` (derived from the shared secret: a signature
        made for one purpose, or a CSRF token, is never valid for another)."""
        assert self._csrf_key, "use_secret first"
        key = hmac.new(self._csrf_key, b"purpose:" + purpose.encode(), hashlib.sha256).digest()
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

    def signed(self, purpose: str, value: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(purpose, value), signature)

    def csrf_valid(self, bound_to: str | None, token: str | None) -> bool:
        if not bound_to or not token:
            return False
        return hmac.compare_digest(self.csrf_token(bound_to), token)


class SessionPruner:
    """A background service: every PRUNE_EVERY_SECONDS, the expired session records go (any replica may do it; the
    deletes are idempotent)."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ui-session-pruner")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_EVERY_SECONDS)
            try:
                pruned = await self.sessions.prune()
            except StorageError as e:
                logger.warning("ui: could not prune expired sessions: %s", e)
            else:
                if pruned:
                    logger.info("ui: pruned %d expired sessions", pruned)
