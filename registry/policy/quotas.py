"""Quotas: how many unique bytes a repository may reference (registry/store/admission.py's check).

A repository's usage is what `moorage du` counts (each blob its manifests reference, once: the index's logical
bytes) plus the blobs pushed into it that no manifest of it references yet (a push in progress: counted from the
moment the blob is admitted, until a manifest references it or `policy.reservation_ttl` passes). A blob is admitted
under a per-repository lock in the policy database, so concurrent pushes cannot together pass a quota; an upload is
refused from its first byte past the room left, before anything of it is published.

Limits come from the config's `quotas:` and from the admin API (which wins for the same pattern); a repository
matched by several patterns takes the most specific (longest) one's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry.auth.access import glob_regex
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.index.base import IndexUnavailable
from registry.policy.database import Counted, PolicySnapshot
from registry.policy.service import Policy
from registry.policy.settings import PolicySettings, QuotaRule

if TYPE_CHECKING:
    from registry.index.local import LocalIndex
    from registry.metrics import Metrics

logger = logging.getLogger("moorage.quotas")


@dataclass(frozen=True, slots=True)
class Quota:
    pattern: str
    limit: int
    source: str  # "config" or "api"


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    quota: Quota
    used: int
    warning_at: float

    @property
    def warning(self) -> bool:
        return self.used >= self.quota.limit * self.warning_at

    def as_dict(self) -> dict[str, Any]:
        return {
            "pattern": self.quota.pattern,
            "limit_bytes": self.quota.limit,
            "used_bytes": self.used,
            "source": self.quota.source,
            "warning": self.warning,
        }


class QuotaTable:
    """The limits in force: the config's, and the API's on top (which win for the same pattern)."""

    def __init__(self, config: Sequence[QuotaRule], snapshot: PolicySnapshot) -> None:
        quotas = {rule.repository: Quota(rule.repository, rule.bytes, "config") for rule in config}
        quotas.update({q.repository: Quota(q.repository, q.value, "api") for q in snapshot.quotas})
        ordered = sorted(quotas.values(), key=lambda q: -len(q.pattern))
        self._compiled = [(glob_regex(q.pattern, segments=True), q) for q in ordered]

    @property
    def quotas(self) -> list[Quota]:
        return [quota for _, quota in self._compiled]

    def quota_of(self, repository: str) -> Quota | None:
        """The most specific (longest) pattern's quota that matches `repository`."""
        for pattern, quota in self._compiled:
            if pattern.match(repository):
                return quota
        return None

    def limit_of(self, repository: str) -> int | None:
        quota = self.quota_of(repository)
        return quota.limit if quota is not None else None


