"""A directory of users that checks passwords and knows their groups (LDAP: registry/auth/ldap.py)."""

from __future__ import annotations

from typing import Protocol

from registry.auth.access import Identity
from registry.errors import ErrorCode, RegistryError


def directory_unavailable(detail: str) -> RegistryError:
    """503 for a new login while the directory cannot be asked (logins remembered for `auth.cache_ttl` go on)."""
    return RegistryError(
        ErrorCode.UNAVAILABLE,
        message="the user directory cannot be reached: try again shortly",
        detail=detail[:300],
        headers={"Retry-After": "10"},
    )


class Directory(Protocol):
    async def authenticate(self, username: str, password: str) -> Identity | None:
        """The user with their groups, or None for a wrong name or password (or a locked account); raises the
        error of `directory_unavailable` when the directory cannot answer."""
        ...

    async def lookup(self, username: str) -> Identity | None:
        """The user as the directory has it now, without a password (None: gone); raises as `authenticate`."""
        ...
