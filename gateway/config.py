"""The gateway's settings: read once from GATEWAY_* environment variables, checked at start."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.layer_auth import IdentityKeyError, load_identity_keys
from gateway.validation import DEFAULT_CATEGORIES, MAX_SESSION_TTL, normalize_host

DEFAULT_SESSION_TTL = 30 * 24 * 3600

# The largest legitimate request is a Web Push bind: a 2 KiB endpoint, an
# 87-character p256dh, a category list and a session hash, well under 8 KiB.
# 64 KiB leaves room for clients that pad or send extra fields, and keeps a
# flood of large bodies from costing memory.
DEFAULT_MAX_BODY_BYTES = 64 * 1024


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


# The versions of Layer's Client API its clients send: the push-tokens page's
# examples (1.0), the API overview and layer-websdk 3.x (2.0), @layerhq/web-xdk
# 4.x (3.0). Push-token semantics are the same in all three.
DEFAULT_LAYER_VERSIONS = frozenset({"1.0", "2.0", "3.0"})


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, maximum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not 0 <= value <= maximum:
        raise ConfigError(f"{name} must be between 0 and {maximum}, got {value}")
    return value


def _positive(env: Mapping[str, str], name: str, default: float, maximum: float) -> float:
    """Seconds: a bound of 0 would close every connection at once, so 0 is refused."""
    value = _float(env, name, default, maximum)
    if value <= 0:
        raise ConfigError(f"{name} must be more than 0 seconds, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _categories(env: Mapping[str, str]) -> frozenset[str]:
    raw = env.get("GATEWAY_CATEGORIES")
    if raw is None or raw.strip() == "":
        return DEFAULT_CATEGORIES
    names = frozenset(item.strip() for item in raw.split(","))
    bad = sorted(name for name in names if not name.isidentifier() or name in {"", "*"})
    if bad:
        raise ConfigError(f"GATEWAY_CATEGORIES has invalid category names: {bad}")
    return names


# Short keys can be guessed; 16 characters is the floor, 32 random hex
# characters (`secrets.token_hex(16)`) is what to use.
ADMIN_TOKEN_MIN_LENGTH = 16


def _admin_token(env: Mapping[str, str], name: str = "GATEWAY_ADMIN_TOKEN") -> str | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    # A Bearer credential is one run of visible ASCII: anything else could
    # never be sent back in an Authorization header.
    if len(raw) < ADMIN_TOKEN_MIN_LENGTH or not all("!" <= ch <= "~" for ch in raw):
        raise ConfigError(
            f"{name} must be at least {ADMIN_TOKEN_MIN_LENGTH} visible ASCII"
            " characters without spaces"
        )
    return raw


def _layer_versions(env: Mapping[str, str]) -> frozenset[str]:
    raw = env.get("GATEWAY_LAYER_VERSIONS")
    if raw is None or raw.strip() == "":
        return DEFAULT_LAYER_VERSIONS
    versions = frozenset(item.strip() for item in raw.split(","))
    bad = sorted(v for v in versions if not re.fullmatch(r"[0-9]{1,3}\.[0-9]{1,3}", v))
    if bad:
        raise ConfigError(f"GATEWAY_LAYER_VERSIONS must list versions like 2.0, got {bad}")
    return versions


_LAYER_AUTH_VARIABLES = (
    "GATEWAY_LAYER_APP_ID", "GATEWAY_LAYER_PROVIDER_ID", "GATEWAY_LAYER_IDENTITY_KEYS"
)


def _layer_identity_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    """The provider's public keys as JWK JSON texts, checked now so a bad file stops the start."""
    set_ = [name for name in _LAYER_AUTH_VARIABLES if env.get(name)]
    if not set_:
        return ()
    if len(set_) < len(_LAYER_AUTH_VARIABLES):
        missing = [name for name in _LAYER_AUTH_VARIABLES if name not in set_]
        raise ConfigError(
            f"the Layer authentication handshake needs {', '.join(missing)} too"
            f" (set: {', '.join(set_)})"
        )
    try:
        return load_identity_keys(Path(env["GATEWAY_LAYER_IDENTITY_KEYS"]))
    except IdentityKeyError as exc:
        raise ConfigError(f"GATEWAY_LAYER_IDENTITY_KEYS: {exc}") from None


