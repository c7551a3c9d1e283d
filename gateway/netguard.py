"""The one rule for where a push may be sent: only to addresses on the public internet.

A Web Push endpoint is chosen by the client, so whatever sends to it must not
be led to the gateway's own network: validation.normalize_webpush_endpoint
refuses endpoints that are IP literals or local names when they are stored,
and every provider's connection (gateway.delivery.net) refuses, when it is
made, a host that *resolves* to an address this rule does not admit (a public
name can point anywhere, and can change where it points between two lookups).
"""

from __future__ import annotations

import ipaddress

__all__ = ["IPAddress", "is_public_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# NAT64 (RFC 6052): behind the well-known /96 prefix the last 32 bits are the
# IPv4 address a NAT64 gateway would connect to. The local-use prefix (RFC 8215)
# carries it elsewhere and only ever leads inside a network.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_ip(address: str | IPAddress) -> bool:
    """Whether a push may connect to ``address``: globally reachable unicast.

    Refuses private, loopback, link-local, shared (100.64/10), reserved,
    documentation, benchmark, multicast and unspecified addresses; IPv6 forms
    that carry such an IPv4 address (``::ffff:127.0.0.1``, ``64:ff9b::a00:1``,
    ``2002:a00:1::``); and, whatever they carry, Teredo tunnels, NAT64's
    local-use prefix, site-local addresses and any address with a scope id.
    A malformed address is not public. Where in doubt it refuses: a refused
    push is an alarm, a push that reaches inside is request forgery.
    """
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id or ip.teredo is not None or ip in _NAT64_LOCAL or ip.is_site_local:
            return False
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return is_public_ip(inner)
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )
