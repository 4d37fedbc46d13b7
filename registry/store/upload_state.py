"""Signed upload-session state carried in the Location URL (`?_state=`), like Distribution's.

It binds a session id to its repository and records the digest algorithm the client announced, so any
worker or replica sharing the secret can continue the session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets

from registry import paths
from registry.errors import ErrorCode, RegistryError
from storage_backends import StorageBackend

SECRET_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UploadStateSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def sign(self, name: str, upload_id: str, algorithm: str) -> str:
        payload = json.dumps({"n": name, "u": upload_id, "a": algorithm}, separators=(",", ":")).encode()
        mac = hmac.new(self._secret, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(mac)}"

    def verify(self, token: str, name: str, upload_id: str) -> str:
        """The algorithm recorded in a valid token; BLOB_UPLOAD_INVALID for a forged or foreign one."""
        try:
            payload_part, mac_part = token.split(".", 1)
            payload = _unb64(payload_part)
            mac = _unb64(mac_part)
            valid = hmac.compare_digest(mac, hmac.new(self._secret, payload, hashlib.sha256).digest())
            state = json.loads(payload) if valid else None
        except (ValueError, TypeError):
            state = None
        if not isinstance(state, dict) or state.get("n") != name or state.get("u") != upload_id:
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_INVALID,
                detail={"uuid": upload_id},
                message="upload state is invalid or belongs to another upload",
            )
        return str(state.get("a") or "sha256")


async def shared_secret(backend: StorageBackend, configured: str | None) -> bytes:
    """The configured secret, else one generated once and kept in storage for every process to share."""
    if configured:
        return configured.encode()
    await backend.put_content(paths.HTTP_SECRET, secrets.token_hex(SECRET_BYTES).encode(), exclusive=True)
    return (await backend.get_content(paths.HTTP_SECRET)).strip()