def _webpush_allowed_hosts(env: Mapping[str, str]) -> tuple[str, ...] | None:
    raw = env.get("GATEWAY_WEBPUSH_ALLOWED_HOSTS")
    if raw is None or raw.strip() == "":
        return None
    hosts: list[str] = []
    for item in raw.split(","):
        # "*.mozilla.com" and ".mozilla.com" as sygnal writes them: the same suffix.
        name = item.strip().removeprefix("*").removeprefix(".")
        try:
            hosts.append(normalize_host(name))
        except ValueError as exc:
            raise ConfigError(
                f"GATEWAY_WEBPUSH_ALLOWED_HOSTS has an invalid host {item.strip()!r}: {exc}"
            ) from None
    return tuple(hosts)


APNS_PRODUCTION = "https://api.push.apple.com"
APNS_SANDBOX = "https://api.sandbox.push.apple.com"


def _apns_url(env: Mapping[str, str]) -> str:
    raw = env.get("GATEWAY_APNS_URL") or APNS_PRODUCTION
    named = {"production": APNS_PRODUCTION, "sandbox": APNS_SANDBOX}
    url = named.get(raw, raw).rstrip("/")
    if not url.startswith("https://"):
        raise ConfigError(
            f"GATEWAY_APNS_URL must be production, sandbox or an https URL, got {raw!r}"
        )
    return url


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the defaults a fresh checkout runs on."""

    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    data_dir: Path = Path(".data")
    session_ttl: int = DEFAULT_SESSION_TTL
    categories: frozenset[str] = field(default=DEFAULT_CATEGORIES)
    access_log: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    pool_min_size: int = 2
    pool_max_size: int = 8
    # The key of the senders' /internal/ API; None leaves that API shut.
    admin_token: str | None = field(default=None, repr=False)
    # A session registers a token a few times a day; 100 a second with bursts
    # of 200 stops a runaway client without touching a load test spread over
    # many sessions. 0 turns limiting off.
    rate_limit: float = 100.0
    rate_burst: int = 200
    # Past this many queued writes a process answers 503 at once instead of
    # queueing without end: at ~20k writes/s it is half a second of work.
    max_pending_writes: int = 10_000
    # The Accept versions the Layer surface serves.
    layer_versions: frozenset[str] = field(default=DEFAULT_LAYER_VERSIONS)
    # Layer's authentication handshake (POST /nonces, POST /sessions): the app
    # id clients send, the identity provider's id (the tokens' iss) and its
    # public keys (JWK JSON texts, each with its kid). Empty: not configured.
    layer_app_id: str | None = None
    layer_provider_id: str | None = None
    layer_identity_keys: tuple[str, ...] = ()

    # The bearer key of /metrics; None leaves it open, as Prometheus expects
    # by default.
    metrics_token: str | None = field(default=None, repr=False)
    # How often the registrations gauge is recounted, in the background: a
    # scrape itself never asks the database anything.
    metrics_refresh_seconds: float = 5.0
    # The internal API's (and the metrics recount's) own pool: a fan-out can
    # never take a connection the public dialects need.
    internal_pool_max_size: int = 4
    # A fan-out reader that takes no bytes for this long is cut off, its
    # cursor and transaction closed.
    internal_write_timeout: float = 10.0
    # The longest a fan-out stream (and the transaction under it) may last,
    # however steadily its reader reads.
    internal_stream_timeout: float = 300.0
    # Slow and idle clients: the longest a request's head may take to arrive
    # (from its first byte), its body (from the end of the head), and an idle
    # kept-alive connection may wait for its next request.
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 30.0
    # Hosts a Web Push endpoint may be on (each admits itself and the names
    # under it); None admits every public DNS name.
    webpush_allowed_hosts: tuple[str, ...] | None = None

    # Delivery (gateway/delivery/). Worker tasks per process; None: one when any
    # provider has credentials, else none.
    delivery_workers: int | None = None
    # sygnal's backoff: base x 2^n after the n-th failed attempt, quota answers
    # (429) from a longer base; tests set them to 0.
    delivery_retry_base: float = 10.0
    delivery_quota_retry_base: float = 60.0
    # A claimed row's lease: the worker must record the outcome before it ends,
    # or the row is due again. Longer than any one send may take.
    delivery_lease: float = 60.0
    # How often an idle worker looks for due rows when no NOTIFY wakes it.
    delivery_poll: float = 5.0
    # Sends in flight at once, per provider.
    delivery_concurrency: int = 256
    # Delivered rows are kept this long (seconds), then purged.
    delivery_retention: int = 7 * 86400
    # APNs token auth: the .p8 key, its id, the team; the default topic for
    # registrations without a bundle id; the service's base URL.
    apns_key_file: Path | None = None
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topic: str | None = None
    apns_url: str = APNS_PRODUCTION
    # Delivery's network (gateway/delivery/net.py): pinned push hosts (the only way
    # a send reaches a private or loopback address) and extra CAs beside the system's.
    push_resolve: tuple[PushPin, ...] = ()
    push_ca_file: Path | None = None
    # FCM HTTP v1: the service-account JSON and the API's base URL.
    fcm_credentials: Path | None = None
    fcm_url: str = "https://fcm.googleapis.com"
    # Web Push VAPID: the P-256 private key PEM (`gateway vapid keygen`) and the contact.
    vapid_private_key: Path | None = None
    vapid_subject: str | None = None

    @property
    def layer_auth_configured(self) -> bool:
        return bool(self.layer_identity_keys)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        settings = cls(
            database_url=env.get("DATABASE_URL") or None,
            host=env.get("GATEWAY_HOST") or "127.0.0.1",
            port=_int(env, "GATEWAY_PORT", 8080, 0, 65535),
            workers=_int(env, "GATEWAY_WORKERS", 1, 1, 64),
            data_dir=Path(env.get("GATEWAY_DATA_DIR") or ".data"),
            session_ttl=_int(env, "GATEWAY_SESSION_TTL", DEFAULT_SESSION_TTL, 1, MAX_SESSION_TTL),
            categories=_categories(env),
            access_log=_bool(env, "GATEWAY_ACCESS_LOG", False),
            max_body_bytes=_int(
                env, "GATEWAY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1024, 1 << 24
            ),
            pool_min_size=_int(env, "GATEWAY_POOL_MIN_SIZE", 2, 1, 100),
            pool_max_size=_int(env, "GATEWAY_POOL_MAX_SIZE", 8, 1, 100),
            admin_token=_admin_token(env),
            rate_limit=_float(env, "GATEWAY_RATE_LIMIT", 100.0, 1_000_000),
            rate_burst=_int(env, "GATEWAY_RATE_BURST", 200, 1, 1_000_000),
            max_pending_writes=_int(env, "GATEWAY_MAX_PENDING_WRITES", 10_000, 1, 10_000_000),
            layer_versions=_layer_versions(env),
            layer_app_id=env.get("GATEWAY_LAYER_APP_ID") or None,
            layer_provider_id=env.get("GATEWAY_LAYER_PROVIDER_ID") or None,
            layer_identity_keys=_layer_identity_keys(env),
            metrics_token=_admin_token(env, "GATEWAY_METRICS_TOKEN"),
            metrics_refresh_seconds=_positive(env, "GATEWAY_METRICS_REFRESH_SECONDS", 5.0, 3600),
            internal_pool_max_size=_int(env, "GATEWAY_INTERNAL_POOL_MAX_SIZE", 4, 1, 100),
            internal_write_timeout=_positive(env, "GATEWAY_INTERNAL_WRITE_TIMEOUT", 10.0, 3600),
            internal_stream_timeout=_positive(
                env, "GATEWAY_INTERNAL_STREAM_TIMEOUT", 300.0, 24 * 3600
            ),
            head_timeout=_positive(env, "GATEWAY_HEAD_TIMEOUT", 10.0, 3600),
            body_timeout=_positive(env, "GATEWAY_BODY_TIMEOUT", 30.0, 3600),
            keepalive_timeout=_positive(env, "GATEWAY_KEEPALIVE_TIMEOUT", 30.0, 3600),
            webpush_allowed_hosts=_webpush_allowed_hosts(env),
            delivery_workers=_int(env, "GATEWAY_DELIVERY_WORKERS", -1, 0, 64)
            if env.get("GATEWAY_DELIVERY_WORKERS")
            else None,
            delivery_retry_base=_float(env, "GATEWAY_DELIVERY_RETRY_BASE", 10.0, 86400),
            delivery_quota_retry_base=_float(env, "GATEWAY_DELIVERY_QUOTA_RETRY_BASE", 60.0, 86400),
            delivery_lease=_float(env, "GATEWAY_DELIVERY_LEASE", 60.0, 3600),
            delivery_poll=_float(env, "GATEWAY_DELIVERY_POLL", 5.0, 3600),
            delivery_concurrency=_int(env, "GATEWAY_DELIVERY_CONCURRENCY", 256, 1, 10_000),
            delivery_retention=_int(
                env, "GATEWAY_DELIVERY_RETENTION", 7 * 86400, 0, 10 * 365 * 86400
            ),
            apns_key_file=_file(env, "GATEWAY_APNS_KEY_FILE"),
            apns_key_id=env.get("GATEWAY_APNS_KEY_ID") or None,
            apns_team_id=env.get("GATEWAY_APNS_TEAM_ID") or None,
            apns_topic=env.get("GATEWAY_APNS_TOPIC") or None,
            apns_url=_apns_url(env),
            push_resolve=_push_resolve(env),
            push_ca_file=_file(env, "GATEWAY_PUSH_CA_FILE"),
            fcm_credentials=_file(env, "GATEWAY_FCM_CREDENTIALS"),
            fcm_url=_https_base(env, "GATEWAY_FCM_URL", "https://fcm.googleapis.com"),
            vapid_private_key=_file(env, "GATEWAY_VAPID_PRIVATE_KEY"),
            vapid_subject=_vapid_subject(env),
        )
        if settings.pool_min_size > settings.pool_max_size:
            raise ConfigError("GATEWAY_POOL_MIN_SIZE must not exceed GATEWAY_POOL_MAX_SIZE")
        apns = [settings.apns_key_file, settings.apns_key_id, settings.apns_team_id]
        if any(apns) and not all(apns):
            raise ConfigError(
                "GATEWAY_APNS_KEY_FILE, GATEWAY_APNS_KEY_ID and GATEWAY_APNS_TEAM_ID go together"
            )
        if settings.delivery_lease < 1:
            raise ConfigError("GATEWAY_DELIVERY_LEASE must be at least 1 second")
        if settings.vapid_private_key is not None and settings.vapid_subject is None:
            raise ConfigError("GATEWAY_VAPID_SUBJECT is required with GATEWAY_VAPID_PRIVATE_KEY")
        return settings


# Delivery's settings (gateway/delivery/): read by Settings.from_env above.

@dataclass(frozen=True)
class PushPin:
    """One GATEWAY_PUSH_RESOLVE entry: connections to host:port go to these addresses."""

    host: str
    port: int
    addresses: tuple[str, ...]


def _pin_address(raw: str, name: str) -> str:
    text = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not an IP address") from None


def _push_resolve(env: Mapping[str, str]) -> tuple[PushPin, ...]:
    """``host:port:address[,address...]`` entries, comma-separated, as curl's --resolve:
    a piece that is only an address adds to the entry before it."""
    name = "GATEWAY_PUSH_RESOLVE"
    raw = env.get(name) or ""
    pins: list[PushPin] = []
    for piece in (item.strip() for item in raw.split(",")):
        if not piece:
            continue
        host, _, rest = piece.partition(":")
        port, _, address = rest.partition(":")
        if host and port.isdigit() and address and not host.startswith("["):
            if not 1 <= int(port) <= 65535:
                raise ConfigError(f"{name}: port {port} of {host} is out of range")
            host = host.lower().rstrip(".")
            pins.append(PushPin(host, int(port), (_pin_address(address, name),)))
        elif pins:
            last = pins[-1]
            pins[-1] = PushPin(last.host, last.port, (*last.addresses, _pin_address(piece, name)))
        else:
            raise ConfigError(f"{name}: {piece!r} is not host:port:address")
    return tuple(pins)


def _file(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    path = Path(raw)
    if not path.is_file():
        raise ConfigError(f"{name}: {raw} is not a readable file")
    return path


def _vapid_subject(env: Mapping[str, str]) -> str | None:
    raw = env.get("GATEWAY_VAPID_SUBJECT")
    if raw is None or raw == "":
        return None
    # RFC 8292 section 2.1: the contact is a mailto: or an https: URI.
    if not raw.startswith(("mailto:", "https://")):
        raise ConfigError(f"GATEWAY_VAPID_SUBJECT must be a mailto: or https: URI, got {raw!r}")
    return raw


def _https_base(env: Mapping[str, str], name: str, default: str) -> str:
    raw = (env.get(name) or default).rstrip("/")
    # The bearer token rides on every request: never over plain HTTP.
    if not raw.startswith("https://"):
        raise ConfigError(f"{name} must be an https:// URL, got {raw!r}")
    return raw

