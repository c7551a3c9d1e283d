"""Web Push: RFC 8291 ``aes128gcm`` payloads with RFC 8292 VAPID, one POST per push.

The encryption is http_ece's (the library pywebpush itself uses) and the VAPID
token py_vapid's ``Vapid02`` (the RFC 8292 ``vapid t=..., k=...`` form); the
request goes over the guarded httpx client with an explicit TTL and timeout,
which pywebpush's defaults lack. Encrypting and signing are CPU work of a
fraction of a millisecond, done on the loop; nothing here does blocking I/O
once the key is loaded at start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import http_ece
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02, VapidException

from gateway.commands import Provider
from gateway.config import ConfigError, Settings
from gateway.delivery import net
from gateway.delivery.providers import Outcome, Push, Verdict, webpush_plaintext

# A push service takes 4096 bytes of encrypted body; one aes128gcm record
# spends 86 on its header (salt, record size, the 65-byte sender key) and 17
# on the padding delimiter and the tag.
RECORD_SIZE = 4096
PLAINTEXT_LIMIT = 3993
# RFC 8030 section 5.4: a Topic is at most 32 characters of the base64url alphabet.
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
# RFC 8292 allows 24 hours; a token is made for 12 and reused for 6, so every
# one sent has at least 6 hours left whatever the clocks say.
VAPID_LIFETIME = 12 * 3600
VAPID_REUSE = 6 * 3600
_URGENCY = {"high": "high", "normal": "normal"}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Base64url with or without padding (real subscriptions carry either)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def plaintext_size(push: Push) -> int:
    """Bytes of plaintext this push would encrypt, against PLAINTEXT_LIMIT."""
    return len(webpush_plaintext(push))


def topic(collapse_key: str | None) -> str | None:
    """The Topic header for a collapse key.

    A key that already is a valid Topic is used as it is. Any other (too long,
    or characters outside base64url) is replaced by the first 32 characters of
    the base64url SHA-256 of its UTF-8 bytes: the same key always gives the same
    Topic, so pending messages still collapse, and two keys colliding in 192
    bits is not a practical concern.
    """
    if collapse_key is None:
        return None
    if _TOPIC.fullmatch(collapse_key):
        return collapse_key
    return b64url(hashlib.sha256(collapse_key.encode()).digest())[:32]


def origin(endpoint: httpx.URL) -> str:
    """The VAPID audience: the endpoint's scheme, host and non-default port."""
    default = {"https": 443, "http": 80}.get(endpoint.scheme)
    port = "" if endpoint.port in (None, default) else f":{endpoint.port}"
    return f"{endpoint.scheme}://{endpoint.host}{port}"


