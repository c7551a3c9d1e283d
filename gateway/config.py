"""The gateway's settings: read once from GATEWAY_* environment variables, checked at start."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gateway.layer_auth import IdentityKeyError, load_identity_keys
from gateway.validation import DEFAULT_CATEGORIES, MAX_SESSION_TTL, normalize_host

DEFAULT_SESSION_TTL = 30 * 24 * 3600

# The largest legitimate request is a Web Push bind: a 2 KiB endpoint, an
# 87-character p256dh, a category list and a session hash, well under 8 KiB.
# 64 KiB leaves room for clients that pad or send extra fields, and keeps a
# flood of large bodies from costing memory.
DEFAULT_MAX_BODY_BYTES = 64 * 1024


DEFAULT_DATA_DIR = Path(".data")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


# The versions of Layer's Client API its clients send: the push-tokens page's
# examples (1.0), the API overview and layer-websdk 3.x (2.0), @layerhq/web-xdk
# 4.x (3.0). Push-token semantics are the same in all three.
DEFAULT_LAYER_VERSIONS = frozenset({"1.0", "2.0", "3.0"})


class Reader:
    """How one setting's environment text becomes its value; a subclass per kind."""

    def read(self, raw: str, name: str) -> Any:
        return raw


@dataclass(frozen=True)
class Whole(Reader):
    minimum: int
    maximum: int

    def read(self, raw: str, name: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
        return self.check(value, name)

    def check(self, value: int, name: str) -> int:
        """``value`` if within the bounds; ``name`` is what the message calls it."""
        if not self.minimum <= value <= self.maximum:
            raise ConfigError(
                f"{name} must be between {self.minimum} and {self.maximum}, got {value}"
            )
        return value


@dataclass(frozen=True)
class Number(Reader):
    maximum: float
    # Seconds: a bound of 0 would close every connection at once, so 0 is refused.
    positive: bool = False

    def read(self, raw: str, name: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not 0 <= value <= self.maximum:
            raise ConfigError(f"{name} must be between 0 and {self.maximum}, got {value}")
        if self.positive and value <= 0:
            raise ConfigError(f"{name} must be more than 0 seconds, got {value}")
        return value


class Flag(Reader):
    def read(self, raw: str, name: str) -> bool:
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class Parsed(Reader):
    """A setting with a parser of its own, which returns None for text that means unset."""

    parse: Callable[[str, str], Any]

    def read(self, raw: str, name: str) -> Any:
        return self.parse(raw, name)


TEXT = Reader()


def setting(
    env: str,
    default: Any,
    reader: Reader | None = TEXT,
    *,
    shown: str | None = None,
    **options: Any,
) -> Any:
    """A Settings field: its default, its environment variable and how that is read, and how
    the README's configuration table shows the default (``shown``; else the default itself)."""
    metadata = {"env": env, "reader": reader, "shown": shown}
    return field(default=default, metadata=metadata, **options)


def env_name(name: str) -> str:
    """The environment variable of the Settings field ``name``."""
    env: str = _FIELDS[name].metadata["env"]
    return env


def check_whole(name: str, value: int, label: str) -> int:
    """``value`` for the whole-number field ``name`` if within its bounds (ConfigError if not)."""
    reader = _FIELDS[name].metadata["reader"]
    if not isinstance(reader, Whole):
        raise TypeError(f"Settings.{name} is not a whole number")
    return reader.check(value, label)


def _path(raw: str, name: str) -> Path:
    return Path(raw)


def _categories(raw: str, name: str) -> frozenset[str] | None:
    if raw.strip() == "":
        return None
    names = frozenset(item.strip() for item in raw.split(","))
    bad = sorted(each for each in names if not each.isidentifier() or each in {"", "*"})
    if bad:
        raise ConfigError(f"{name} has invalid category names: {bad}")
    return names


# Short keys can be guessed; 16 characters is the floor, 32 random hex
# characters (`secrets.token_hex(16)`) is what to use.
ADMIN_TOKEN_MIN_LENGTH = 16


def _bearer_key(raw: str, name: str) -> str:
    # A Bearer credential is one run of visible ASCII: anything else could
    # never be sent back in an Authorization header.
    if len(raw) < ADMIN_TOKEN_MIN_LENGTH or not all("!" <= ch <= "~" for ch in raw):
        raise ConfigError(
            f"{name} must be at least {ADMIN_TOKEN_MIN_LENGTH} visible ASCII"
            " characters without spaces"
        )
    return raw


def _layer_versions(raw: str, name: str) -> frozenset[str] | None:
    if raw.strip() == "":
        return None
    versions = frozenset(item.strip() for item in raw.split(","))
    bad = sorted(v for v in versions if not re.fullmatch(r"[0-9]{1,3}\.[0-9]{1,3}", v))
    if bad:
        raise ConfigError(f"{name} must list versions like 2.0, got {bad}")
    return versions


_LAYER_AUTH_VARIABLES = (
    "GATEWAY_LAYER_APP_ID", "GATEWAY_LAYER_PROVIDER_ID", "GATEWAY_LAYER_IDENTITY_KEYS"
)


def _layer_identity_keys(env: Mapping[str, str]) -> tuple[str, ...]:
    """The provider's public keys as JWK JSON texts, checked now so a bad file stops the start.

    Read apart from the other settings: the three handshake variables go together."""
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


def _webpush_allowed_hosts(raw: str, name: str) -> tuple[str, ...] | None:
    if raw.strip() == "":
        return None
    hosts: list[str] = []
    for item in raw.split(","):
        # "*.mozilla.com" and ".mozilla.com" as sygnal writes them: the same suffix.
        host = item.strip().removeprefix("*").removeprefix(".")
        try:
            hosts.append(normalize_host(host))
        except ValueError as exc:
            raise ConfigError(f"{name} has an invalid host {item.strip()!r}: {exc}") from None
    return tuple(hosts)


# Delivery's settings (gateway/delivery/).
DEFAULT_DELIVERY_RETENTION = 7 * 86400
NO_APNS = "unset: no APNs delivery"

APNS_PRODUCTION = "https://api.push.apple.com"
APNS_SANDBOX = "https://api.sandbox.push.apple.com"


def _apns_url(raw: str, name: str) -> str:
    named = {"production": APNS_PRODUCTION, "sandbox": APNS_SANDBOX}
    url = named.get(raw, raw).rstrip("/")
    if not url.startswith("https://"):
        raise ConfigError(f"{name} must be production, sandbox or an https URL, got {raw!r}")
    return url


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


def _push_resolve(raw: str, name: str) -> tuple[PushPin, ...]:
    """``host:port:address[,address...]`` entries, comma-separated, as curl's --resolve:
    a piece that is only an address adds to the entry before it."""
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


def _file(raw: str, name: str) -> Path:
    path = Path(raw)
    if not path.is_file():
        raise ConfigError(f"{name}: {raw} is not a readable file")
    return path


def _vapid_subject(raw: str, name: str) -> str:
    # RFC 8292 section 2.1: the contact is a mailto: or an https: URI.
    if not raw.startswith(("mailto:", "https://")):
        raise ConfigError(f"{name} must be a mailto: or https: URI, got {raw!r}")
    return raw


def _https_base(raw: str, name: str) -> str:
    url = raw.rstrip("/")
    # The bearer token rides on every request: never over plain HTTP.
    if not url.startswith("https://"):
        raise ConfigError(f"{name} must be an https:// URL, got {raw!r}")
    return url


@dataclass(frozen=True)
class Settings:
    """Everything configurable, each with its default, its variable and its bounds, once."""

    database_url: str | None = setting("DATABASE_URL", None, shown="unset: embedded PostgreSQL")
    host: str = setting("GATEWAY_HOST", "127.0.0.1")
    port: int = setting("GATEWAY_PORT", 8080, Whole(0, 65535))
    workers: int = setting("GATEWAY_WORKERS", 1, Whole(1, 64))
    data_dir: Path = setting("GATEWAY_DATA_DIR", DEFAULT_DATA_DIR, Parsed(_path))
    session_ttl: int = setting(
        "GATEWAY_SESSION_TTL",
        DEFAULT_SESSION_TTL,
        Whole(1, MAX_SESSION_TTL),
        shown=f"{DEFAULT_SESSION_TTL} (30 days)",
    )
    categories: frozenset[str] = setting(
        "GATEWAY_CATEGORIES",
        DEFAULT_CATEGORIES,
        Parsed(_categories),
        shown="the six Navixy categories",
    )
    access_log: bool = setting("GATEWAY_ACCESS_LOG", False, Flag())
    max_body_bytes: int = setting(
        "GATEWAY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, Whole(1024, 1 << 24)
    )
    pool_min_size: int = setting("GATEWAY_POOL_MIN_SIZE", 2, Whole(1, 100))
    pool_max_size: int = setting("GATEWAY_POOL_MAX_SIZE", 8, Whole(1, 100))
    # The key of the senders' /internal/ API; None leaves that API shut.
    admin_token: str | None = setting(
        "GATEWAY_ADMIN_TOKEN",
        None,
        Parsed(_bearer_key),
        shown="unset: internal API shut",
        repr=False,
    )
    # A session registers a token a few times a day; 100 a second with bursts
    # of 200 stops a runaway client without touching a load test spread over
    # many sessions. 0 turns limiting off.
    rate_limit: float = setting("GATEWAY_RATE_LIMIT", 100.0, Number(1_000_000))
    rate_burst: int = setting("GATEWAY_RATE_BURST", 200, Whole(1, 1_000_000))
    # Past this many queued writes a process answers 503 at once instead of
    # queueing without end: at ~20k writes/s it is half a second of work.
    max_pending_writes: int = setting("GATEWAY_MAX_PENDING_WRITES", 10_000, Whole(1, 10_000_000))
    # The Accept versions the Layer surface serves.
    layer_versions: frozenset[str] = setting(
        "GATEWAY_LAYER_VERSIONS",
        DEFAULT_LAYER_VERSIONS,
        Parsed(_layer_versions),
        shown=",".join(sorted(DEFAULT_LAYER_VERSIONS)),
    )
    # Layer's authentication handshake (POST /nonces, POST /sessions): the app
    # id clients send, the identity provider's id (the tokens' iss) and its
    # public keys (JWK JSON texts, each with its kid). Empty: not configured.
    layer_app_id: str | None = setting(
        "GATEWAY_LAYER_APP_ID", None, shown="unset: handshake off"
    )
    layer_provider_id: str | None = setting(
        "GATEWAY_LAYER_PROVIDER_ID", None, shown="unset: handshake off"
    )
    # Read by _layer_identity_keys, with the two above.
    layer_identity_keys: tuple[str, ...] = setting(
        "GATEWAY_LAYER_IDENTITY_KEYS", (), reader=None, shown="unset: handshake off"
    )

    # The bearer key of /metrics; None leaves it open, as Prometheus expects
    # by default.
    metrics_token: str | None = setting(
        "GATEWAY_METRICS_TOKEN",
        None,
        Parsed(_bearer_key),
        shown="unset: `/metrics` open",
        repr=False,
    )
    # How often the registrations gauge is recounted, in the background: a
    # scrape itself never asks the database anything.
    metrics_refresh_seconds: float = setting(
        "GATEWAY_METRICS_REFRESH_SECONDS", 5.0, Number(3600, positive=True)
    )
    # The internal API's (and the metrics recount's) own pool: a fan-out can
    # never take a connection the public dialects need.
    internal_pool_max_size: int = setting("GATEWAY_INTERNAL_POOL_MAX_SIZE", 4, Whole(1, 100))
    # A fan-out reader that takes no bytes for this long is cut off, its
    # cursor and transaction closed.
    internal_write_timeout: float = setting(
        "GATEWAY_INTERNAL_WRITE_TIMEOUT", 10.0, Number(3600, positive=True)
    )
    # The longest a fan-out stream (and the transaction under it) may last,
    # however steadily its reader reads.
    internal_stream_timeout: float = setting(
        "GATEWAY_INTERNAL_STREAM_TIMEOUT", 300.0, Number(24 * 3600, positive=True)
    )
    # Slow and idle clients: the longest a request's head may take to arrive
    # (from its first byte), its body (from the end of the head), and an idle
    # kept-alive connection may wait for its next request.
    head_timeout: float = setting("GATEWAY_HEAD_TIMEOUT", 10.0, Number(3600, positive=True))
    body_timeout: float = setting("GATEWAY_BODY_TIMEOUT", 30.0, Number(3600, positive=True))
    keepalive_timeout: float = setting(
        "GATEWAY_KEEPALIVE_TIMEOUT", 30.0, Number(3600, positive=True)
    )
    # Hosts a Web Push endpoint may be on (each admits itself and the names
    # under it); None admits every public DNS name.
    webpush_allowed_hosts: tuple[str, ...] | None = setting(
        "GATEWAY_WEBPUSH_ALLOWED_HOSTS",
        None,
        Parsed(_webpush_allowed_hosts),
        shown="unset: any public DNS name",
    )

    # Delivery (gateway/delivery/). Worker tasks per process; None: one when any
    # provider has credentials, else none.
    delivery_workers: int | None = setting(
        "GATEWAY_DELIVERY_WORKERS",
        None,
        Whole(0, 64),
        shown="1 per process when a provider is configured, else 0",
    )
    # sygnal's backoff: base x 2^n after the n-th failed attempt, quota answers
    # (429) from a longer base; tests set them to 0.
    delivery_retry_base: float = setting("GATEWAY_DELIVERY_RETRY_BASE", 10.0, Number(86400))
    delivery_quota_retry_base: float = setting(
        "GATEWAY_DELIVERY_QUOTA_RETRY_BASE", 60.0, Number(86400)
    )
    # A claimed row's lease: the worker must record the outcome before it ends,
    # or the row is due again. Longer than any one send may take.
    delivery_lease: float = setting("GATEWAY_DELIVERY_LEASE", 60.0, Number(3600))
    # How often an idle worker looks for due rows when no NOTIFY wakes it.
    delivery_poll: float = setting("GATEWAY_DELIVERY_POLL", 5.0, Number(3600))
    # Sends in flight at once, per provider.
    delivery_concurrency: int = setting("GATEWAY_DELIVERY_CONCURRENCY", 256, Whole(1, 10_000))
    # Delivered rows are kept this long (seconds), then purged.
    delivery_retention: int = setting(
        "GATEWAY_DELIVERY_RETENTION",
        DEFAULT_DELIVERY_RETENTION,
        Whole(0, 10 * 365 * 86400),
        shown=f"{DEFAULT_DELIVERY_RETENTION} (7 days)",
    )
    # APNs token auth: the .p8 key, its id, the team; the default topic for
    # registrations without a bundle id; the service's base URL.
    apns_key_file: Path | None = setting(
        "GATEWAY_APNS_KEY_FILE", None, Parsed(_file), shown=NO_APNS
    )
    apns_key_id: str | None = setting("GATEWAY_APNS_KEY_ID", None, shown=NO_APNS)
    apns_team_id: str | None = setting("GATEWAY_APNS_TEAM_ID", None, shown=NO_APNS)
    apns_topic: str | None = setting("GATEWAY_APNS_TOPIC", None, shown="unset")
    apns_url: str = setting(
        "GATEWAY_APNS_URL", APNS_PRODUCTION, Parsed(_apns_url), shown="production"
    )
    # Delivery's network (gateway/delivery/net.py): pinned push hosts (the only way
    # a send reaches a private or loopback address) and extra CAs beside the system's.
    push_resolve: tuple[PushPin, ...] = setting(
        "GATEWAY_PUSH_RESOLVE", (), Parsed(_push_resolve), shown="unset"
    )
    push_ca_file: Path | None = setting(
        "GATEWAY_PUSH_CA_FILE", None, Parsed(_file), shown="unset"
    )
    # FCM HTTP v1: the service-account JSON and the API's base URL.
    fcm_credentials: Path | None = setting(
        "GATEWAY_FCM_CREDENTIALS", None, Parsed(_file), shown="unset: no FCM delivery"
    )
    fcm_url: str = setting("GATEWAY_FCM_URL", "https://fcm.googleapis.com", Parsed(_https_base))
    # Web Push VAPID: the P-256 private key PEM (`gateway vapid keygen`) and the contact.
    vapid_private_key: Path | None = setting(
        "GATEWAY_VAPID_PRIVATE_KEY", None, Parsed(_file), shown="unset: no Web Push delivery"
    )
    vapid_subject: str | None = setting(
        "GATEWAY_VAPID_SUBJECT", None, Parsed(_vapid_subject), shown="required with the key"
    )

    @property
    def layer_auth_configured(self) -> bool:
        return bool(self.layer_identity_keys)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for declared in fields(cls):
            reader: Reader | None = declared.metadata["reader"]
            raw = env.get(declared.metadata["env"])
            if reader is None or raw is None or raw == "":
                continue
            value = reader.read(raw, declared.metadata["env"])
            if value is not None:
                values[declared.name] = value
        settings = cls(**values, layer_identity_keys=_layer_identity_keys(env))
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


_FIELDS = {declared.name: declared for declared in fields(Settings)}
