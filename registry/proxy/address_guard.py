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


# Not globally reachable, whatever the running Python's tables say (3.11.7's take 192.0.0.192, a cloud's metadata
# address, for a global one): the parts of IANA's special-purpose registries that matter here.
_INWARD = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/3",
        "::/8",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_THIS_HOST = ipaddress.ip_network("0.0.0.0/8")  # 0.0.0.0 connects to this machine (as :: does)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def reach_of(address: str) -> Reach:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone index is not part of the address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return reach_of(str(ip.ipv4_mapped))
        # An IPv4 address carried in an IPv6 one (compatible, 6to4, NAT64): as far inward as either.
        carried = [ip.sixtofour]
        if int(ip) >> 32 == 0 or ip in _NAT64:
            carried.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return min([_reach(ip), *(reach_of(str(v4)) for v4 in carried if v4 is not None)])
    return _reach(ip)


def _reach(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Reach:
    if ip.is_loopback or ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_HOST):
        return Reach.LOOPBACK
    inward = ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
    return Reach.PUBLIC if ip.is_global and not inward and not any(ip in n for n in _INWARD) else Reach.PRIVATE


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None


class AddressGuard:
    """httpx event hooks (`request`, `response`) for an upstream's client: see the module's docstring."""

    def __init__(self, upstream_url: str, proxied: Callable[[httpx.URL], bool] | None = None) -> None:
        """`proxied`: whether a request to that URL goes through a forward proxy (whose address is then the peer's:
        only the name is checked, before the request)."""
        url = httpx.URL(upstream_url)  # as httpx compares: a default port is no port, the host in lower case
        self.origin = (url.scheme, url.host, url.port)
        self._proxied = proxied
        self._upstream_reach: Reach | None = None
        self._upstream_seen = Reach.LOOPBACK  # the most outward address the upstream's own answers came from
        self._resolved: dict[str, tuple[float, list[Reach]]] = {}

    def _is_upstream(self, url: httpx.URL) -> bool:
        return (url.scheme, url.host, url.port) == self.origin

    async def _reaches(self, host: str, port: int) -> list[Reach]:
        """The reach of each address `host` resolves to."""
        literal = _literal(host)
        if literal is not None:
            return [reach_of(literal)]
        now = time.monotonic()
        cached = self._resolved.get(host)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:  # UnicodeError: a name the idna codec refuses (a label over 63)
            raise AddressRefused(f"{host[:200]} cannot be resolved ({getattr(e, 'strerror', None) or e})") from None
        found = [reach_of(str(info[4][0])) for info in infos] or [Reach.LOOPBACK]
        if len(self._resolved) >= MAX_RESOLVED:
            self._resolved.clear()
        self._resolved[host] = (now + RESOLVED_TTL, found)
        return found

    async def _allowed(self) -> Reach:
        if self._upstream_reach is None:
            _, host, port = self.origin
            try:
                # The most outward of its addresses: one inward record of a hostile upstream's name must not make
                # it one "on this machine" (that record would unlock every address).
                self._upstream_reach = max(await self._reaches(host, port or 443))
            except AddressRefused:
                return Reach.PUBLIC  # not resolvable now: its redirects are held to public addresses meanwhile
        # Its name resolved again later (rebinding) cannot widen what its connections showed.
        return max(self._upstream_reach, self._upstream_seen)

    async def check_request(self, request: httpx.Request) -> None:
        if self._is_upstream(request.url):
            return
        allowed = await self._allowed()
        if allowed == Reach.LOOPBACK:
            return
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        if min(await self._reaches(request.url.host, port)) < allowed:
            raise AddressRefused(f"the upstream sent the cache to {request.url.host}, an address of {_WHERE[allowed]}")

    async def check_response(self, response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if not peer or (self._proxied and self._proxied(response.request.url)):  # a proxy's address: not the peer's
            return
        if self._is_upstream(response.request.url):
            self._upstream_seen = max(self._upstream_seen, reach_of(str(peer[0])))
            return
        allowed = await self._allowed()
        if allowed == Reach.LOOPBACK:
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