def load_vapid_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key PEM at ``path`` (``gateway vapid keygen``), or ConfigError."""
    name = "GATEWAY_VAPID_PRIVATE_KEY"
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: {path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"{name}: {path} must be a P-256 (prime256v1) key")
    return key


def generate_vapid_key(path: Path) -> str:
    """Write a new P-256 key at ``path`` (PEM, PKCS#8, mode 0600); return its public key."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Exclusive create: an existing key (and every subscription made with it) is
    # never lost; owner-only from the first byte.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    return public_key_text(key)


def public_key_text(key: ec.EllipticCurvePrivateKey) -> str:
    """The form browsers take as ``applicationServerKey``: base64url of the 65-byte point."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url(point)


class VapidSigner:
    """The ``Authorization: vapid t=..., k=...`` header per push-service origin, reused a while."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        self._vapid = Vapid02(private_key=key)
        self._subject = subject
        self._cache: dict[str, tuple[float, str]] = {}
        self.public_key = public_key_text(key)
        # Fails at start, not at the first push, if py_vapid refuses the subject.
        try:
            self.header("https://push.example.com")
        except VapidException as exc:
            raise ConfigError(f"GATEWAY_VAPID_SUBJECT is refused: {exc}") from None
        self._cache.clear()

    def header(self, audience: str) -> str:
        now = time.time()
        cached = self._cache.get(audience)
        if cached is not None and now < cached[0] - (VAPID_LIFETIME - VAPID_REUSE):
            return cached[1]
        expires = int(now) + VAPID_LIFETIME
        claims = {"aud": audience, "exp": expires, "sub": self._subject}
        value: str = self._vapid.sign(claims)["Authorization"]
        # A handful of push services exist; a cache past that is being abused.
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[audience] = (float(expires), value)
        return value


def classify(response: httpx.Response) -> Outcome:
    """DELIVERY.md's Web Push rows."""
    status = response.status_code
    reason = f"{status} {response.reason_phrase}: {response.text[:200]}".strip()
    if status in (200, 201, 202):
        return Outcome(Verdict.DELIVERED, status=status)
    if status in (404, 410):
        return Outcome(Verdict.PRUNE, status=status, reason=reason)
    retry = net.http_retry(response, reason)
    if retry is not None:
        return retry
    # 413 (our payload), 400/401/403 (VAPID or configuration), a redirect we do
    # not follow, anything else: fail without pruning, and tell an operator.
    return Outcome(Verdict.FAILED, status=status, reason=reason, alarm=True)


class WebPushProvider:
    """Web Push behind the PushProvider interface."""

    provider = Provider.WEBPUSH

    def __init__(self, signer: VapidSigner, client: httpx.AsyncClient, concurrency: int = 256):
        self.concurrency = concurrency
        self.signer = signer
        self._client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> WebPushProvider | None:
        """The provider, or None when GATEWAY_VAPID_PRIVATE_KEY is not set."""
        if settings.vapid_private_key is None or settings.vapid_subject is None:
            return None
        signer = VapidSigner(load_vapid_key(settings.vapid_private_key), settings.vapid_subject)
        return cls(
            signer, net.build_client(settings, purpose="webpush"), settings.delivery_concurrency
        )

    def request(self, push: Push, now: datetime | None = None) -> httpx.Request | Outcome:
        """The encrypted request for ``push``, or the outcome that no request can have."""
        try:
            endpoint = httpx.URL(push.token)
        except httpx.InvalidURL as exc:
            return Outcome(Verdict.FAILED, reason=f"endpoint is not a URL: {exc}", alarm=True)
        if endpoint.scheme != "https" or not endpoint.host:
            return Outcome(Verdict.FAILED, reason="endpoint is not an https URL", alarm=True)
        try:
            receiver = b64url_decode(push.webpush_p256dh or "")
            secret = b64url_decode(push.webpush_auth or "")
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), receiver)
        except (ValueError, binascii.Error):
            return Outcome(Verdict.FAILED, reason="subscription keys are not valid", alarm=True)
        if len(secret) != 16:
            return Outcome(Verdict.FAILED, reason="auth secret is not 16 bytes", alarm=True)
        plaintext = webpush_plaintext(push)
        if len(plaintext) > PLAINTEXT_LIMIT:
            return Outcome(
                Verdict.FAILED,
                reason=f"plaintext is {len(plaintext)} bytes, over {PLAINTEXT_LIMIT}",
                alarm=True,
            )
        body = http_ece.encrypt(
            plaintext,
            private_key=ec.generate_private_key(ec.SECP256R1()),
            dh=receiver,
            auth_secret=secret,
            version="aes128gcm",
            rs=RECORD_SIZE,
        )
        remaining = (push.expires_at - (now or datetime.now(UTC))).total_seconds()
        headers = {
            "authorization": self.signer.header(origin(endpoint)),
            "content-encoding": "aes128gcm",
            "content-type": "application/octet-stream",
            "ttl": str(max(0, math.ceil(remaining))),
            "urgency": _URGENCY.get(push.priority, "normal"),
        }
        push_topic = topic(push.collapse_key)
        if push_topic is not None:
            headers["topic"] = push_topic
        return self._client.build_request("POST", endpoint, content=body, headers=headers)

    async def send(self, push: Push) -> Outcome:
        request = self.request(push)
        if isinstance(request, Outcome):
            return request
        try:
            response = await self._client.send(request)
        except httpx.HTTPError as exc:
            return net.transport_outcome(exc)
        return classify(response)

    async def close(self) -> None:
        await self._client.aclose()
