"""Where a push may be sent: only to addresses on the public internet.

A Web Push endpoint is chosen by the client, so whatever sends to it must not
be led to the gateway's own network: validation.normalize_webpush_endpoint
refuses endpoints that are IP literals or local names when they are stored,
and this module refuses, when they are sent to, names that *resolve* to a
private, loopback, link-local or otherwise non-global address (a public name
can point anywhere, and can change where it points between two lookups).

For a sender on aiohttp, ``PublicAddressResolver`` does the check at connect
time, on the very addresses the connection will use, so a name cannot be
re-pointed between a check and the connection::

    connector = aiohttp.TCPConnector(resolver=PublicAddressResolver())

``ensure_public_address`` is the same check for any other client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

__all__ = [
    "NonPublicAddress",
    "PublicAddressResolver",
    "ensure_public_address",
    "is_public_ip",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# NAT64's well-known prefix (RFC 6052): the address inside is what is reached.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class NonPublicAddress(OSError):
    """A push endpoint's host is, or resolves to, an address that is not public.

    An OSError, so that an HTTP client treats it as a failure to connect.
    """


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_ip(address: str | IPAddress) -> bool:
    """Whether an address is globally reachable unicast: not private, loopback,
    link-local, shared (CGNAT), reserved, documentation, multicast or unspecified,
    nor an IPv6 form of such an IPv4 address. A malformed address is not public."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return is_public_ip(inner)
    return ip.is_global and not ip.is_multicast


def _refuse_unless_public(host: str, addresses: Sequence[str]) -> None:
    if not addresses:
        raise NonPublicAddress(f"{host} resolves to no address")
    # Every address, not just the first: a client may fall back to any of them.
    for address in addresses:
        if not is_public_ip(address):
            raise NonPublicAddress(f"{host} resolves to a non-public address")


async def ensure_public_address(host: str, port: int = 443) -> list[str]:
    """The addresses ``host`` resolves to, when every one is public; else NonPublicAddress.

    Connect to the addresses returned, not to the name again: a second lookup
    may answer differently.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NonPublicAddress(f"{host} does not resolve: {exc.strerror}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    _refuse_unless_public(host, addresses)
    return addresses


class PublicAddressResolver(AbstractResolver):
    """An aiohttp resolver that refuses a host unless all its addresses are public."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        _refuse_unless_public(host, [result["host"] for result in results])
        return results

    async def close(self) -> None:
        await self._inner.close()
