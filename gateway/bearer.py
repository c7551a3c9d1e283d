"""Bearer keys: how one is kept (its digest) and checked; the internal API's and /metrics'."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web


def key_digest(key: str) -> bytes:
    """What a bearer key is kept as and compared by (see bearer_matches)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def bearer_matches(request: web.Request, expected: bytes | None) -> bool:
    """Whether the request's ``Authorization: Bearer`` key has the digest ``expected``."""
    scheme, _, credential = request.headers.get("Authorization", "").strip().partition(" ")
    # Digests of equal length, so the comparison takes the same time whatever
    # the caller sent, its length included.
    presented = key_digest(credential.strip())
    if expected is None or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented, expected)
