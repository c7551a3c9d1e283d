"""A fake Web Push service (RFC 8030) over TLS on 127.0.0.1, as strict as the real ones.

Every request must carry RFC 8292 VAPID (``vapid t=<ES256 JWT>, k=<key>``:
the key the gateway is configured with, the signature valid for it, ``aud``
the endpoint's origin, ``exp`` at most 24 hours ahead, a ``sub`` contact), a
``TTL``, ``Content-Encoding: aes128gcm`` and at most 4096 bytes of body; every
payload is DECRYPTED with the subscription's private key (http_ece), and the
plaintext recorded. Then ``script[endpoint]`` answers (each used once, then 201).

    fake = FakeWebPush(ca, vapid_public_key); await fake.start()
    sub = fake.subscribe()                       # endpoint, p256dh, auth as a browser gives them
    fake.script[sub.endpoint] = [410]
    ...; fake.received -> [Received(endpoint, headers, plaintext, claims)]; fake.refused

Endpoints use the real services' names (updates.push.services.mozilla.com,
fcm.googleapis.com, web.push.apple.com), pinned to 127.0.0.1 with
GATEWAY_PUSH_RESOLVE (``fake.resolve``).
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import http_ece
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDict

from tests.fakes.tls import TestCA

MOZILLA = "updates.push.services.mozilla.com"
CHROME = "fcm.googleapis.com"
APPLE = "web.push.apple.com"
HOSTS = (MOZILLA, CHROME, APPLE)
PATHS = {MOZILLA: "/wpush/v2/", CHROME: "/fcm/send/", APPLE: "/"}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Subscription:
    """What ``PushManager.subscribe()`` hands a page, plus the browser's private half."""

    endpoint: str
    p256dh: str
    auth: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    endpoint: str
    headers: CIMultiDict[str]
    plaintext: bytes
    claims: dict[str, Any]


class FakeWebPush:
    def __init__(self, ca: TestCA, vapid_public_key: str) -> None:
        self.ca = ca
        self.vapid_public_key = vapid_public_key
        self.script: defaultdict[str, list[Answer | int]] = defaultdict(list)
        self.received: list[Received] = []
        # (endpoint, why) for every request refused before its script was read
        self.refused: list[tuple[str, str]] = []
        self._subscriptions: dict[str, Subscription] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def resolve(self) -> str:
        return ",".join(f"{host}:{self.port}:127.0.0.1" for host in HOSTS)

    def subscribe(self, host: str = MOZILLA, padded: bool = False) -> Subscription:
        """A new subscription; ``padded`` gives its keys base64 padding, as some browsers do."""
        key = ec.generate_private_key(ec.SECP256R1())
        point = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        auth = secrets.token_bytes(16)
        p256dh, auth_text = b64url(point), b64url(auth)
        if padded:
            p256dh += "=" * (-len(p256dh) % 4)
            auth_text += "=" * (-len(auth_text) % 4)
        endpoint = f"https://{host}:{self.port}{PATHS[host]}{secrets.token_urlsafe(24)}"
        subscription = Subscription(endpoint, p256dh, auth_text, key)
        self._subscriptions[endpoint] = subscription
        return subscription

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/{path:.*}", self._push)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ca.server_context(*HOSTS))
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _refuse(self, endpoint: str, status: int, why: str) -> web.Response:
        self.refused.append((endpoint, why))
        return web.json_response({"code": status, "errno": 109, "message": why}, status=status)

    def _vapid(self, header: str, audience: str) -> dict[str, Any]:
        scheme, _, params = header.partition(" ")
        if scheme.lower() != "vapid":
            raise ValueError(f"scheme {scheme!r}, not vapid")
        parts = dict(p.strip().split("=", 1) for p in params.split(","))
        if parts.get("k") != self.vapid_public_key:
            raise ValueError("k is not the application server key")
        point = b64url_decode(parts["k"])
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        claims: dict[str, Any] = jwt.decode(
            parts["t"],
            key,
            algorithms=["ES256"],
            audience=audience,
            options={"require": ["aud", "exp", "sub"]},
        )
        if claims["exp"] > time.time() + 24 * 3600:
            raise ValueError("exp is more than 24 hours ahead")
        if not str(claims["sub"]).startswith(("mailto:", "https:")):
            raise ValueError("sub is not a mailto: or https: contact")
        return claims

    async def _push(self, request: web.Request) -> web.Response:
        host = (request.host or "").rsplit(":", 1)[0]
        endpoint = f"https://{host}:{self.port}{request.path}"
        audience = f"https://{host}:{self.port}"
        try:
            claims = self._vapid(request.headers.get("Authorization", ""), audience)
        except (ValueError, KeyError, jwt.PyJWTError) as exc:
            return self._refuse(endpoint, 401, f"VAPID: {exc}")
        ttl = request.headers.get("TTL", "")
        if not ttl.isdigit():
            return self._refuse(endpoint, 400, "TTL header missing or not a number")
        if request.headers.get("Content-Encoding") != "aes128gcm":
            return self._refuse(endpoint, 415, "Content-Encoding is not aes128gcm")
        body = await request.read()
        if len(body) > 4096:
            return self._refuse(endpoint, 413, f"payload of {len(body)} bytes")
        subscription = self._subscriptions.get(endpoint)
        if subscription is None:
            return self._refuse(endpoint, 404, "no such subscription")
        try:
            plaintext = http_ece.decrypt(
                body,
                private_key=subscription.private_key,
                auth_secret=b64url_decode(subscription.auth),
                version="aes128gcm",
            )
        except Exception as exc:  # http_ece raises bare exceptions of several kinds
            return self._refuse(endpoint, 400, f"decryption failed: {exc!r}")
        self.received.append(Received(endpoint, CIMultiDict(request.headers), plaintext, claims))
        queue = self.script.get(endpoint)
        answer = queue.pop(0) if queue else Answer(201)
        if isinstance(answer, int):
            answer = Answer(answer)
        headers = {"Location": f"{endpoint}/m/{secrets.token_hex(8)}", **answer.headers}
        return web.Response(status=answer.status, headers=headers)
