"""The gateway's settings: read once from GATEWAY_* environment variables, checked at start."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.validation import DEFAULT_CATEGORIES

DEFAULT_SESSION_TTL = 30 * 24 * 3600

# The largest legitimate request is a Web Push bind: a 2 KiB endpoint, an
# 87-character p256dh, a category list and a session hash, well under 8 KiB.
# 64 KiB leaves room for clients that pad or send extra fields, and keeps a
# flood of large bodies from costing memory.
DEFAULT_MAX_BODY_BYTES = 64 * 1024


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


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


def _admin_token(env: Mapping[str, str]) -> str | None:
    raw = env.get("GATEWAY_ADMIN_TOKEN")
    if raw is None or raw == "":
        return None
    # A Bearer credential is one run of visible ASCII: anything else could
    # never be sent back in an Authorization header.
    if len(raw) < ADMIN_TOKEN_MIN_LENGTH or not all("!" <= ch <= "~" for ch in raw):
        raise ConfigError(
            f"GATEWAY_ADMIN_TOKEN must be at least {ADMIN_TOKEN_MIN_LENGTH} visible ASCII"
            " characters without spaces"
        )
    return raw


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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        settings = cls(
            database_url=env.get("DATABASE_URL") or None,
            host=env.get("GATEWAY_HOST") or "127.0.0.1",
            port=_int(env, "GATEWAY_PORT", 8080, 0, 65535),
            workers=_int(env, "GATEWAY_WORKERS", 1, 1, 64),
            data_dir=Path(env.get("GATEWAY_DATA_DIR") or ".data"),
            session_ttl=_int(env, "GATEWAY_SESSION_TTL", DEFAULT_SESSION_TTL, 1, 10 * 365 * 86400),
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

