"""Users from an htpasswd file with bcrypt entries (`htpasswd -B`), re-read when the file changes."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import time
from pathlib import Path

import bcrypt

logger = logging.getLogger("moorage.auth")
RECHECK_SECONDS = 1.0
BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
DUMMY_ROUNDS = 10


@functools.cache
def _dummy_hash() -> bytes:
    """Checked against when the user is unknown, so that an unknown name costs as long as a wrong password."""
    return bcrypt.hashpw(b"moorage-unknown-user", bcrypt.gensalt(rounds=DUMMY_ROUNDS))


class HtpasswdError(Exception):
    pass


def parse_htpasswd(text: str, source: str) -> dict[str, bytes]:
    """user -> bcrypt hash. Entries in other formats (MD5, SHA-1, crypt) are refused: they are too weak."""
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed:
            raise HtpasswdError(f"{source} line {number}: expected user:hash")
        if not hashed.startswith(BCRYPT_PREFIXES):
            raise HtpasswdError(f"{source} line {number}: user {user!r} has no bcrypt hash (use `htpasswd -B`)")
        users[user] = hashed.encode()
    return users


def _mark(entry: bytes) -> str:
    return hashlib.sha256(b"moorage token binding\0" + entry).hexdigest()[:32]


BCRYPT_MAX_BYTES = 72


def check_password(password: str, hashed: bytes | None) -> bool:
    """bcrypt's own comparison is constant-time; `$2y$` (Apache's) is the same algorithm as `$2b$`. bcrypt reads
    the first 72 bytes of a password (what `htpasswd -B` hashed of a longer one); the bcrypt package refuses longer
    ones, which for the unknown user's dummy check was an error (a 500 that told unknown users from known ones)."""
    candidate = password.encode()[:BCRYPT_MAX_BYTES]
    if hashed is None:
        bcrypt.checkpw(candidate, _dummy_hash())
        return False
    if hashed.startswith(b"$2y$"):
        hashed = b"$2b$" + hashed[4:]
    try:
        return bcrypt.checkpw(candidate, hashed)
    except ValueError:
        return False


class HtpasswdFile:
    """The users of one file; a change to the file (mtime, size or inode) is seen within a second."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._users: dict[str, bytes] = {}
        self._signature: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.generation = 0  # bumped on every reload: cached logins from an older file are not trusted

    def load(self) -> None:
        """Read the file now; raises HtpasswdError when it is missing or malformed."""
        try:
            stat = os.stat(self.path)
            text = self.path.read_text(encoding="utf-8")
        except OSError as e:
            raise HtpasswdError(f"auth.htpasswd.path {self.path}: {e.strerror or e}") from None
        self._users = parse_htpasswd(text, str(self.path))
        self._signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        self._checked = time.monotonic()
        self.generation += 1

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return
        self._checked = now
        try:
            stat = os.stat(self.path)
        except OSError as e:
            logger.warning("htpasswd file %s: %s; keeping the users read before", self.path, e.strerror)
            return
        if (stat.st_mtime_ns, stat.st_size, stat.st_ino) != self._signature:
            try:
                self.load()
            except HtpasswdError as e:
                logger.warning("%s; keeping the users read before", e)
                self._signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def has_user(self, user: str) -> bool:
        self.refresh()
        return user in self._users

    def credential_mark(self, user: str) -> str | None:
        """A mark of the user's entry as it is now (None: no such user), which the tokens issued to the user carry:
        a new password (a new entry) ends the tokens got with the old one, and a removed user's. A digest of the
        stored hash, never the hash: it tells nothing that would help guess the password."""
        self.refresh()
        entry = self._users.get(user)
        return None if entry is None else _mark(entry)

    async def verified_mark(self, user: str, password: str) -> str | None:
        """The mark of the entry `password` matched, None when it did not: the entry checked, never one read after
        the check (a password changed meanwhile must not lend the new entry's mark to the old password). bcrypt on
        a thread: it takes tens to hundreds of milliseconds by design."""
        self.refresh()
        entry = self._users.get(user)
        if not await asyncio.to_thread(check_password, password, entry) or entry is None:
            return None
        return _mark(entry)

    async def verify(self, user: str, password: str) -> bool:
        return await self.verified_mark(user, password) is not None
