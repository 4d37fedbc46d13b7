"""Client errors: each one is a single readable line for the user.

ClientError
 +-- RegistryResponseError   the registry answered with an error status (code from the spec's error body)
 +-- ConnectionFailed        the registry could not be reached, or the connection dropped
 +-- DigestMismatch          content did not hash to the digest that named it
"""

from __future__ import annotations


class ClientError(Exception):
    """An error the CLI prints as `moorage: <message>` and exits with status 1."""


class RegistryResponseError(ClientError):
    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ConnectionFailed(ClientError):
    pass


class DigestMismatch(ClientError):
    pass