class Quotas:
    def __init__(
        self,
        config: Sequence[QuotaRule],
        policy: Policy,
        index: LocalIndex | None,
        settings: PolicySettings,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = list(config)
        self.policy = policy
        self.index = index
        self.settings = settings
        self.metrics = metrics
        self._warned: set[str] = set()
        self.table = QuotaTable(self.config, PolicySnapshot(version=0))

    def apply(self, snapshot: PolicySnapshot) -> None:
        self.table = QuotaTable(self.config, snapshot)

    @property
    def quotas(self) -> list[Quota]:
        return self.table.quotas

    def quota_of(self, repository: str) -> Quota | None:
        return self.table.quota_of(repository)

    def limit_of(self, repository: str) -> int | None:
        quota = self.table.quota_of(repository)
        return quota.limit if quota is not None else None

    def _expire_before(self) -> float:
        return time.time() - self.settings.reservation_ttl

    async def _counted(self, repository: str, blobs: list[str]) -> Counted:
        if self.index is None:
            raise RegistryError(
                ErrorCode.UNAVAILABLE,
                message="quotas need the metadata index",
                detail="index.enabled is false: pushes into repositories with a quota are refused",
            )
        try:
            logical, referenced = await self.index.counted(repository, blobs)
        except IndexUnavailable as e:
            raise RegistryError(
                ErrorCode.UNAVAILABLE,
                message="the repository's quota cannot be checked right now",
                detail=str(e),
                headers={"Retry-After": "5"},
            ) from e
        return Counted(logical, frozenset(referenced))

    async def usage(self, repository: str) -> QuotaUsage | None:
        quota = self.quota_of(repository)
        if quota is None:
            return None
        db = await self.policy.database()
        pending = await self.policy.run(db.pending_bytes, repository, self._expire_before())
        counted = await self._counted(repository, list(pending))
        used = counted.logical + sum(size for blob, size in pending.items() if blob not in counted.referenced)
        usage = QuotaUsage(quota, used, self.settings.quota_warning)
        self._observe(repository, usage)
        return usage

    def _observe(self, repository: str, usage: QuotaUsage) -> None:
        if self.metrics is not None:
            self.metrics.quota(repository, usage.quota.limit, usage.used)
        if usage.warning and repository not in self._warned:
            self._warned.add(repository)
            logger.warning(
                "repository %s uses %d of its %d bytes (quota %r): past %d%%",
                repository,
                usage.used,
                usage.quota.limit,
                usage.quota.pattern,
                round(self.settings.quota_warning * 100),
            )
        elif not usage.warning:
            self._warned.discard(repository)

    # --- registry.store.admission.Admission

    async def room(self, repository: str) -> int | None:
        usage = await self.usage(repository)
        return None if usage is None else usage.quota.limit - usage.used

    async def admit(self, repository: str, digest: Digest, size: int) -> bool:
        quota = self.quota_of(repository)
        if quota is None:
            return False
        db = await self.policy.database()
        expire_before = self._expire_before()
        pending = await self.policy.run(db.pending_bytes, repository, expire_before)
        counted = await self._counted(repository, [*pending, str(digest)])
        used, reserved = await self.policy.run(
            db.reserve, repository, str(digest), size, quota.limit, counted, expire_before
        )
        if used is not None:
            raise self._refusal(repository, quota, quota.limit - used, size)
        await self.usage(repository)  # metrics and the warning
        return reserved

    async def check_references(self, repository: str, references: list[tuple[str, int]]) -> None:
        """A manifest may not bring its repository past the quota: blobs whose count lapsed (pushed longer than
        `policy.reservation_ttl` ago) count again, and so does the manifest itself. Not serialized: two manifests
        racing can pass it together by what they add (a manifest and its lapsed blobs)."""
        quota = self.quota_of(repository)
        if quota is None:
            return
        db = await self.policy.database()
        pending = await self.policy.run(db.pending_bytes, repository, self._expire_before())
        sizes = dict(references)
        counted = await self._counted(repository, list({*pending, *sizes}))
        used = counted.logical + sum(size for blob, size in pending.items() if blob not in counted.referenced)
        added = sum(size for blob, size in sizes.items() if blob not in counted.referenced and blob not in pending)
        if used + added > quota.limit:
            raise self._refusal(repository, quota, quota.limit - used, added)

    async def release(self, repository: str, digest: Digest) -> None:
        if self.quota_of(repository) is None:
            return
        db = await self.policy.database()
        await self.policy.run(db.release, repository, str(digest))

    def refusal(self, repository: str, room: int, size: int) -> Exception:
        quota = self.quota_of(repository)
        assert quota is not None
        return self._refusal(repository, quota, room, size)

    @staticmethod
    def _refusal(repository: str, quota: Quota, room: int, size: int) -> RegistryError:
        return RegistryError(
            ErrorCode.DENIED,
            message=f"quota exceeded: {repository} may reference {quota.limit} bytes (quota {quota.pattern!r}), "
            f"{max(room, 0)} are left",
            detail={
                "repository": repository,
                "quota": quota.pattern,
                "limit_bytes": quota.limit,
                "used_bytes": quota.limit - room,
                "requested_bytes": size,
            },
        )
