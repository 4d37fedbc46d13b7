"""`moorage token create|list|revoke --registry HOST`: the caller's personal access tokens, through the registry's
API (/api/v1/tokens) with the credentials `moorage login` (or `docker login`) saved for HOST."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from registry.client.api import RegistryClient, error_from_response
from registry.client.errors import ClientError
from registry.client.reference import parse_registry


def _client(host: str, insecure: bool, ca_file: str | None) -> RegistryClient:
    return RegistryClient.connect(parse_registry(host), insecure=insecure, ca_file=ca_file)


async def create(
    host: str, name: str, scopes: list[str], expires_in: float | None, *, insecure: bool, ca_file: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "scopes": scopes}
    if expires_in is not None:
        body["expires_in"] = expires_in
    async with _client(host, insecure, ca_file) as registry:
        response = await registry.transport.request(
            "POST",
            "/api/v1/tokens",
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            retry=False,  # not idempotent: a retry could make two tokens
        )
        if response.status_code != 201:
            raise error_from_response(response, f"create token {name!r} on {registry.name}")
        return _object(response, registry.name)


async def listed(host: str, *, insecure: bool, ca_file: str | None) -> list[dict[str, Any]]:
    async with _client(host, insecure, ca_file) as registry:
        response = await registry.transport.request("GET", "/api/v1/tokens")
        if response.status_code != 200:
            raise error_from_response(response, f"list tokens on {registry.name}")
        tokens = _object(response, registry.name).get("tokens")
        if not isinstance(tokens, list):
            raise ClientError(f"list tokens: unreadable answer from {registry.name}")
        return [token for token in tokens if isinstance(token, dict)]


async def revoke(host: str, token_id: str, *, insecure: bool, ca_file: str | None) -> None:
    if not re.fullmatch(r"[0-9a-f]{16}", token_id):
        raise ClientError(
            f"{token_id[:40]!r} is not a token id (16 hexadecimal digits: `moorage token list` shows them)"
        )
    async with _client(host, insecure, ca_file) as registry:
        response = await registry.transport.request("DELETE", f"/api/v1/tokens/{token_id}")
        if response.status_code != 204:
            raise error_from_response(response, f"revoke token {token_id} on {registry.name}")


def _object(response: httpx.Response, name: str) -> dict[str, Any]:
    try:
        value = response.json()
    except (ValueError, RecursionError):
        raise ClientError(f"unreadable answer from {name}: not JSON") from None
    if not isinstance(value, dict):
        raise ClientError(f"unreadable answer from {name}")
    return value
