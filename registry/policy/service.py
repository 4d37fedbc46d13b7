"""The policy database, opened when the app starts and followed while it runs.

Every process reads one row, the policy version, every `policy.poll_interval` (a quarter of a second by default);
when it moved, it reads the rules, visibility and quotas again and hands the snapshot to each listener (the access
rules, the quotas). A change made through this process is applied at once; one made on another replica within a
poll. While the database cannot be read, the last snapshot stays in force; until a first one is read, listeners are
told nothing has been read (`PolicySnapshot.version` 0), and the access rules hold every repository private then
(what visibility may have closed stays closed; what the config's rules name explicitly stays open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from registry.database import DATABASE_ERRORS, EngineCorrupt
from registry.errors import ErrorCode, RegistryError
from registry.policy.database import PolicyDatabase, PolicySnapshot

logger = logging.getLogger("moorage.policy")
T = TypeVar("T")
P = ParamSpec("P")
Listener = Callable[[PolicySnapshot], None]
RETRY_SECONDS = 2.0
FIRST_READ_SECONDS = 1.0


def unavailable(error: BaseException) -> RegistryError:
    return RegistryError(
        ErrorCode.UNAVAILABLE,
        message="the policy database cannot be reached",
        detail=str(error)[:300],
        headers={"Retry-After": "5"},
    )


class Policy:
    def __init__(self, target: Path | str, poll_interval: float, *, durable: bool = True) -> None:
        """`durable`: False for a file in the temporary directory (S3 without a database): changes are refused,
        since they would be lost with the machine, and unknown to the other replicas."""
        self.target = target
        self.durable = durable
        self.poll_interval = poll_interval
        self.snapshot = PolicySnapshot(version=0)
        self._listeners: list[Listener] = []
        self._db: PolicyDatabase | None = None
        self._task: asyncio.Task[None] | None = None
        self._opening = asyncio.Lock()
        self._first_read = asyncio.Event()

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)
        listener(self.snapshot)

    async def start(self) -> None:
        """Follow the database; wait a moment for its first answer (an SQLite file gives it at once), never
        longer: a database that cannot be reached does not stop the registry from serving."""
        self._task = asyncio.create_task(self._follow(), name="policy-follower")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_read.wait(), FIRST_READ_SECONDS)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._db is not None:
            await asyncio.to_thread(self._db.close)
            self._db = None

    async def database(self) -> PolicyDatabase:
        if self._db is None:
            async with self._opening:
                if self._db is None:
                    try:
                        self._db = await asyncio.to_thread(PolicyDatabase.open, self.target)
                    except (*DATABASE_ERRORS, EngineCorrupt, OSError) as e:
                        raise unavailable(e) from e
        return self._db

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A blocking call of the database's, on a thread; its failures are 503s."""
        await self.database()
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except DATABASE_ERRORS as e:
            raise unavailable(e) from e

    def require_durable(self) -> None:
        if not self.durable:
            raise RegistryError(
                ErrorCode.UNAVAILABLE,
                message="admin changes need a lasting policy database here",
                detail="with S3 storage, set database.url (PostgreSQL, shared by every replica) or policy.path",
            )

    async def change(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """An admin change: run, then applied in this process at once (other replicas follow within a poll)."""
        self.require_durable()
        result = await self.run(function, *args, **kwargs)
        await self.refresh()
        return result

    async def refresh(self) -> None:
        db = await self.database()
        try:
            version = await asyncio.to_thread(db.version)
            if version == self.snapshot.version:
                return
            snapshot = await asyncio.to_thread(db.snapshot)
        except DATABASE_ERRORS as e:
            raise unavailable(e) from e
        if snapshot.version <= self.snapshot.version:
            return
        self.snapshot = snapshot
        for listener in self._listeners:
            listener(snapshot)

    async def _follow(self) -> None:
        failing = False
        first = True
        while True:
            if not first:
                await asyncio.sleep(RETRY_SECONDS if failing else self.poll_interval)
            try:
                await self.refresh()
            except Exception as e:  # never end the follower: the rules would stop changing without a word
                if not failing:
                    detail = f"{e.message} ({e.detail})" if isinstance(e, RegistryError) else repr(e)
                    logger.warning("policy: %s; the last rules read hold meanwhile", detail)
                failing = True
            else:
                if failing:
                    logger.info("policy: the database answers again")
                failing = False
            if first:
                first = False
                self._first_read.set()
