"""Failed logins, counted per user and client address: past the limit, every attempt is refused until the window
has passed since the first counted failure, right password or not (so a guesser learns nothing meanwhile)."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from registry.database import DATABASE_ERRORS, Engine

T = TypeVar("T")
logger = logging.getLogger("moorage.auth")
_MAX_KEYS = 100_000
# One address guessing many user names is limited too, more loosely (several people may share a NAT).
ADDRESS_FACTOR = 5
_ANY_USER = "\x00any"


class FailedLogins:
    def __init__(self, failures: int, window: float) -> None:
        self.failures = failures
        self.window = window
        self._counts: dict[tuple[str, str], tuple[float, int]] = {}

    def _live(self, key: tuple[str, str], now: float) -> tuple[float, int]:
        started, count = self._counts.get(key, (now, 0))
        if now - started >= self.window:
            self._counts.pop(key, None)
            return now, 0
        return started, count

    def retry_after(self, user: str, address: str) -> int | None:
        """Seconds to wait when this user, or this address, is locked out; None when it may try."""
        now = time.monotonic()
        for key, limit in (((user, address), self.failures), ((_ANY_USER, address), self.failures * ADDRESS_FACTOR)):
            started, count = self._live(key, now)
            if count >= limit:
                return max(1, math.ceil(self.window - (now - started)))
        return None

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        if len(self._counts) >= _MAX_KEYS:
            self._counts = {k: v for k, v in self._counts.items() if now - v[0] < self.window}
        for key in ((user, address), (_ANY_USER, address)):
            started, count = self._live(key, now)
            self._counts[key] = (started, count + 1)

    def succeeded(self, user: str, address: str) -> None:
        self._counts.pop((user, address), None)


class LoginLimiter(Protocol):
    """Failed-login accounting as the authenticator uses it (in this process, or shared by every replica)."""

    async def retry_after(self, user: str, address: str) -> int | None: ...

    async def failed(self, user: str, address: str) -> None: ...

    async def succeeded(self, user: str, address: str) -> None: ...

    async def aclose(self) -> None: ...


class ProcessLimiter:
    """Counts in this process's memory: the default (one machine, or replicas that each count their own)."""

    def __init__(self, failures: int, window: float) -> None:
        self.counts = FailedLogins(failures, window)

    async def retry_after(self, user: str, address: str) -> int | None:
        return self.counts.retry_after(user, address)

    async def failed(self, user: str, address: str) -> None:
        self.counts.failed(user, address)

    async def succeeded(self, user: str, address: str) -> None:
        self.counts.succeeded(user, address)

    async def aclose(self) -> None:
        return None


