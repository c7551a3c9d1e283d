"""The one way a provider reaches a push service: an httpx client that never
connects to a private address unless the operator pinned it.

Every provider builds its client with ``build_client``. Its connections go
through ``GuardedBackend``, an httpcore network backend whose ``connect_tcp``
resolves the host itself (``getaddrinfo`` in the loop's executor, never
blocking the event loop), refuses the connection when any address is not
globally routable, and connects to the checked address: httpcore never looks
the name up a second time, so a DNS answer that changes between the check and
the connection (DNS rebinding) cannot slip a private address in. TLS still
verifies the certificate against the URL's host name (httpcore sends the
origin's host as SNI and ``check_hostname`` stays on).

``GATEWAY_PUSH_RESOLVE`` pins are the exception, and the only one: a pinned
host:port connects to its configured addresses whatever they are (staging,
tests), and each client logs its pins when it is built.

The address rule uses Python's ``ipaddress`` (``is_global`` plus explicit
checks, and the IPv4 address embedded in mapped, NAT64 and 6to4 forms). The
registration-time endpoint rules (gateway/validation.py) may grow their own
helper; the two are meant to become one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import certifi
import httpcore
import httpx

from gateway.config import Settings
from gateway.delivery.providers import Outcome, Verdict

log = logging.getLogger("gateway.delivery.net")

# NAT64 (RFC 6052): behind the well-known /96 prefix the last 32 bits are the
# IPv4 address a NAT64 gateway would connect to. The local-use prefix (RFC 8215)
# carries it elsewhere and only ever leads inside a network: always refused.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True when a push may connect to ``address``: globally routable unicast.

    Refuses private, loopback, link-local, multicast, reserved, unspecified,
    shared (100.64/10), documentation and benchmark ranges, and IPv6 forms
    that carry one of those IPv4 addresses (``::ffff:127.0.0.1``,
    ``64:ff9b::a00:1``, ``2002:a00:1::``).
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
        if address in _NAT64_LOCAL or address.teredo is not None or address.is_site_local:
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


class AddressRefused(httpcore.ConnectError):
    """The push host resolved to an address a send must not reach."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks and connects to the checked address (see the module docstring)."""

    def __init__(
        self,
        pins: Mapping[tuple[str, int], tuple[str, ...]],
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._pins = dict(pins)
        # The backend httpcore would pick under asyncio; a test may pass its own.
        self._inner = inner or httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to try for host:port, in order; raises AddressRefused."""
        name = host.lower().rstrip(".")
        pinned = self._pins.get((name, port))
        if pinned is not None:
            return list(pinned)
        try:
            literal = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            candidates = [literal]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
            except (OSError, UnicodeError) as exc:
                raise httpcore.ConnectError(f"cannot resolve {name}: {exc}") from exc
            # scope ids (fe80::1%eth0) are not part of the address rule
            candidates = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        refused = [str(a) for a in candidates if not is_public_address(a)]
        if refused or not candidates:
            # One bad answer refuses the host: a name that resolves to both a
            # public and a private address is how a rebinding attack starts.
            raise AddressRefused(
                f"{name} resolves to an address a push must not reach ({', '.join(refused)});"
                " pin it with GATEWAY_PUSH_RESOLVE if this is intended"
            )
        return list(dict.fromkeys(str(a) for a in candidates))

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.resolve(host, port)
        last: Exception = httpcore.ConnectError(f"no address to connect to for {host}")
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's signature)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("push services are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (its request and error mapping) over our backend.

    httpx 0.28 has no ``network_backend`` argument (encode/httpx#3749 adds
    one), so the pool it builds is replaced by an identical one that has it.
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        backend: GuardedBackend,
        http2: bool,
        limits: httpx.Limits,
    ) -> None:
        super().__init__(verify=ssl_context, http2=http2, limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=http2,
            network_backend=backend,
        )


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's CAs and certifi's, plus ``ca_file``'s: added, never replacing them."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


def build_client(
    settings: Settings,
    *,
    purpose: str,
    http2: bool = False,
    connect_timeout: float = 5.0,
    timeout: float = 15.0,
    max_connections: int = 100,
) -> httpx.AsyncClient:
    """A client for one provider. ``purpose`` names it in the pin log line.

    Every phase has a deadline (pywebpush's default has none): ``connect_timeout``
    for TCP and TLS, ``timeout`` for each read, write and wait for a pooled
    connection. No proxy from the environment (it would resolve names for us),
    no redirects, no cookies kept between pushes.
    """
    pins = {(pin.host, pin.port): pin.addresses for pin in settings.push_resolve}
    for pin in settings.push_resolve:
        log.info(
            "push host pinned",
            extra={
                "purpose": purpose,
                "host": pin.host,
                "port": pin.port,
                "addresses": list(pin.addresses),
            },
        )
    ca_file = None if settings.push_ca_file is None else str(settings.push_ca_file)
    # One context per client: httpcore sets its ALPN list on the context it is given.
    context = ssl_context(ca_file)
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    transport = _GuardedTransport(context, GuardedBackend(pins), http2, limits)
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        follow_redirects=False,
        trust_env=False,
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_refused(exc: BaseException) -> bool:
    """True when ``exc`` (as httpx raised it) is the address rule refusing a host."""
    return _caused_by(exc, AddressRefused)


def transport_outcome(exc: httpx.HTTPError) -> Outcome:
    """A send that got no answer: refused addresses fail with an alarm (the
    endpoint or a pin is wrong, retrying cannot help); everything else in the
    transport (timeouts, resets, TLS, a closed HTTP/2 connection) is retried."""
    if is_refused(exc):
        return Outcome(Verdict.FAILED, reason=f"address refused: {exc}", alarm=True)
    if isinstance(exc, httpx.TransportError):
        # A certificate the CAs do not vouch for may be an interception that
        # passes, but it is also a CA file an operator forgot: say so loudly.
        alarm = _caused_by(exc, ssl.SSLCertVerificationError)
        return Outcome(Verdict.RETRY, reason=f"{type(exc).__name__}: {exc}", alarm=alarm)
    return Outcome(Verdict.FAILED, reason=f"{type(exc).__name__}: {exc}", alarm=True)


def retry_after(headers: httpx.Headers, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or None."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return float(raw)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def http_retry(response: httpx.Response, reason: str | None) -> Outcome | None:
    """429 and 5xx, for every provider: retried after ``Retry-After`` when the
    service gives one; a 429 backs off as a quota answer. None for any other status."""
    status = response.status_code
    if status != 429 and status < 500:
        return None
    return Outcome(
        Verdict.RETRY,
        status=status,
        reason=reason,
        retry_after=retry_after(response.headers),
        quota=status == 429,
    )
