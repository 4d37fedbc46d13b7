"""What may refuse new bytes in a repository before they are stored (quotas, registry/policy/quotas.py).

The store asks at each step of a push: an upload may not start in a repository with no room left, a chunk may not
bring an upload past the room there is (refused before its bytes are read, when its length is known, else as soon
as they pass it), a blob is counted against its repository, or refused, before it is published or mounted (and
uncounted if it is not stored after all), and a manifest may not reference more than there is room for (blobs whose
count lapsed, and the manifest itself). Features add their checks with `Admissions.add`; the store never imports
them.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol

from registry.digests import Digest


class Admission(Protocol):
    async def room(self, repository: str) -> int | None:
        """How many more bytes `repository` may take (None: no limit)."""
        ...

    async def admit(self, repository: str, digest: Digest, size: int) -> bool:
        """Count the blob against `repository` (True: counted by this call; False: it was already), or raise the
        RegistryError that refuses it."""
        ...

    async def release(self, repository: str, digest: Digest) -> None:
        """Undo an `admit` that counted, for a blob that was not stored after all."""
        ...

    async def check_references(self, repository: str, references: list[tuple[str, int]]) -> None:
        """Raise unless a manifest referencing these (digest, size) pairs, itself among them, fits."""
        ...

    def refusal(self, repository: str, room: int, size: int) -> Exception:
        """The error for `size` bytes where only `room` are left."""
        ...


class Admissions:
    def __init__(self) -> None:
        self._checks: list[Admission] = []

    def add(self, check: Admission) -> None:
        self._checks.append(check)

    def __bool__(self) -> bool:
        return bool(self._checks)

    async def room(self, repository: str) -> tuple[Admission, int] | None:
        """The tightest limit on `repository`, and its check; None without one."""
        tightest: tuple[Admission, int] | None = None
        for check in self._checks:
            room = await check.room(repository)
            if room is not None and (tightest is None or room < tightest[1]):
                tightest = (check, room)
        return tightest

    async def require_room(self, repository: str, size: int) -> int | None:
        """Raise unless `size` more bytes fit; returns the room left (None: no limit)."""
        found = await self.room(repository)
        if found is None:
            return None
        check, room = found
        if size > room or room <= 0:
            raise check.refusal(repository, room, size)
        return room

    async def admit(self, repository: str, digest: Digest, size: int) -> Admitted:
        """Count the blob with every check; `release()` the result if it is not stored after all."""
        admitted = Admitted(repository, digest)
        try:
            for check in self._checks:
                if await check.admit(repository, digest, size):
                    admitted.counted.append(check)
        except BaseException:
            await admitted.release()
            raise
        return admitted

    async def check_references(self, repository: str, references: list[tuple[str, int]]) -> None:
        for check in self._checks:
            await check.check_references(repository, references)

    async def bounded(self, repository: str, offset: int, body: AsyncIterable[bytes]) -> AsyncIterable[bytes]:
        """`body`, refused as soon as the upload (already `offset` bytes) would pass the room there is."""
        found = await self.room(repository)
        if found is None:
            return body
        check, room = found
        if offset >= room:
            raise check.refusal(repository, room, offset + 1)
        return _bounded(body, room - offset, lambda received: check.refusal(repository, room, offset + received))


class Admitted:
    """The checks that counted a blob by one `admit` (none when it was counted already): only those are undone."""

    def __init__(self, repository: str, digest: Digest) -> None:
        self.repository = repository
        self.digest = digest
        self.counted: list[Admission] = []

    async def release(self) -> None:
        counted, self.counted = self.counted, []
        for check in counted:
            await check.release(self.repository, self.digest)


async def _bounded(body: AsyncIterable[bytes], limit: int, refusal: _Refusal) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in body:
        received += len(chunk)
        if received > limit:
            raise refusal(received)
        yield chunk


class _Refusal(Protocol):
    def __call__(self, received: int, /) -> Exception: ...