class SharedLimiter:
    """Counts in the metadata database (a PostgreSQL `database.url`), so that a guesser spreading attempts over the
    replicas is counted once. Wall-clock windows (replicas' clocks must roughly agree). That no lockout applies is
    remembered for a second per key, so a remembered Basic login costs no query on every request; a lockout on
    another replica is seen within that second. While the database cannot be reached, this process counts on its
    own (and tries the database again every RECONNECT_SECONDS)."""

    def __init__(self, connect: Callable[[], Engine], failures: int, window: float) -> None:
        self.connect = connect
        self.failures = failures
        self.window = window
        self.fallback = ProcessLimiter(failures, window)
        self._engine: Engine | None = None
        self._next_attempt = 0.0
        self._clear: dict[tuple[str, str], float] = {}

    def _database(self) -> Engine | None:
        if self._engine is None and time.monotonic() >= self._next_attempt:
            try:
                engine = self.connect()
                with engine.transaction(lock="moorage-login-failures-schema") as db:
                    db.execute(_SHARED_SCHEMA)
            except DATABASE_ERRORS as e:
                self._next_attempt = time.monotonic() + RECONNECT_SECONDS
                logger.warning("login rate limits: the database cannot be reached (%s); counting in this process", e)
                return None
            self._engine = engine
        return self._engine

    async def _shared(self, fn: Callable[[Engine], T]) -> T | None:
        """`fn` on the database, on a thread; None when the database cannot answer (the caller falls back)."""

        def run() -> T | None:
            engine = self._database()
            if engine is None:
                return None
            try:
                return fn(engine)
            except DATABASE_ERRORS as e:
                logger.warning("login rate limits: the database failed (%s); counting in this process", e)
                return None

        return await asyncio.to_thread(run)

    async def retry_after(self, user: str, address: str) -> int | None:
        now = time.monotonic()
        if self._clear.get((user, address), 0.0) > now:
            return await self.fallback.retry_after(user, address)
        found = await self._shared(lambda engine: [self._retry_after(engine, user, address)])
        if found is None:
            return await self.fallback.retry_after(user, address)
        if found[0] is None:
            if len(self._clear) >= _MAX_KEYS:
                self._clear.clear()
            self._clear[(user, address)] = now + CLEAR_MEMORY_SECONDS
        return found[0]

    def _retry_after(self, engine: Engine, user: str, address: str) -> int | None:
        now = time.time()
        key = _stored(user)
        rows = engine.read(
            "SELECT username, started, failures FROM login_failures WHERE address = ? AND username IN (?, ?)",
            (_stored(address), key, _SHARED_ANY_USER),
        )
        longest: int | None = None
        for username, started, count in rows:
            limit = self.failures if username == key else self.failures * ADDRESS_FACTOR
            left = self.window - (now - float(started))
            if left > 0 and int(count) >= limit:
                longest = max(longest or 0, max(1, math.ceil(left)))
        return longest

    async def failed(self, user: str, address: str) -> None:
        self._clear.pop((user, address), None)
        if await self._shared(lambda engine: self._failed(engine, user, address)) is None:
            await self.fallback.failed(user, address)

    def _failed(self, engine: Engine, user: str, address: str) -> bool:
        now = time.time()
        with engine.transaction() as db:
            for key in (_stored(user), _SHARED_ANY_USER):
                db.execute(
                    "INSERT INTO login_failures (username, address, started, failures) VALUES (?, ?, ?, 1) "
                    "ON CONFLICT (username, address) DO UPDATE SET "
                    "failures = CASE WHEN ? - login_failures.started >= ? THEN 1 "
                    "ELSE login_failures.failures + 1 END, "
                    "started = CASE WHEN ? - login_failures.started >= ? THEN ? ELSE login_failures.started END",
                    (key, _stored(address), now, now, self.window, now, self.window, now),
                )
            if random.random() < PRUNE_CHANCE:  # forget what no window holds any more
                db.execute("DELETE FROM login_failures WHERE started < ?", (now - self.window,))
        return True

    async def succeeded(self, user: str, address: str) -> None:
        await self.fallback.succeeded(user, address)
        await self._shared(lambda engine: self._succeeded(engine, user, address))

    @staticmethod
    def _succeeded(engine: Engine, user: str, address: str) -> bool:
        with engine.transaction() as db:
            db.execute(
                "DELETE FROM login_failures WHERE username = ? AND address = ?", (_stored(user), _stored(address))
            )
        return True

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.close)


_SHARED_SCHEMA = """
CREATE TABLE IF NOT EXISTS login_failures (
    username TEXT NOT NULL,
    address TEXT NOT NULL,
    started REAL NOT NULL,
    failures INTEGER NOT NULL,
    PRIMARY KEY (username, address)
)
"""
_SHARED_ANY_USER = "*"  # every stored user name starts with "u:"


def _stored(text: str) -> str:
    """A user name or address as a database text: bounded, without NUL (which PostgreSQL text cannot hold)."""
    return "u:" + text[:256].replace("\\", "\\\\").replace("\x00", "\\0")


CLEAR_MEMORY_SECONDS = 1.0
RECONNECT_SECONDS = 5.0
PRUNE_CHANCE = 0.01
