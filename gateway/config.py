"""The gateway's settings: read once from GATEWAY_* environment variables, checked at start."""

from __future__ import annotations

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
        )
        if settings.pool_min_size > settings.pool_max_size:
            raise ConfigError("GATEWAY_POOL_MIN_SIZE must not exceed GATEWAY_POOL_MAX_SIZE")
        return settings
