"""The registry's error codes (OCI distribution-spec code-1..14 plus Docker's extras) and their HTTP status."""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(enum.Enum):
    BLOB_UNKNOWN = ("blob unknown to registry", 404)
    BLOB_UPLOAD_INVALID = ("blob upload invalid", 400)
    BLOB_UPLOAD_UNKNOWN = ("blob upload unknown to registry", 404)
    DIGEST_INVALID = ("provided digest did not match uploaded content", 400)
    MANIFEST_BLOB_UNKNOWN = ("manifest references a manifest or blob unknown to registry", 400)
    MANIFEST_INVALID = ("manifest invalid", 400)
    MANIFEST_UNKNOWN = ("manifest unknown to registry", 404)
    NAME_INVALID = ("invalid repository name", 400)
    NAME_UNKNOWN = ("repository name not known to registry", 404)
    SIZE_INVALID = ("provided length did not match content length", 400)
    UNAUTHORIZED = ("authentication required", 401)
    DENIED = ("requested access to the resource is denied", 403)
    UNSUPPORTED = ("the operation is unsupported", 405)
    TOOMANYREQUESTS = ("too many requests", 429)
    TAG_INVALID = ("manifest tag did not match URI", 400)
    MANIFEST_TOO_LARGE = ("manifest is larger than the registry accepts", 413)
    RANGE_INVALID = ("invalid content range", 416)
    PAGINATION_NUMBER_INVALID = ("invalid number of results requested", 400)
    UNAVAILABLE = ("service unavailable", 503)
    # Not in the spec's table (clients read the status, RFC 4918's 507): the store has no room for the upload.
    INSUFFICIENT_STORAGE = ("insufficient storage: the registry has no space left to store this", 507)
    # Answered by the HTTP layer before a request reaches the application (registry/http_limits.py).
    REQUEST_INVALID = ("malformed HTTP request", 400)
    REQUEST_TIMEOUT = ("the request was not received in time", 408)
    REQUEST_HEADERS_TOO_LARGE = ("request header fields too large", 431)
    UNKNOWN = ("unknown error", 500)
    NOT_FOUND = ("no such API endpoint", 404)

    @property
    def message(self) -> str:
        return self.value[0]

    @property
    def status(self) -> int:
        return self.value[1]


class RegistryError(Exception):
    """An error a client caused or must hear about; rendered as the spec's JSON error body."""

    def __init__(
        self,
        code: ErrorCode,
        detail: Any = None,
        *,
        message: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.code = code
        self.detail = detail
        self.message = message or code.message
        self.status = status or code.status
        self.headers = headers or {}
        super().__init__(f"{code.name}: {self.message}" + (f" ({detail})" if detail else ""))

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code.name, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"errors": [error]}
