"""Where an upstream may send the cache: its redirects (presigned storage) and its token realms lead to other hosts,
named by the upstream. A hostile or compromised upstream could name this machine or its private network - an
admin API on 127.0.0.1, a cloud's metadata service at 169.254.169.254 - and have the cache send requests there
(server-side request forgery), so a request to another host than the upstream's goes only to addresses no more
inward than the upstream's own: from a public upstream, public addresses only; from one on the private network,
that network too; from one on this machine (tests, a sidecar), anywhere.

Checked twice: before the request, on the addresses the name resolves to; after connecting, on the address the
connection reached (a name that resolved to another address in between - DNS rebinding - is caught there, with
the request sent but its answer never read).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

RESOLVED_TTL = 60.0  # seconds a name's reach is kept (one resolution per host a minute, not one per blob)
MAX_RESOLVED = 256


class Reach(enum.IntEnum):
    """How far inward an address lies; an upstream's requests may go no further inward than the upstream itself."""

    LOOPBACK = 0
    PRIVATE = 1  # private, link-local, shared, reserved, multicast, unspecified: anything not globally routable
    PUBLIC = 2


class AddressRefused(Exception):
    """A request the upstream's answer led to was not sent (or its answer not read): it went too far inward."""


def reach_of(address: str) -> Reach:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone index is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return Reach.LOOPBACK
    inward = ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    return Reach.PUBLIC if ip.is_global and not inward else Reach.PRIVATE


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


class AddressGuard:
    """httpx event hooks (`request`, `response`) for an upstream's client: see the module's docstring."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.origin = (parts.scheme, (parts.hostname or "").lower(), parts.port)
        self._upstream_reach: Reach | None = None
        self._resolved: dict[str, tuple[float, Reach]] = {}

    def _is_upstream(self, url: httpx.URL) -> bool:
        return (url.scheme, url.host.lower(), url.port) == self.origin

    async def _reach_of_host(self, host: str, port: int) -> Reach:
        """The most inward reach of the addresses `host` resolves to (one inward address is enough to refuse)."""
        literal = _literal(host)
        if literal is not None:
            return reach_of(literal)
        now = time.monotonic()
        cached = self._resolved.get(host)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise AddressRefused(f"{host} cannot be resolved ({e.strerror or e})") from None
        found = min((reach_of(str(info[4][0])) for info in infos), default=Reach.LOOPBACK)
        if len(self._resolved) >= MAX_RESOLVED:
            self._resolved.clear()
        self._resolved[host] = (now + RESOLVED_TTL, found)
        return found

    async def _allowed(self) -> Reach:
        if self._upstream_reach is None:
            _, host, port = self.origin
            try:
                self._upstream_reach = await self._reach_of_host(host, port or 443)
            except AddressRefused:
                return Reach.PUBLIC  # not resolvable now: its redirects are held to public addresses meanwhile
        return self._upstream_reach

    async def check_request(self, request: httpx.Request) -> None:
        if self._is_upstream(request.url):
            return
        allowed = await self._allowed()
        if allowed == Reach.LOOPBACK:
            return
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        if await self._reach_of_host(request.url.host, port) < allowed:
            raise AddressRefused(f"the upstream sent the cache to {request.url.host}, an address of {_WHERE[allowed]}")

    async def check_response(self, response: httpx.Response) -> None:
        if self._is_upstream(response.request.url):
            return
        allowed = await self._allowed()
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if allowed == Reach.LOOPBACK or not peer:
            return
        if reach_of(str(peer[0])) < allowed:
            await response.aclose()
            raise AddressRefused(
                f"the upstream sent the cache to {response.request.url.host}, which reached {peer[0]}, an address of "
                f"{_WHERE[allowed]}"
            )

    def hooks(self) -> dict[str, list[Callable[..., Any]]]:
        return {"request": [self.check_request], "response": [self.check_response]}


_WHERE = {
    Reach.PRIVATE: "this machine (the upstream is not on it)",
    Reach.PUBLIC: "this machine or a private network (the upstream is public)",
}
