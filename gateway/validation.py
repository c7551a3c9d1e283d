"""Syntax rules for client-supplied identifiers, push tokens, Web Push keys and category filters."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote, urlsplit

import idna
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.commands import Provider

__all__ = [
    "ANY_PUSH_TOKEN_JSON_SCHEMA",
    "BASE64URL_JSON_PATTERN",
    "DEFAULT_CATEGORIES",
    "IDENTIFIER_JSON_SCHEMA",
    "MAX_ID_LENGTH",
    "MAX_SESSION_TTL",
    "PUSH_TOKEN_JSON_SCHEMA",
    "category_filter_admits",
    "check_fcm_token",
    "check_identifier",
    "check_recent_moment",
    "check_webpush_auth",
    "check_webpush_p256dh",
    "has_control",
    "host_is_allowed",
    "normalize_apns_token",
    "normalize_category_filter",
    "normalize_host",
    "normalize_webpush_endpoint",
]

MAX_ID_LENGTH = 255

# The longest a session may last, in seconds, wherever its lifetime comes from
# (GATEWAY_SESSION_TTL, `session create --ttl`, the internal API): ten years.
# Checked before anything is written; far beyond it the expiry would not even
# read back as a Python datetime.
MAX_SESSION_TTL = 10 * 365 * 86400

APNS_TOKEN_MIN_LENGTH = 32
APNS_TOKEN_MAX_LENGTH = 200
FCM_TOKEN_MIN_LENGTH = 8
FCM_TOKEN_MAX_LENGTH = 4096
WEBPUSH_ENDPOINT_MAX_LENGTH = 2048
P256DH_LENGTH = 65
AUTH_SECRET_LENGTH = 16

DEFAULT_CATEGORIES: frozenset[str] = frozenset(
    {
        "chat_message",
        "history_rule",
        "history_task",
        "history_info",
        "history_service_task",
        "history_work_status",
    }
)

# Explicit ASCII classes: \w, \d and str.isdigit() would let Unicode digits and
# letters through, which providers reject.
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_FCM_RE = re.compile(r"[A-Za-z0-9_:-]+")
_BASE64URL_RE = re.compile(r"[A-Za-z0-9_-]*")

# Error messages quote at most this much of an offending item, so a huge
# payload is never reflected back whole.
_QUOTE_LIMIT = 40


def _quote(item: str) -> str:
    if len(item) > _QUOTE_LIMIT:
        item = item[:_QUOTE_LIMIT] + "..."
    return repr(item)


# Unicode's Cc category is exactly these 65 code points (C0, DEL and C1); one
# regex search is ~10 times cheaper than asking unicodedata character by character.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")


# check_identifier's rule as JSON Schema states it (ECMA-262 escapes), for
# the API document: the field that checks an identifier carries it.
IDENTIFIER_JSON_SCHEMA: dict[str, int | str] = {
    "minLength": 1,
    "maxLength": MAX_ID_LENGTH,
    "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
}

_TOKEN_FORMS = (
    f"APNs: {APNS_TOKEN_MIN_LENGTH} to {APNS_TOKEN_MAX_LENGTH} hex digits, an even number "
    f"(stored lowercase). FCM: {FCM_TOKEN_MIN_LENGTH} to {FCM_TOKEN_MAX_LENGTH} characters "
    "of [A-Za-z0-9_:-]."
)

# normalize_token's rules as JSON Schema states them, for the API document:
# both the APNs and the FCM form, since which applies depends on the type.
PUSH_TOKEN_JSON_SCHEMA: dict[str, int | str] = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_:-]+$",
    "minLength": FCM_TOKEN_MIN_LENGTH,
    "maxLength": FCM_TOKEN_MAX_LENGTH,
    "description": _TOKEN_FORMS,
}

# The same with Web Push's form: every form the three Navixy applications take.
ANY_PUSH_TOKEN_JSON_SCHEMA: dict[str, int | str] = {
    "type": "string",
    "pattern": (
        f"^([A-Za-z0-9_:-]{{{FCM_TOKEN_MIN_LENGTH},{FCM_TOKEN_MAX_LENGTH}}}|https://[!-~]+)$"
    ),
    "maxLength": FCM_TOKEN_MAX_LENGTH,
    "description": _TOKEN_FORMS + " w3c_pushapi: the subscription's https endpoint URL.",
}

# check_webpush_p256dh's and check_webpush_auth's alphabet, as JSON Schema states it.
BASE64URL_JSON_PATTERN = "^[A-Za-z0-9_-]+={0,2}$"


def has_control(value: str) -> bool:
    return _CONTROL_RE.search(value) is not None


def _is_utf8_encodable(value: str) -> bool:
    # Lone surrogates survive in a Python str but PostgreSQL's text type (and
    # asyncpg's encoder) refuse them, failing the whole request late.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_identifier(value: str, max_length: int = MAX_ID_LENGTH) -> str:
    # Not stripped: an id is opaque, and silently trimming would make two
    # distinct client ids collide.
    if not value:
        raise ValueError("must not be empty")
    if len(value) > max_length:
        raise ValueError(f"must be at most {max_length} characters")
    if not _is_utf8_encodable(value):
        raise ValueError("must be valid unicode (no lone surrogates)")
    if has_control(value):
        raise ValueError("must not contain control characters")
    return value


def normalize_apns_token(value: str) -> str:
    # Length is checked first so an oversized payload is refused before any scan.
    if not APNS_TOKEN_MIN_LENGTH <= len(value) <= APNS_TOKEN_MAX_LENGTH:
        raise ValueError(
            f"must be between {APNS_TOKEN_MIN_LENGTH} and {APNS_TOKEN_MAX_LENGTH} characters"
        )
    if not _HEX_RE.fullmatch(value):
        raise ValueError("must be hexadecimal")
    if len(value) % 2:
        raise ValueError("must have an even number of hex digits")
    # APNs is case-insensitive; one case keeps the unique index meaningful.
    return value.lower()


def check_fcm_token(value: str) -> str:
    if not FCM_TOKEN_MIN_LENGTH <= len(value) <= FCM_TOKEN_MAX_LENGTH:
        raise ValueError(
            f"must be between {FCM_TOKEN_MIN_LENGTH} and {FCM_TOKEN_MAX_LENGTH} characters"
        )
    if not _FCM_RE.fullmatch(value):
        raise ValueError("must contain only letters, digits, '_', ':' and '-'")
    return value


# Names that lead inside a network by definition, never to a push service:
# RFC 6761's localhost, invalid and test, mDNS's local (RFC 6762), ICANN's
# internal, home.arpa and every other arpa name, onion (RFC 7686) and alt
# (RFC 9476), and the suffixes sites use privately and ICANN will never
# delegate. (example stays: it is the documentation name, and resolves to
# nothing; the sender's address check stands behind this list.)
SPECIAL_USE_SUFFIXES: frozenset[str] = frozenset(
    {
        "localhost", "local", "localdomain", "internal", "intranet", "lan", "home", "corp",
        "private", "arpa", "onion", "alt", "invalid", "test",
    }
)

# One LDH label, in lowercase. A top-level label must begin with a letter:
# every way of writing an IPv4 address (dotted, shortened, integer, hex,
# octal) ends in a number, so none of them is a DNS name here.
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TOP_LABEL_RE = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
# %00-%1F and %7F: a NUL or a newline smuggled past the raw-character check.
_ESCAPED_CONTROL_RE = re.compile(r"%(?:[01][0-9A-Fa-f]|7[Ff])")
HOST_MAX_LENGTH = 253
DEFAULT_HTTPS_PORT = 443

# Characters that are invisible or reorder text: a host or path holding one
# looks like another it is not.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Co", "Cn", "Cs", "Zl", "Zp", "Zs"})


def _has_invisible(value: str) -> bool:
    return not value.isascii() and any(
        unicodedata.category(ch) in _INVISIBLE_CATEGORIES for ch in value
    )


def normalize_host(raw: str) -> str:
    """A host as a public DNS name in its one canonical spelling, or ValueError.

    Percent-escapes are undone (as a browser's URL parser does), the name is
    mapped to lowercase A-labels with IDNA (UTS 46) and a trailing dot is
    dropped; IP literals, single labels and special-use names are refused.
    """
    try:
        host = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise ValueError("must have a host that is valid UTF-8") from None
    if has_control(host) or _has_invisible(host) or any(ch.isspace() for ch in host):
        raise ValueError("must not have control, invisible or space characters in its host")
    if host.isascii() and "xn--" not in host.lower():
        host = host.lower()
    else:
        try:
            host = idna.encode(host, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            raise ValueError("must have a valid internationalised host name") from None
    if host.endswith("."):
        host = host[:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise ValueError("must name its host by a DNS name, not an IP address")
    labels = host.split(".")
    if len(host) > HOST_MAX_LENGTH or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError("must have a valid DNS host name")
    if not _TOP_LABEL_RE.fullmatch(labels[-1]):
        raise ValueError("must name its host by a DNS name, not an IP address")
    if len(labels) < 2:
        raise ValueError("must have a fully qualified host name, not a single label")
    if labels[-1] in SPECIAL_USE_SUFFIXES:
        raise ValueError(f"must have a public host, not a .{labels[-1]} name")
    return host


def host_is_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Whether a normalised host is one of ``allowed`` or under one, label by label."""
    return any(host == suffix or host.endswith("." + suffix) for suffix in allowed)


def normalize_webpush_endpoint(value: str, allowed_hosts: Iterable[str] | None = None) -> str:
    """A Web Push endpoint in its one canonical spelling, or ValueError.

    The one function for endpoints, wherever they come from (a bind, a
    feedback entry), so that two spellings of one subscription are one token:
    scheme and host in lowercase, the host as IDNA A-labels without a trailing
    dot, no default port, an empty path as "/". The host must be a public DNS
    name and, when ``allowed_hosts`` is given, one of them or under one.
    """
    if len(value) > WEBPUSH_ENDPOINT_MAX_LENGTH:
        raise ValueError(f"must be at most {WEBPUSH_ENDPOINT_MAX_LENGTH} characters")
    # urlsplit silently drops tabs and newlines (WHATWG behaviour), so they
    # must be refused before parsing or the stored URL would differ from the
    # one the client meant.
    if any(ch.isspace() for ch in value) or has_control(value):
        raise ValueError("must not contain whitespace or control characters")
    if not _is_utf8_encodable(value):
        raise ValueError("must be valid unicode (no lone surrogates)")
    if _has_invisible(value):
        raise ValueError("must not contain invisible characters")
    if _ESCAPED_CONTROL_RE.search(value):
        raise ValueError("must not contain percent-encoded control characters")
    # A browser reads a backslash as a slash in an https URL, urlsplit does
    # not: the two would see different hosts.
    if "\\" in value:
        raise ValueError("must not contain backslashes")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValueError("must be a valid URL") from None
    # The push service holds the subscription's secrets in transit; plain
    # http would leak them.
    if parts.scheme != "https" or not value[:8].lower() == "https://":
        raise ValueError("must be an https URL")
    if "@" in parts.netloc:
        raise ValueError("must not contain credentials")
    if "#" in value:
        raise ValueError("must not have a fragment")
    if "[" in parts.netloc or "]" in parts.netloc:
        if not parts.netloc.startswith("[") or "]" not in parts.netloc:
            raise ValueError("must be a valid URL")
        raise ValueError("must name its host by a DNS name, not an IP address")
    raw_host, colon, raw_port = parts.netloc.rpartition(":")
    if not colon:
        raw_host, raw_port = parts.netloc, ""
    port = DEFAULT_HTTPS_PORT
    if raw_port:
        if not _PORT_RE.fullmatch(raw_port):
            raise ValueError("must be a valid URL")
        port = int(raw_port)
        if not 1 <= port <= 65535:
            raise ValueError("must have a port between 1 and 65535")
    if not raw_host:
        raise ValueError("must have a host")
    host = normalize_host(raw_host)
    if allowed_hosts is not None and not host_is_allowed(host, allowed_hosts):
        raise ValueError("must be on a push service this gateway accepts")
    netloc = host if port == DEFAULT_HTTPS_PORT else f"{host}:{port}"
    path = parts.path or "/"
    if not path.isascii():
        # As a browser serialises it: UTF-8, percent-encoded.
        path = quote(path, safe="/%:@!$&'()*+,;=~-._")
    query = parts.query
    if not query.isascii():
        query = quote(query, safe="/%:@!$&'()*+,;=?~-._")
    return f"https://{netloc}{path}?{query}" if query else f"https://{netloc}{path}"


def normalize_token(
    provider: Provider, value: str, allowed_hosts: Iterable[str] | None = None
) -> str:
    """A push token in the one spelling it is stored in, or ValueError.

    Registration (both dialects), dead-token feedback and delivery's own prune
    all call this, so that a token reported dead matches the one registered:
    a drift between them would silently stop pruning. ``allowed_hosts``
    narrows where a Web Push endpoint may point; a prune leaves it out, so an
    endpoint stored before the list was narrowed can still go.
    """
    if provider is Provider.APNS:
        return normalize_apns_token(value)
    if provider is Provider.FCM:
        return check_fcm_token(value)
    return normalize_webpush_endpoint(value, allowed_hosts)


def _decode_base64url(value: str, size: int) -> bytes:
    # Cheap bound before any decoding: padded base64 of `size` bytes is at
    # most this long.
    if len(value) > 4 * -(-size // 3):
        raise ValueError(f"must decode to {size} bytes")
    body = value.rstrip("=")
    padding = len(value) - len(body)
    if not _BASE64URL_RE.fullmatch(body):
        if "+" in body or "/" in body:
            raise ValueError("must be base64url ('-' and '_', not '+' and '/')")
        raise ValueError("must be base64url")
    # Padding is optional, but when present it must be the exact amount;
    # anything else signals a mangled value.
    if padding and (len(value) % 4 or padding > 2):
        raise ValueError("has invalid base64 padding")
    if len(body) % 4 == 1:
        raise ValueError("must be base64url")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except binascii.Error:
        raise ValueError("must be base64url") from None
    if len(raw) != size:
        raise ValueError(f"must decode to {size} bytes")
    return raw


def _encode_base64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def check_webpush_p256dh(value: str) -> str:
    raw = _decode_base64url(value, P256DH_LENGTH)
    # RFC 8291 requires the uncompressed form; compressed points would pass
    # the curve check yet break clients that encrypt with the raw key.
    if raw[0] != 0x04:
        raise ValueError("must be an uncompressed point (first byte 0x04)")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise ValueError("must be a point on the P-256 curve") from None
    return _encode_base64url(raw)


def check_webpush_auth(value: str) -> str:
    return _encode_base64url(_decode_base64url(value, AUTH_SECRET_LENGTH))


def _parse_category_filter(value: str) -> tuple[bool, frozenset[str] | None]:
    """Return (exclude, names); names is None for '*'."""
    text = value.strip(" ")
    if not text:
        raise ValueError("must not be empty")
    if text == "*":
        return False, None
    exclude = text.startswith("-")
    if exclude:
        text = text[1:]
    names: set[str] = set()
    for raw_item in text.split(","):
        item = raw_item.strip(" ")
        if not item:
            raise ValueError("must not contain empty items")
        if item == "*":
            raise ValueError("'*' must stand alone")
        if item.startswith("-"):
            raise ValueError("'-' may only prefix the whole list")
        names.add(item)
    return exclude, frozenset(names)


def normalize_category_filter(value: str, known: frozenset[str] = DEFAULT_CATEGORIES) -> str:
    exclude, names = _parse_category_filter(value)
    if names is None:
        return "*"
    for name in sorted(names):
        if name not in known:
            raise ValueError(f"unknown category {_quote(name)}")
    # Lists naming every category are kept, not collapsed to '*' or rejected:
    # '*' would also admit categories added later, which the client did not ask for.
    body = ",".join(sorted(names))
    return f"-{body}" if exclude else body


def category_filter_admits(normalized: str, category: str) -> bool:
    exclude, names = _parse_category_filter(normalized)
    if names is None:
        return True
    return (category in names) != exclude


# A moment a push service reported: after push services existed, and not
# later than a clock a day fast. Outside, it is a mistake; far outside, it
# would not even convert to UTC (9999-12-31T23:59:59-23:59) on its way to
# PostgreSQL.
EARLIEST_MOMENT = datetime(1970, 1, 1, tzinfo=UTC)
CLOCK_SKEW = timedelta(days=1)


def check_recent_moment(value: datetime) -> datetime:
    """An aware datetime in [1970-01-01Z, a day from now], as UTC."""
    message = "must be between 1970-01-01T00:00:00Z and a day from now"
    try:
        moment = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(message) from None
    if not EARLIEST_MOMENT <= moment <= datetime.now(UTC) + CLOCK_SKEW:
        raise ValueError(message)
    return moment
# ------------------------------------------------------------------ delivery


def replace_control_characters(value: str, replacement: str = "?") -> str:
    return _CONTROL_RE.sub(replacement, value)
