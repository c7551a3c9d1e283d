"""Syntax rules for client-supplied identifiers, push tokens, Web Push keys and category filters."""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "DEFAULT_CATEGORIES",
    "MAX_ID_LENGTH",
    "category_filter_admits",
    "check_fcm_token",
    "check_identifier",
    "check_webpush_auth",
    "check_webpush_endpoint",
    "check_webpush_p256dh",
    "normalize_apns_token",
    "normalize_category_filter",
]

MAX_ID_LENGTH = 255

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


def _has_control(value: str) -> bool:
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
    if _has_control(value):
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


def check_webpush_endpoint(value: str) -> str:
    if len(value) > WEBPUSH_ENDPOINT_MAX_LENGTH:
        raise ValueError(f"must be at most {WEBPUSH_ENDPOINT_MAX_LENGTH} characters")
    # urlsplit silently drops tabs and newlines (WHATWG behaviour), so they
    # must be refused before parsing or the stored URL would differ from the
    # one the client meant.
    if any(ch.isspace() for ch in value) or _has_control(value):
        raise ValueError("must not contain whitespace or control characters")
    if not _is_utf8_encodable(value):
        raise ValueError("must be valid unicode (no lone surrogates)")
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        _ = parts.port  # raises on a malformed port such as ':abc'
    except ValueError:
        raise ValueError("must be a valid URL") from None
    # The push service holds the subscription's secrets in transit; plain
    # http would leak them.
    if parts.scheme != "https":
        raise ValueError("must be an https URL")
    if "@" in parts.netloc:
        raise ValueError("must not contain credentials")
    if not hostname:
        raise ValueError("must have a host")
    return value


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


# ------------------------------------------------------------------ delivery


def has_control_characters(value: str) -> bool:
    """Whether ``value`` holds a character of Unicode's Cc category (C0, DEL, C1)."""
    return _has_control(value)


def replace_control_characters(value: str, replacement: str = "?") -> str:
    return _CONTROL_RE.sub(replacement, value)
