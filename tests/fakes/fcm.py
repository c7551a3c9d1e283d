"""A fake FCM HTTP v1 service and Google OAuth token endpoint, over TLS on 127.0.0.1.

It checks what Google checks: the token endpoint verifies the JWT-bearer grant
(RS256 signature against the service account's public key, issuer, audience =
its token_uri, the FCM scope, an expiry within the hour) and hands out access
tokens; ``messages:send`` refuses an unknown or revoked access token and a
project other than the account's, then answers per registration token from
``script`` (each answer used once, then 200).

    fake = FakeFcm(ca, tmp_path); await fake.start()
    fake.script[token] = [UNREGISTERED]          # or [quota(30), 200], [UNAUTHENTICATED]...
    fake.token_script = [503]                    # the OAuth endpoint's next answers
    settings = Settings.from_env(fake.env())     # credentials, URL, pins, CA file
    ...; fake.received -> [Received(token, headers, message)]; await fake.close()

The names are the real ones (fcm.googleapis.com, oauth2.googleapis.com),
pinned to 127.0.0.1 with GATEWAY_PUSH_RESOLVE.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict

from tests.fakes.tls import TestCA

FCM_HOST = "fcm.googleapis.com"
OAUTH_HOST = "oauth2.googleapis.com"
PROJECT = "gateway-test-project"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


@dataclass(frozen=True)
class Answer:
    """One scripted answer: HTTP status, FCM error status and errorCode, extra headers."""

    status: int
    error_status: str | None = None
    error_code: str | None = None
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    field_violation: str | None = None
    # A 401 revokes the access token the request carried.
    revoke: bool = False

    def body(self) -> dict[str, Any]:
        if self.status == 200:
            return {"name": f"projects/{PROJECT}/messages/0:{time.time_ns()}"}
        details: list[dict[str, Any]] = []
        if self.error_code is not None:
            details.append({"@type": FCM_ERROR, "errorCode": self.error_code})
        if self.field_violation is not None:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [
                        {"field": self.field_violation, "description": self.message}
                    ],
                }
            )
        error = {"code": self.status, "message": self.message, "status": self.error_status}
        return {"error": {**error, "details": details}}


OK = Answer(200)
UNREGISTERED = Answer(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.")
SENDER_ID_MISMATCH = Answer(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch")
INVALID_TOKEN = Answer(
    400,
    "INVALID_ARGUMENT",
    "INVALID_ARGUMENT",
    "The registration token is not a valid FCM registration token",
    field_violation="message.token",
)
INVALID_PAYLOAD = Answer(
    400,
    "INVALID_ARGUMENT",
    "INVALID_ARGUMENT",
    "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
    field_violation="message.android.ttl",
)
PERMISSION_DENIED = Answer(
    403, "PERMISSION_DENIED", None, "Permission 'cloudmessaging.messages.create' denied"
)
UNAUTHENTICATED = Answer(
    401, "UNAUTHENTICATED", None, "Request had invalid authentication credentials.", revoke=True
)
UNAVAILABLE = Answer(503, "UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable.")
INTERNAL = Answer(500, "INTERNAL", "INTERNAL", "Internal error encountered.")


def quota(retry_after: int) -> Answer:
    return Answer(
        429,
        "RESOURCE_EXHAUSTED",
        "QUOTA_EXCEEDED",
        "Quota exceeded for quota metric 'Send requests'",
        headers={"Retry-After": str(retry_after)},
    )


def unavailable(retry_after: int) -> Answer:
    return Answer(503, "UNAVAILABLE", "UNAVAILABLE", "", headers={"Retry-After": str(retry_after)})


@dataclass(frozen=True)
class Received:
    token: str
    headers: CIMultiDict[str]
    message: dict[str, Any]


class FakeFcm:
    def __init__(self, ca: TestCA, directory: Path, token_lifetime: int = 3600) -> None:
        self.ca = ca
        self.token_lifetime = token_lifetime
        self.script: defaultdict[str, list[Answer | int]] = defaultdict(list)
        self.received: list[Received] = []
        self.grants: list[dict[str, Any]] = []
        # Statuses the token endpoint answers before it looks at a grant, one per request.
        self.token_script: list[int] = []
        self.refused_grants: list[str] = []
        self._tokens: set[str] = set()
        self._serial = itertools.count(1)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.credentials = directory / "fcm-service-account.json"
        self.client_email = f"gateway@{PROJECT}.iam.gserviceaccount.com"
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://{FCM_HOST}:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"https://{OAUTH_HOST}:{self.port}/token"

    @property
    def resolve(self) -> str:
        return f"{FCM_HOST}:{self.port}:127.0.0.1,{OAUTH_HOST}:{self.port}:127.0.0.1"

    def env(self, **extra: str) -> dict[str, str]:
        """The settings that point the gateway at this fake."""
        return {
            "GATEWAY_FCM_CREDENTIALS": str(self.credentials),
            "GATEWAY_FCM_URL": self.url,
            "GATEWAY_PUSH_RESOLVE": self.resolve,
            "GATEWAY_PUSH_CA_FILE": str(self.ca.ca_file),
            **extra,
        }

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        context = self.ca.server_context(FCM_HOST, OAUTH_HOST)
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        account = {
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "fake-key-1",
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
        }
        self.credentials.write_text(json.dumps(account))

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if self.token_script:
            status = self.token_script.pop(0)
            return web.json_response({"error": "backend_error"}, status=status)
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            header = jwt.get_unverified_header(str(form.get("assertion")))
            claims = jwt.decode(
                str(form.get("assertion")),
                self._key.public_key(),
                algorithms=["RS256"],
                audience=self.token_uri,
                issuer=self.client_email,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.PyJWTError as exc:
            self.refused_grants.append(str(exc))
            return web.json_response(
                {"error": "invalid_grant", "error_description": str(exc)}, status=400
            )
        if claims["scope"] != SCOPE or claims["exp"] - claims["iat"] > 3600:
            self.refused_grants.append("scope or lifetime")
            return web.json_response({"error": "invalid_scope"}, status=400)
        if header.get("kid") != "fake-key-1":
            self.refused_grants.append("kid")
            return web.json_response({"error": "invalid_grant"}, status=400)
        self.grants.append(claims)
        token = f"ya29.fake-{next(self._serial)}"
        self._tokens.add(token)
        return web.json_response(
            {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )

    def _unauthenticated(self) -> web.Response:
        return web.json_response(UNAUTHENTICATED.body(), status=401)

    async def _send(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        access = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or access not in self._tokens:
            return self._unauthenticated()
        if request.match_info["project"] != PROJECT:
            return web.json_response(
                Answer(404, "NOT_FOUND", None, "Requested entity was not found.").body(),
                status=404,
            )
        message = (await request.json())["message"]
        token = message["token"]
        self.received.append(Received(token, CIMultiDict(request.headers), message))
        queue = self.script.get(token)
        answer = queue.pop(0) if queue else OK
        if isinstance(answer, int):
            answer = Answer(answer)
        if answer.revoke:
            self._tokens.discard(access)
        return web.json_response(answer.body(), status=answer.status, headers=answer.headers)
